"""The Batch API, stage 1: submit a job's pending rows to the provider's Batch API.

For each job version to fill, as many provider batches as its queue needs, each at most
``batch_max_inputs`` inputs (OpenAI: 50,000 a batch), 50,000 requests and 200 MB a file.
Each submission goes in this order, so that a process that dies at any step loses nothing
and pays nothing twice:

1. **intent**: a ``vectorfill.batches`` row (state ``claiming``) with a new submission id;
2. **claim**: the rows are leased in the queue under that id for the batch's life
   (:data:`BATCH_LEASE_S`, beyond the 24 h window), so online runs leave them alone; the
   claim is the online one (:func:`~vectorfill.engine.claim.claim_rows`: deleted, unchanged,
   empty and too-long rows are settled here, texts are packed into requests);
3. **items**: each input's key, claimed ``seq`` and text hash (``batch_items``), state
   ``uploading``;
4. **upload** the JSONL file, **create** the batch with metadata ``vectorfill_job``,
   ``vectorfill_version`` and ``vectorfill_submission``; record the provider's id (state
   ``submitted``).

A run that finds a submission in ``claiming`` or ``uploading`` (its process died) looks
for it in the provider's list by its metadata (``collect.py``): found, it is
collected like any other; not found, nothing was created and its rows are given back.
One process at a time submits or collects a job's batches (a session advisory lock).
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from vectorfill.errors import DatabaseError, JobError, SpendCapReached, TerminalProviderError
from vectorfill.provider import batches as batch_api
from vectorfill.provider.batches import BatchesClient, request_line
from vectorfill.storage import sql
from vectorfill.storage.db import LaneConnection, connect, scalar
from vectorfill.storage.errors import translated

from .claim import Claim, claim_rows, key_arrays
from .counts import Counts
from .prepare import Prepared
from .spend import SpendCap
from .work import Work, database_url

__all__ = ["BATCH_LEASE_S", "Submitted", "batch_lock", "batch_mode", "submit_batches", "submit_version"]

#: Rows of a submitted batch stay leased this long (the 24 h window, and two hours for
#: finalizing and for the run that collects it); each collect that finds the batch still
#: running renews the lease.
BATCH_LEASE_S = 26 * 3600


@dataclass(frozen=True)
class Submitted:
    """What the submit stage did, over every version."""

    batches: int = 0
    rows: int = 0
    requests: int = 0
    tokens: int = 0
    """Tokens counted before sending (the provider's count is known when collected)."""
    unchanged: int = 0
    deleted: int = 0
    failed: int = 0
    truncated: int = 0
    busy: bool = False
    """Another process was submitting or collecting this job's batches: nothing done."""

    def counts(self) -> Counts:
        """These figures as the run's counts (rows settled at the claim, batches sent)."""
        return Counts(
            unchanged=self.unchanged,
            deleted=self.deleted,
            failed=self.failed,
            truncated=self.truncated,
            batches_submitted=self.batches,
            batch_rows_submitted=self.rows,
        )

    def __add__(self, other: Submitted) -> Submitted:
        return Submitted(
            **{
                f.name: (getattr(self, f.name) or getattr(other, f.name))
                if f.name == "busy"
                else getattr(self, f.name) + getattr(other, f.name)
                for f in dataclasses.fields(self)
            }
        )


def batch_mode(prepared: Prepared, batch: bool | None) -> bool:
    """Whether this run submits batches: ``--batch``/``--online`` when given, else the job's
    ``batch`` setting."""
    if batch is not None:
        return batch
    return bool(prepared.works) and prepared.works[0].settings.batch


@contextlib.asynccontextmanager
async def batch_lock(url: str, job_id: int) -> AsyncIterator[bool]:
    """Hold the job's batch lock for the block; yields False (without waiting) when another
    process holds it. A session lock: it goes with the process, whatever stops it."""
    params = {"cls": sql.BATCH_LOCK_CLASS, "job_id": job_id}
    lock = LaneConnection(url)  # its own session: the lock lives as long as it does
    try:
        row = await lock.execute(sql.BATCH_TRY_LOCK, params, doing="taking the batch lock")
        held = bool(row and row[0])
        try:
            yield held
        finally:
            if held and lock.connected:  # (a lost session took the lock with it)
                with contextlib.suppress(DatabaseError):
                    await lock.execute(sql.BATCH_UNLOCK, params, doing="releasing the batch lock")
    finally:
        await lock.aclose()


async def submit_batches(prepared: Prepared, max_rows: int | None = None) -> Submitted:
    """Submit the pending rows of every version to fill, as many batches as needed. (The
    task that runs it: :func:`vectorfill.tasks.submit.submit_batches`.)"""
    total = Submitted()
    budget = max_rows
    for work in prepared.works:
        done = await submit_version(work, budget)
        total = total + done
        if budget is not None:
            budget -= done.rows + done.unchanged + done.deleted + done.failed
            if budget <= 0:
                break
    return total


async def submit_version(work: Work, max_rows: int | None = None) -> Submitted:
    url = database_url()
    with connect(url) as conn:
        if not scalar(conn.execute(sql.BATCHES_INSTALLED)):
            raise JobError("this database's vectorfill schema predates batch mode: run `vectorfill migrate`")
    async with batch_lock(url, work.job.id) as held:
        if not held:
            return Submitted(busy=True)
        async with BatchesClient.for_version(work.version, job=work.job.name) as api:
            db = LaneConnection(url)
            spend = SpendCap.for_work(work, url, batch=True)  # a batch is charged at the batch price
            try:  # (the lane's statements outside a claim or a store: translated here)
                with translated("submitting batches", job=work.job.name):
                    return await _submit_all(work, max_rows, api, db, spend)
            finally:
                await db.aclose()
                if spend is not None:
                    await spend.aclose()


async def _submit_all(
    work: Work, max_rows: int | None, api: BatchesClient, db: LaneConnection, spend: SpendCap | None = None
) -> Submitted:
    # the claim's lease is the batch's life; the job's own lease_s is for online runs
    leased = _with_lease(work)
    total = Submitted()
    remaining = max_rows
    while remaining is None or remaining > 0:
        limit = min(work.settings.batch_max_inputs, batch_api.MAX_EMBEDDING_INPUTS)
        if remaining is not None:
            limit = min(limit, remaining)
        sub = uuid.uuid4()
        conn = await db.get()
        await conn.execute(sql.BATCH_INSERT, {"id": sub, "job_id": work.job.id, "version": work.version.version})
        claim = await claim_rows(leased, limit, sub, db, reuse=False)
        settled = Submitted(
            unchanged=claim.unchanged, deleted=claim.deleted, failed=claim.failed, truncated=claim.truncated
        )
        if remaining is not None:
            remaining -= claim.claimed
        if not claim.requests:
            await conn.execute(sql.BATCH_DELETE, {"id": sub})  # nothing to send: no record needed
            total = total + settled
            if claim.claimed < limit:
                break
            continue
        sent, left = await _submit_one(work, sub, claim, api, db, spend)
        total = total + settled + sent
        if remaining is not None:
            remaining += left  # given back, not sent: still to send
        if claim.claimed < limit and not left:
            break
    return total


def _with_lease(work: Work) -> Work:
    """``work`` with the batch lease as its ``lease_s`` (beyond the setting's bound of a day,
    so set without validation)."""
    settings = work.settings.model_copy(update={"lease_s": BATCH_LEASE_S})
    return Work(dataclasses.replace(work.job, settings=settings), work.version)


async def _submit_one(
    work: Work, sub: uuid.UUID, claim: Claim, api: BatchesClient, db: LaneConnection, spend: SpendCap | None = None
) -> tuple[Submitted, int]:
    """Record, upload and create one batch of ``claim``'s requests (those that fit a file;
    the rows of the rest are given back at once, for the next submission: their number is
    returned beside what was submitted). With a daily spend cap (``spend``), the batch's
    tokens are charged at the batch price before the file is uploaded: a batch that would
    pass the cap is not created and its rows are given back."""
    js = sql.JobSQL(work.job, work.version)
    body: dict = {"model": work.version.model, "encoding_format": work.settings.encoding_format}
    if work.version.dimensions:
        body["dimensions"] = work.version.dimensions
    lines: list[bytes] = []
    size = 0
    fits = len(claim.requests)
    for req, request in enumerate(claim.requests):
        line = request_line(f"{sub.hex[:12]}-{req}", {**body, "input": [i.text for i in request.items]})
        if req >= batch_api.MAX_REQUESTS or size + len(line) > batch_api.MAX_FILE_BYTES:
            fits = req
            break
        lines.append(line)
        size += len(line)
    if fits == 0:
        await _give_back(await db.get(), js, sub, "one request is larger than a batch input file may be")
        raise TerminalProviderError(
            "one request of this job is larger than a batch input file may be; lower max_inputs", job=work.job.name
        )
    kept, over = claim.requests[:fits], claim.requests[fits:]
    items = [(req, pos, item) for req, request in enumerate(kept) for pos, item in enumerate(request.items)]
    conn = await db.get()
    async with conn.transaction():
        if over:  # did not fit this file: free now, taken by the next submission
            keys = [i.key for r in over for i in r.items]
            await conn.execute(sql.batch_give_back_keys(js), key_arrays(work, keys) + [sub])
        await conn.execute(
            sql.batch_items_insert(js),
            [sub]
            + key_arrays(work, [i.key for _, _, i in items])
            + [[r for r, _, _ in items], [p for _, p, _ in items], [i.seq for _, _, i in items]]
            + [[i.input_hash for _, _, i in items], [i.tokens for _, _, i in items]],
        )
        tokens = sum(i.tokens for _, _, i in items)
        await conn.execute(sql.BATCH_CLAIMED, {"id": sub, "rows": len(items), "requests": len(kept), "tokens": tokens})
    charge = None
    if spend is not None:
        try:
            charge = await spend.charge(spend.tokens(work.version.model, [i for _, _, i in items]))
        except SpendCapReached as exc:
            await _give_back(conn, js, sub, str(exc))
            raise
    try:
        file_id = await api.upload(b"".join(lines), filename=f"vectorfill-{work.job.name}-{sub.hex[:12]}.jsonl")
    except Exception as exc:  # nothing was created: give the rows back now (and the charge)
        await _give_back(conn, js, sub, f"uploading the batch file failed: {exc}")
        if charge is not None and spend is not None:
            await spend.billed(charge, 0)
        raise
    await conn.execute(sql.BATCH_UPLOADED, {"id": sub, "file_id": file_id})
    metadata = {
        "vectorfill_job": work.job.name,
        "vectorfill_version": str(work.version.version),
        "vectorfill_submission": str(sub),
    }
    try:
        info = await api.create(file_id, metadata)
    except TerminalProviderError as exc:  # refused (4xx): no batch exists
        await _give_back(conn, js, sub, f"creating the batch failed: {exc}")
        if charge is not None and spend is not None:
            await spend.billed(charge, 0)
        raise
    # any other failure (a timeout, a crash) leaves the record in `uploading`: the next
    # collect finds the batch in the provider's list by its metadata, or gives the rows back
    await conn.execute(
        sql.BATCH_SUBMITTED,
        {"id": sub, "batch_id": info.id, "file_id": file_id, "status": info.status, "created_at": info.created_at},
    )
    return Submitted(batches=1, rows=len(items), requests=len(kept), tokens=tokens), sum(len(r) for r in over)


async def _give_back(conn, js: sql.JobSQL, sub: uuid.UUID, error: str) -> None:
    async with conn.transaction():
        await conn.execute(sql.batch_give_back(js), (error[:2000], sub))
        await conn.execute(sql.BATCH_RELEASED, {"id": sub, "error": error[:2000]})
