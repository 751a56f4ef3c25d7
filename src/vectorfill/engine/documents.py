"""A document job's part of the claim: each claimed row's URI becomes its document's text.

:func:`read_documents` runs between the lease (:func:`~vectorfill.engine.claim.lease_rows`,
whose transaction is committed by then) and the plan: each row's document is loaded and
parsed in a worker thread (:func:`asyncio.to_thread`), one at a time, so the event loop
goes on (lease renewals, other lanes' requests) and no transaction waits on the network or
the disk. The plan then chunks the text as it chunks a text job's, so an unchanged
document (re-uploaded, renamed, or its ETag changed with the same text) sends nothing,
and a changed one sends only the chunks whose text changed.

Nor is a document whose bytes did not change parsed again. :func:`record_documents`
records, after the plan, what each row's chunks were made from
(``vectorfill.document_hashes``): the sha256 of the document's bytes, its format, the
context (the chunk template's field values, the chunker's settings) and the input hash of
each chunk. A row queued again whose bytes hash (they are still read, to hash them), format
and context are the recorded ones, and whose stored chunks have exactly the recorded input
hashes, is up to date: it is settled so with no parse and no request. The record is
trusted only while the stored chunks match it, and those are written by the store in one
transaction, so a run that dies between the record and the store (or a row that failed, or
a chunk edited by any other path) costs a parse, never a stale chunk.

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
import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, TypeVar

from vectorfill.documents import Fetched, Loader, fetch_document, parse_fetched
from vectorfill.errors import DatabaseUnavailable, DocumentError, DocumentStoreUnavailable
from vectorfill.storage import sql
from vectorfill.storage.db import LaneConnection

from .work import Work

__all__ = ["STORE_BACKOFF_S", "Parsed", "Read", "Unreadable", "read_documents", "record_documents"]

#: A claimed row as :func:`~vectorfill.engine.claim.lease_rows` read it (its ``Leased``).
Row = TypeVar("Row", bound=Any)


class Unreadable(NamedTuple):
    """A row whose document cannot be used: ``reason`` (``not_found``, ``encrypted``, ...)
    and the message naming the row and the URI, for ``vectorfill failures``."""

    key: tuple
    seq: int
    reason: str
    message: str


class Parsed(NamedTuple):
    """A row whose document was parsed: what :func:`record_documents` records for it."""

    sha256: bytes
    format: str
    context: bytes
    stored: bytes
    """The input hashes of the row's stored chunks when claimed, concatenated."""


class Read(NamedTuple):
    """What :func:`read_documents` made of a claim: the rows to plan (a document job's with
    their documents' text), the rows whose document cannot be used, how many rows it gave
    back to the queue (over the claim's byte bound), the rows (key, seq) whose bytes are the
    ones their stored chunks were made from (up to date, not parsed), the rows parsed, and
    the keys that had a record."""

    rows: list
    unreadable: list[Unreadable]
    given_back: int = 0
    unchanged: tuple[tuple[tuple, int], ...] = ()
    parsed: dict[tuple, Parsed] | None = None
    recorded: frozenset[tuple] = frozenset()


#: Seconds before retry n of a transient store failure: 0.5, 1, 2, 4 ... (at most 10).
STORE_BACKOFF_S = 0.5
MAX_STORE_DELAY_S = 10.0

#: Seconds before the records' statements are tried again after the database was lost.
RECORD_RETRY_S = (0.5, 2.0)

T = TypeVar("T")


async def read_documents(work: Work, leased: list[Row], token: uuid.UUID, db: LaneConnection) -> Read:
    """For a document job, ``leased`` with each row's text replaced by its document's text,
    and the rows whose document cannot be used; rows over the claim's byte bound are given
    back to the queue and left out. Any other job's rows are returned as read."""
    docs = work.job.settings.documents
    if docs is None:
        return Read(leased, [])
    loader = Loader(max_bytes=docs.max_document_bytes, timeout_s=work.settings.timeout_s)
    records = await _records(work, [r.key for r in leased], db)
    out: list[Row] = []
    failed: list[Unreadable] = []
    unchanged: list[tuple[tuple, int]] = []
    parsed: dict[tuple, Parsed] = {}
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
            fetched = await _fetch_retrying(work, loader, row.text)
            held += len(fetched.data)
            context = _context(work, fetched.format, row.fields)
            stored = b"".join(bytes(h) for h in row.stored or ())
            if row.attempts <= work.settings.max_attempts and records.get(row.key) == (
                fetched.sha256,
                fetched.format,
                context,
                stored,
            ):
                unchanged.append((row.key, row.seq))  # the bytes its stored chunks were made from
                continue
            doc = await asyncio.to_thread(parse_fetched, fetched)
            digest = fetched.sha256
            del fetched  # (the bytes are not held while the text is planned)
        except DocumentError as exc:
            failed.append(Unreadable(row.key, row.seq, exc.reason, f"row {_show(row.key)} of {work.job.source}: {exc}"))
            continue
        except DocumentStoreUnavailable as exc:
            await _give_back(work, leased, token, db, str(exc))
            raise DocumentStoreUnavailable(
                f"{exc}; the claim's rows are back in the queue", job=work.job.name
            ) from None
        held += max(0, len(doc.text) - doc.size)
        parsed[row.key] = Parsed(digest, doc.format, context, stored)
        out.append(row._replace(text=doc.text))
    return Read(out, failed, given_back, tuple(unchanged), parsed, frozenset(records))


async def record_documents(work: Work, read: Read, plan: Any, db: LaneConnection) -> None:
    """After the plan (:func:`~vectorfill.engine.claim.plan_rows`): record what each parsed
    row's chunks are made from (its bytes' hash, format, context, and the input hash of
    each chunk as planned: kept, renumbered or to send), and forget the records of claimed
    rows that have none now (deleted, failed). One statement, after the claim's
    transaction; nothing for other jobs."""
    if work.job.settings.documents is None or (not read.parsed and not read.recorded):
        return
    parsed = read.parsed or {}
    inputs: dict[tuple, dict[int, bytes]] = {}
    for item in plan.items:
        inputs.setdefault(item.key, {})[item.chunk_seq] = item.input_hash
    plans = {p.key: p for p in plan.moved} | plan.rows
    unchanged = {key for key, _seq in plan.unchanged}
    chunks: dict[tuple, bytes] = {}
    for key, p in parsed.items():
        row_plan = plans.get(key)
        if row_plan is not None:
            by_seq = dict(row_plan.kept) | inputs.get(key, {})
            if len(by_seq) == row_plan.chunks:
                chunks[key] = b"".join(by_seq[i] for i in sorted(by_seq))
        elif p.stored and key in unchanged:
            chunks[key] = p.stored
    # rows deleted or failed lose their record; rows given back (unread) keep theirs
    ended = {f.key for f in plan.failed} | {key for key, _seq in plan.gone}
    forgotten = [k for k in read.recorded if k in ended and k not in chunks]
    if not chunks and not forgotten:
        return
    js = sql.JobSQL(work.job, work.version)
    keys = list(chunks)
    params = [
        *_columns(work, forgotten),
        work.job.id,
        work.version.version,
        work.job.id,
        work.version.version,
        *_columns(work, keys),
        [parsed[k].sha256 for k in keys],
        [parsed[k].format for k in keys],
        [parsed[k].context for k in keys],
        [chunks[k] for k in keys],
    ]

    async def write() -> None:
        async with db.translating("recording documents' hashes", job=work.job.name) as conn:
            await conn.execute(sql.write_document_hashes(js), params)

    await _leniently(work, "recording documents' hashes", write, None)


async def _records(work: Work, keys: list[tuple], db: LaneConnection) -> dict[tuple, tuple]:
    """The claimed rows' records: key → (sha256, format, context, inputs)."""
    if not keys:
        return {}
    js = sql.JobSQL(work.job, work.version)
    n = len(work.job.key_columns)

    async def read() -> list[Any]:
        async with db.translating("reading documents' hashes", job=work.job.name) as conn:
            cur = await conn.execute(
                sql.read_document_hashes(js), [*_columns(work, keys), work.job.id, work.version.version]
            )
            return await cur.fetchall()

    rows: list[Any] = await _leniently(work, "reading documents' hashes", read, [])
    return {tuple(r[:n]): (bytes(r[n]), r[n + 1], bytes(r[n + 2]), bytes(r[n + 3])) for r in rows}


async def _leniently(work: Work, doing: str, statement: Callable[[], Awaitable[T]], otherwise: T) -> T:
    """Run a statement of the records, which only save parses: the claim's rows are leased
    by then, so a lost database must not fail the claim (its rows would stay leased, out of
    this run's reach, until their leases end). Tried again after a lost connection (the lane
    reconnects), then given up with a warning: ``otherwise`` (no records: the documents are
    parsed; none written: they are parsed next time)."""
    for wait in (*RECORD_RETRY_S, None):
        try:
            return await statement()
        except DatabaseUnavailable as exc:
            if wait is None:
                logging.getLogger("vectorfill").warning("%s of %s failed: %s; going on without", doing, work.label, exc)
                return otherwise
            await asyncio.sleep(wait)
    return otherwise  # (not reached)


def _context(work: Work, fmt: str, fields: tuple) -> bytes:
    """sha256 of what decides a document's chunks besides its bytes: its format, the chunk
    template's field values, the chunker's settings and the token limit."""
    s = work.settings
    what = [fmt, list(fields), work.version.chunking.model_dump(mode="json"), s.max_input_tokens, s.on_too_long]
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).digest()


def _columns(work: Work, keys: list[tuple]) -> list[list]:
    return [list(col) for col in zip(*keys, strict=True)] if keys else [[] for _ in work.job.key_columns]


async def _fetch_retrying(work: Work, loader: Loader, uri: str) -> Fetched:
    """:func:`fetch_document` off the event loop, its transient failures retried."""
    attempt = 0
    while True:
        try:
            return await asyncio.to_thread(fetch_document, loader, uri)
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
