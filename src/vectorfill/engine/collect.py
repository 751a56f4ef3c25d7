"""The Batch API, stage 2: collect a job's finished batches and store their vectors.

Every backfill runs this first (batch mode or not), under the job's batch lock
(``submit.py``). For each submission not done yet:

* ``claiming``: its process died while claiming; nothing was sent: the rows are given back;
* ``uploading``: its process died around the upload or the create: the provider's list is
  searched for a batch whose metadata names the submission. Found, it is collected; not
  found, nothing was created and the rows are given back;
* ``submitted``: the batch is retrieved. Still running, its rows' lease is renewed.
  Finished (completed, expired, cancelled, failed), its output and error files are read:

  - each output line is matched to its rows by ``custom_id`` and checked like an online
    answer (:meth:`EmbeddingsClient._parse`: one finite vector per input, of one and the
    expected dimension), then stored by the online store (``store.py``) with the same
    ``seq`` guard: a row edited or deleted while its batch was out is not written (it is
    queued for its new text, or gone);
  - a line refused for its input (400/413/422) of one input, or naming ``input[i]``,
    records that row as failed with the provider's reason;
  - everything else (an expired remainder, ``batch_expired``/``batch_cancelled`` lines,
    5xx or 429 lines, answers that fail the checks, a batch that failed validation such
    as ``token_limit_exceeded``) is **given back to the queue**: the next run sends it,
    online or in its next batch (a ``--wait`` run submits it again itself). A batch that
    never ran (failed validation, cancelled lines) does not count as an attempt of its
    rows; lines that ran and failed do (after ``max_attempts`` a row is a failure).

Collecting again (a crash while storing) stores nothing twice: stored rows have left the
queue, so the ``seq`` guard skips them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import uuid
from collections import defaultdict
from dataclasses import dataclass

import httpx
import numpy as np
import orjson

from vectorfill.errors import ProviderError, TransientProviderError
from vectorfill.jobs.registry import load_job
from vectorfill.provider.batches import ACTIVE, BatchesClient, BatchInfo, BatchLine, failure_code, parse_lines
from vectorfill.provider.client import EmbeddingsClient
from vectorfill.provider.prices import batch_price_per_million
from vectorfill.records import Job
from vectorfill.storage import sql
from vectorfill.storage.db import LaneConnection, connect, scalar
from vectorfill.storage.errors import translated

from .claim import Item
from .counts import Counts
from .embed import Embedded
from .store import store_vectors
from .submit import BATCH_LEASE_S, Submitted, batch_lock
from .work import Work, database_url

__all__ = ["Collected", "batch_counts", "collect_batches"]

#: Rows stored per transaction while collecting.
STORE_ROWS = 4096
_INPUT_AT = re.compile(r"input\[(\d+)\]")


@dataclass(frozen=True)
class Collected:
    batches: int = 0
    """Batches finished and collected now."""
    open: int = 0
    """Batches still running at the provider."""
    written: int = 0
    stale: int = 0
    failed: int = 0
    retried: int = 0
    """Rows given back to the queue (expired, failed lines, refused batches)."""
    requests: int = 0
    tokens: int = 0
    """Tokens billed (the output's ``usage``)."""
    cost_usd: float | None = 0.0
    busy: bool = False

    def __add__(self, other: Collected) -> Collected:
        def add(name):
            a, b = getattr(self, name), getattr(other, name)
            if name == "busy":
                return a or b
            if name == "cost_usd":
                return None if a is None or b is None else a + b
            return a + b

        return Collected(**{f.name: add(f.name) for f in dataclasses.fields(self)})

    def counts(self) -> Counts:
        """These figures as the run's counts (the vectors written are part of ``embedded``)."""
        return Counts(
            embedded=self.written,
            failed=self.failed,
            stale=self.stale,
            requests=self.requests,
            tokens=self.tokens,
            cost_usd=self.cost_usd,
            batch_rows=self.written,
            batch_tokens=self.tokens,
            batch_cost_usd=self.cost_usd,
            batches_collected=self.batches,
            batches_open=self.open,
            batch_retried=self.retried,
        )

    def then(self, later: Collected) -> Collected:
        """This collect's counts and a later one's, with the later one's open batches."""
        return dataclasses.replace(self + later, open=later.open, busy=later.busy)


def batch_counts(collected: Collected, submitted: Submitted | None = None, *, collected_since: bool = False) -> Counts:
    """What went through batches, as the run's :class:`~vectorfill.engine.counts.Counts`
    (added to the online figures for the summary). ``collected_since``: the last collect
    came after the last submission (so its count of open batches includes them)."""
    counts = collected.counts()
    if submitted is None:
        return counts
    return dataclasses.replace(
        counts + submitted.counts(),
        batches_open=collected.open if collected_since else collected.open + submitted.batches,
    )


async def collect_batches(job_name: str) -> Collected:
    """Collect every finished batch of ``job_name``; see the module docstring. (The task
    that runs it: :func:`vectorfill.tasks.collect.collect_batches`.)"""
    url = database_url()
    job, open_rows = await asyncio.to_thread(_open_batches, url, job_name)
    if not open_rows:
        return Collected()
    async with batch_lock(url, job.id) as held:
        if not held:
            return Collected(busy=True, open=len(open_rows))
        job, open_rows = await asyncio.to_thread(_open_batches, url, job_name)  # as of the lock
        db = LaneConnection(url)
        try:  # (the lane's statements outside a store: translated here)
            with translated("collecting batches", job=job.name):
                return await _collect_all(job, open_rows, db)
        finally:
            await db.aclose()


def _open_batches(url: str, job_name: str) -> tuple[Job, list[dict]]:
    with connect(url) as conn:
        job = load_job(conn, job_name)
        if not scalar(conn.execute(sql.BATCHES_INSTALLED)):  # schema before 0006: no batches
            return job, []
        cur = conn.execute(sql.BATCH_OPEN, {"job_id": job.id})
        names = [d.name for d in cur.description or ()]
        return job, [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


async def _collect_all(job: Job, rows: list[dict], db: LaneConnection) -> Collected:
    total = Collected()
    listed: dict[str, BatchInfo] | None = None
    clients: dict[int, BatchesClient] = {}
    try:
        for row in rows:
            try:
                version = job.version(row["version"])
            except KeyError:  # the version was dropped (its rows went with it)
                continue
            work = Work(job, version)
            js = sql.JobSQL(job, version)
            conn = await db.get()
            sub: uuid.UUID = row["id"]
            if row["state"] == "claiming":
                await _give_back(conn, js, sub, "the run that claimed these rows for a batch stopped before sending")
                continue
            api = clients.get(version.version)
            if api is None:
                api = clients[version.version] = BatchesClient.for_version(version, job=job.name)
            info: BatchInfo | None = None
            if row["provider_batch_id"] is None:  # `uploading`: was it created?
                if listed is None:
                    listed = await _listed(api, job, min(r["created_at"] for r in rows).timestamp())
                info = listed.get(str(sub))
                if info is None:
                    await _give_back(conn, js, sub, "the run that submitted this batch stopped before it was created")
                    continue
                await conn.execute(
                    sql.BATCH_SUBMITTED,
                    {
                        "id": sub,
                        "batch_id": info.id,
                        "file_id": info.input_file_id,
                        "status": info.status,
                        "created_at": info.created_at,
                    },
                )
            try:
                info = await api.retrieve(info.id if info is not None else row["provider_batch_id"])
            except ProviderError as exc:  # the provider is unreachable now: collected by a later run
                logging.getLogger("vectorfill").warning("checking batch %s of %s failed: %s", sub, job.name, exc)
                total = total + Collected(open=1)
                continue
            if info.status in ACTIVE:
                await conn.execute(sql.BATCH_STATUS, {"id": sub, "status": info.status})
                await conn.execute(js.renew(), {"lease_s": BATCH_LEASE_S, "token": sub})
                total = total + Collected(open=1)
                continue
            total = total + await _collect_one(work, sub, info, api, db)
        return total
    finally:
        for api in clients.values():
            await api.aclose()


async def _listed(api: BatchesClient, job: Job, since: float) -> dict[str, BatchInfo]:
    """This job's batches in the provider's list, by submission id (newest first; pages are
    read until batches older than the oldest open submission, less an hour of clock skew)."""
    found: dict[str, BatchInfo] = {}
    async for info in api.list():
        if info.metadata.get("vectorfill_job") == job.name and "vectorfill_submission" in info.metadata:
            found.setdefault(info.metadata["vectorfill_submission"], info)
        if info.created_at is not None and info.created_at < since - 3600:
            break
    return found


async def _collect_one(
    work: Work, sub: uuid.UUID, info: BatchInfo, api: BatchesClient, db: LaneConnection
) -> Collected:
    """Store a finished batch's results; give back what it did not embed."""
    job, version = work.job, work.version
    js = sql.JobSQL(job, version)
    conn = await db.get()
    items = await _items(conn, work, sub)
    lines: list[BatchLine] = []
    for file_id in (info.output_file_id, info.error_file_id):
        if file_id:
            lines += parse_lines(await api.content(file_id))
    price = batch_price_per_million(version.model, work.settings)
    written = stale = failed = requests = tokens = 0
    rejected: list[tuple[Item, int | None, str]] = []
    pending: list[tuple[tuple[Item, ...], np.ndarray, str, int]] = []
    async with EmbeddingsClient.for_version(version, job=job.name, settings=work.settings) as client:

        async def flush() -> None:
            nonlocal written, stale, work
            if not pending:
                return
            embedded = Embedded(
                items=tuple(i for p in pending for i in p[0]),
                vectors=np.vstack([p[1] for p in pending]),
                model=pending[0][2],
                tokens=sum(p[3] for p in pending),
                requests=len(pending),
            )
            pending.clear()
            stored = await store_vectors(work, embedded, db)
            written += stored.written
            stale += stored.stale
            if work.version.vector_dims is None and stored.vector_dims:
                work = Work(job, dataclasses.replace(work.version, vector_dims=stored.vector_dims))
                client.expected_dims = stored.vector_dims

        for line in lines:
            req = _request_number(line.custom_id, sub)
            request = items.pop(req, None) if req is not None else None
            if request is None:
                continue  # not ours, or seen already: its rows are given back below if still held
            if line.ok:
                try:
                    answer = client._parse(httpx.Response(200, content=orjson.dumps(line.body)), len(request))
                except TransientProviderError:
                    continue  # checked like an online answer: not stored, given back below
                n = answer.prompt_tokens if answer.prompt_tokens is not None else sum(i.tokens for i in request)
                requests += 1
                tokens += n
                pending.append((request, answer.vectors, answer.model, n))
                if sum(len(p[0]) for p in pending) >= STORE_ROWS:
                    await flush()
            elif line.status in (400, 413, 422):
                at = _INPUT_AT.search(line.message)
                bad = (
                    request[0]
                    if len(request) == 1
                    else request[int(at.group(1))]
                    if at and int(at.group(1)) < len(request)
                    else None
                )
                if bad is not None:  # the input at fault is known: a failure with the reason
                    rejected.append((bad, line.status, line.message or "refused by the provider"))
        await flush()
    if rejected:
        stored = await store_vectors(
            work, Embedded((), np.zeros((0, 0), np.float32), version.model, 0, 0, tuple(rejected)), db
        )
        failed += stored.failed
    code = failure_code(info)
    error = None
    if info.status == "failed":
        error = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in info.errors[:3]) or "the batch failed"
    async with conn.transaction():
        if info.status == "failed" or info.status == "cancelled" or code == "token_limit_exceeded":
            # never ran (or was stopped): not an attempt of its rows
            retried = (
                await conn.execute(sql.batch_give_back(js), ((error or f"batch {info.status}")[:2000], sub))
            ).rowcount
        else:
            retried = (
                await conn.execute(js.release(), (f"not embedded by batch {info.id} ({info.status})", sub))
            ).rowcount
        await conn.execute(
            sql.BATCH_DONE,
            {
                "id": sub,
                "status": info.status,
                "output_file_id": info.output_file_id,
                "error_file_id": info.error_file_id,
                "billed_tokens": tokens,
                "written": written,
                "stale": stale,
                "failed": failed,
                "retried": retried,
                "error": error,
            },
        )
    return Collected(
        batches=1,
        written=written,
        stale=stale,
        failed=failed,
        retried=retried,
        requests=requests,
        tokens=tokens,
        cost_usd=None if price is None else tokens * price / 1_000_000,
    )


async def _items(conn, work: Work, sub: uuid.UUID) -> dict[int, tuple[Item, ...]]:
    """The submission's inputs by request number, as claim items (no text: not kept)."""
    n = len(work.job.key_columns)
    rows = await (await conn.execute(sql.batch_items_read(sql.JobSQL(work.job, work.version)), (sub,))).fetchall()
    by_req: dict[int, list[Item]] = defaultdict(list)
    for r in rows:
        key, req, _pos, seq, digest, tokens = tuple(r[:n]), r[n], r[n + 1], r[n + 2], bytes(r[n + 3]), r[n + 4]
        by_req[req].append(Item(key, seq, "", digest, tokens))
    return {req: tuple(v) for req, v in by_req.items()}


def _request_number(custom_id: str, sub: uuid.UUID) -> int | None:
    prefix, _, number = custom_id.rpartition("-")
    if prefix != sub.hex[:12] or not number.isdigit():
        return None
    return int(number)


async def _give_back(conn, js: sql.JobSQL, sub: uuid.UUID, error: str) -> None:
    async with conn.transaction():
        await conn.execute(sql.batch_give_back(js), (error[:2000], sub))
        await conn.execute(sql.BATCH_RELEASED, {"id": sub, "error": error[:2000]})
