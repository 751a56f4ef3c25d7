"""A document job's part of the claim: each claimed row's URI becomes its document's text.

:func:`read_documents` runs between the lease (:func:`~vectorfill.engine.claim.lease_rows`,
whose transaction is committed by then) and the plan: each row's document is loaded and
parsed in a worker thread (:func:`asyncio.to_thread`), one at a time, so the event loop
goes on (lease renewals, other lanes' requests) and no transaction waits on the network or
the disk. The plan then chunks the text as it chunks a text job's, so an unchanged
document (re-uploaded, renamed, or its ETag changed with the same text) sends nothing,
and a changed one sends only the chunks whose text changed.

What a batch holds is bounded: no document over ``max_document_bytes`` is read (its row
fails as ``too_large``), and once a claim has read ``max_batch_bytes`` the rest of its
rows are given back to the queue, their attempt not counted, for the next claim.

A document that cannot be used fails its row with the reason (:class:`Failure`). A
transient store failure (an S3 503, a timeout) is retried here with backoff, as a
provider's request is (``retries`` of the job); when it lasts, the claim's rows are given
back, their attempt not counted, and the error is raised for the slice to retry its claim.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, NamedTuple, TypeVar

from vectorfill.documents import Document, Loader, read_document
from vectorfill.errors import DocumentError, DocumentStoreUnavailable
from vectorfill.storage import sql
from vectorfill.storage.db import LaneConnection

from .work import Work

__all__ = ["STORE_BACKOFF_S", "Read", "Unreadable", "read_documents"]

#: A claimed row as :func:`~vectorfill.engine.claim.lease_rows` read it (its ``Leased``).
Row = TypeVar("Row", bound=Any)


class Unreadable(NamedTuple):
    """A row whose document cannot be used: ``reason`` (``not_found``, ``encrypted``, ...)
    and the message naming the row and the URI, for ``vectorfill failures``."""

    key: tuple
    seq: int
    reason: str
    message: str


class Read(NamedTuple):
    """What :func:`read_documents` made of a claim: the rows to plan (a document job's with
    their documents' text), the rows whose document cannot be used, and how many rows it
    gave back to the queue (over the claim's byte bound)."""

    rows: list
    unreadable: list[Unreadable]
    given_back: int = 0


#: Seconds before retry n of a transient store failure: 0.5, 1, 2, 4 ... (at most 10).
STORE_BACKOFF_S = 0.5
MAX_STORE_DELAY_S = 10.0


async def read_documents(work: Work, leased: list[Row], token: uuid.UUID, db: LaneConnection) -> Read:
    """For a document job, ``leased`` with each row's text replaced by its document's text,
    and the rows whose document cannot be used; rows over the claim's byte bound are given
    back to the queue and left out. Any other job's rows are returned as read."""
    docs = work.job.settings.documents
    if docs is None:
        return Read(leased, [])
    loader = Loader(max_bytes=docs.max_document_bytes, timeout_s=work.settings.timeout_s)
    out: list[Row] = []
    failed: list[Unreadable] = []
    held = given_back = 0
    for n, row in enumerate(leased):
        if not row.present or row.text is None or not row.text.strip():
            out.append(row)  # deleted, or no URI: the plan settles it as for a text job
            continue
        if held >= docs.max_batch_bytes:  # the batch is full: the rest wait for the next claim
            await _give_back(work, leased[n:], token, db, "left for the next claim (the batch's bytes are bounded)")
            given_back = len(leased) - n
            break
        try:
            doc = await _read_retrying(work, loader, row.text)
        except DocumentError as exc:
            failed.append(Unreadable(row.key, row.seq, exc.reason, f"row {_show(row.key)} of {work.job.source}: {exc}"))
            continue
        except DocumentStoreUnavailable as exc:
            await _give_back(work, leased, token, db, str(exc))
            raise DocumentStoreUnavailable(
                f"{exc}; the claim's rows are back in the queue", job=work.job.name
            ) from None
        held += max(doc.size, len(doc.text))
        out.append(row._replace(text=doc.text))
    return Read(out, failed, given_back)


async def _read_retrying(work: Work, loader: Loader, uri: str) -> Document:
    """:func:`read_document` off the event loop, its transient failures retried."""
    attempt = 0
    while True:
        try:
            return await asyncio.to_thread(read_document, loader, uri)
        except DocumentStoreUnavailable:
            attempt += 1
            if attempt > work.settings.retries:
                raise
            await asyncio.sleep(min(MAX_STORE_DELAY_S, STORE_BACKOFF_S * 2 ** (attempt - 1)))


async def _give_back(work: Work, rows: list[Row], token: uuid.UUID, db: LaneConnection, why: str) -> None:
    js = sql.JobSQL(work.job, work.version)
    keys = [list(col) for col in zip(*(r.key for r in rows), strict=True)]
    params = [why[:2000], *keys, [r.seq for r in rows], token]
    async with db.translating("giving back claimed rows", job=work.job.name) as conn:
        await conn.execute(js.give_back(), params)


def _show(key: tuple) -> str:
    return repr(key[0]) if len(key) == 1 else repr(key)
