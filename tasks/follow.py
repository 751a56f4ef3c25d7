"""The sync stage: follow a job's queues and embed what lands in them, until a window ends.

``vectorfill serve --sync`` runs the sync flow (``flows/sync.py``) for each job, one window
(an hour by default) after another. Within a window this stage loops::

    wait for work (poll) -> one cycle: fill each version, active first -> switch? -> ...

**Waiting** is a poll, on one autocommit connection per job: every :data:`POLL_S` one
statement asks each live version's queue whether it holds a claimable row (an ``EXISTS``,
next to free on an idle queue) and how the job's versions stand. Polling rather than
LISTEN/NOTIFY adds nothing to the user's writes (no trigger, no commit-time lock on the
notification queue, which serialises every notifying commit of the cluster) and changes
no schema; it adds at most :data:`POLL_S` to the latency. While work keeps coming, no
poll is made: a cycle that found rows is followed by the next at once.

**A cycle** fills each version with the stages of the backfill (claim -> embed -> store,
the body of the batch task, ``batch.py``) in ``concurrency`` lanes until the queue is
drained, so a burst of writes is taken in few claims: bursts coalesce. Under steady writes
the lanes overlap (one claims while others embed and store) for up to :data:`PIPELINE_S`. A
cycle takes no Prefect task run: at a trickle of writes that would be one task run per
write or two (thousands an hour); the window's flow run, its log lines (one a minute, when
anything happened) and its summary are the history. One cycle at a time per job: at most
one sync run works on a job version, and a write during a cycle is claimed by it (if it
lands before the queue is drained) or by the next.

A new model's version (after ``vectorfill job set-model``) is filled after the active one
in each cycle, at most :data:`FILLING_ROWS_PER_CYCLE` rows a cycle, so that new writes
keep their latency while a re-embed runs. Once a cycle drained it, the switch is tried:
every row written before the cycle started was embedded by it in both versions, so the
new version lacks nothing the active one has (:func:`vectorfill.jobs.versions.behind`).

**Errors.** A batch retries as in a backfill (``batch.py``). When its retries are spent
on an error that may pass (the provider down, Postgres restarting), the batch keeps its
claims (renewed by the keeper, so nothing is paid twice) and is tried again after
:data:`OUTAGE_BACKOFF_S`: an outage backs off instead of spinning, and the rows do not
use up their ``max_attempts``. Any other error ends the run (given back its claims, as a
backfill does); the supervisor starts the next run after a backoff. Cancellation (Ctrl-C,
SIGTERM of ``serve``) gives the claims and the unspent shared budget back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
import uuid
from dataclasses import dataclass, field

import psycopg
import psycopg.errors
from prefect.utilities.math import clamped_poisson_interval

from vectorfill.errors import DatabaseError, is_transient, stop_reason
from vectorfill.provider.client import EmbeddingsClient
from vectorfill.provider.prices import price_per_million
from vectorfill.provider.ratelimit import Throttle
from vectorfill.provider.throttles import Throttles
from vectorfill.records import Job
from vectorfill.storage import sql
from vectorfill.storage.db import LaneConnection, aone_row

from .batch import Attempts, Filled, Lanes, fill_batch, rows_per_task
from .claim import keep_claims, release_rows
from .common import Work, database_url
from .fill import Tally
from .prepare import _prepare

__all__ = ["FILLING_ROWS_PER_CYCLE", "OUTAGE_BACKOFF_S", "POLL_S", "STOP", "Followed", "follow_job"]

#: Seconds between two looks at an idle job's queues.
POLL_S = 0.25
#: Seconds between the run's log lines (one per period in which anything happened).
LOG_EVERY_S = 60.0
#: Seconds before a batch whose retries are spent on a transient error is tried again (the
#: last repeats), jittered.
OUTAGE_BACKOFF_S = (5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0)
#: Most rows of a new model's version filled per cycle (the active version's new writes
#: wait for no more than that).
FILLING_ROWS_PER_CYCLE = 4_096
#: Seconds between two claims of a cycle's lanes: rows that arrive meanwhile are taken
#: together (a burst of single-row writes makes few requests), for at most that much latency.
CLAIM_GAP_S = 0.1
#: Seconds a cycle's lanes go on claiming rows that keep arriving (then the cycle ends at
#: the first short claim, so that a new model's version and the window's end get their turn).
PIPELINE_S = 5.0
#: Seconds before a refused switch is tried again when nothing else happens (the rows it
#: lacked may have been embedded by another run, or failed rows retried).
SWITCH_RETRY_S = 10.0
#: Seconds between two looks when the database cannot be reached (the last repeats).
POLL_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)

log = logging.getLogger("vectorfill.sync")


@dataclass
class Followed:
    """What a window of sync did, beside the counts in its :class:`Tally`."""

    cycles: int = 0
    """Cycles that claimed at least one row."""
    switched_to: int | None = None
    """The version a switch in this window made active (the last one)."""
    outages: int = 0
    """Times a batch waited out :data:`OUTAGE_BACKOFF_S` after spending its retries."""
    reloads: int = 0
    """Times the job's versions changed under the run (set-model, switch, pause, ...)."""
    stopped: bool = False
    """The run was stopped (:data:`STOP`) before its window ended."""


@dataclass
class _Worker:
    """What one version's cycles keep for a whole window: its client, lane connections and
    claims token (with the keeper that renews the token's leases)."""

    work: Work
    throttle: Throttle
    url: str
    token: uuid.UUID = field(default_factory=uuid.uuid4)
    client: EmbeddingsClient | None = None
    dbs: list[LaneConnection] = field(default_factory=list)
    keeper: asyncio.Task | None = None
    _client_cm: contextlib.AbstractAsyncContextManager[EmbeddingsClient] | None = None

    async def open(self, job: str) -> None:
        self._client_cm = EmbeddingsClient.for_version(self.work.version, job=job, settings=self.work.settings)
        self.client = await self._client_cm.__aenter__()
        self.dbs = [LaneConnection(self.url) for _ in range(self.work.settings.concurrency)]
        self.keeper = asyncio.create_task(keep_claims(self.work, self.token, self.url))

    async def close(self, reason: str | None) -> None:
        """Give back what the token still holds (nothing after a clean cycle), stop renewing."""
        try:
            if reason is not None:
                await asyncio.shield(release_rows(self.work, self.token, reason))
        finally:
            if self.keeper is not None:
                self.keeper.cancel()
            for db in self.dbs:
                await db.aclose()
            if self._client_cm is not None:
                await self._client_cm.__aexit__(None, None, None)

    async def drain(self, tally: Tally, budget: int | None, stats: Followed) -> tuple[int, bool]:
        """Fill this version in ``concurrency`` lanes until the queue is drained (or ``budget``
        rows are claimed); returns (rows claimed, whether the queue was drained).

        Unlike a backfill's lanes, which all stop at the first short claim (rows written
        after it are the next run's), these go on claiming what keeps arriving while the
        others embed and store, so that under steady writes claims, requests and stores
        overlap. A lane stops when its claim finds nothing, or, after :data:`PIPELINE_S`,
        when it comes back short: a cycle ends, and the next version gets its turn. Claims
        are :data:`CLAIM_GAP_S` apart at least, so that a burst is taken in few of them."""
        shared = Lanes.for_settings(self.work.settings)
        price = price_per_million(self.work.version.model, self.work.settings)
        deadline = time.monotonic() + PIPELINE_S
        done = asyncio.Event()  # the queue was drained: every lane stops after its batch
        left = [budget]
        claimed = 0
        pacing, last_claim = asyncio.Lock(), [0.0]

        async def paced() -> None:
            """Claims at least CLAIM_GAP_S apart, so that what arrives meanwhile is taken in one."""
            async with pacing:
                wait = last_claim[0] + CLAIM_GAP_S - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                last_claim[0] = time.monotonic()

        def take(want: int) -> int:
            if left[0] is None:
                return want
            n = min(want, left[0])
            left[0] -= n
            return n

        async def lane(db: LaneConnection) -> None:
            nonlocal claimed
            while not done.is_set() and (limit := take(rows_per_task(self.work.settings))) > 0:
                await paced()
                if done.is_set():
                    left[0] = None if left[0] is None else left[0] + limit
                    return
                attempts = Attempts(self.work)
                own = Lanes(shared.unstored, claiming=shared.claiming)  # its own "drained" flag
                filled = await self._batch(attempts, limit, db, own, stats)
                if left[0] is not None:
                    left[0] += limit - filled.claimed
                self.work = attempts.work  # typed by the first store, when the dims were not known
                claimed += filled.claimed
                tally.add(filled, price)
                if filled.claimed < limit and (filled.claimed == 0 or time.monotonic() >= deadline):
                    done.set()

        async with asyncio.TaskGroup() as group:
            for db in self.dbs:
                group.create_task(lane(db))
        return claimed, done.is_set()

    async def _batch(self, attempts: Attempts, limit: int, db: LaneConnection, lanes: Lanes, stats: Followed) -> Filled:
        """The batch task's body (claim -> embed -> store), retried as Prefect retries the
        task; once its retries are spent on an error that may pass, tried again after
        :data:`OUTAGE_BACKOFF_S` with its claims kept (see the module docstring)."""
        if self.client is None:
            raise RuntimeError("the worker's client is not open: call open() first")
        client = self.client
        rounds = 0
        while True:
            try:
                return await fill_batch.fn(attempts, limit, self.token, db, client, self.throttle, lanes)
            except Exception as exc:
                if attempts.may_retry(exc):
                    continue  # the task body waited out the stage's backoff already
                if not is_transient(exc):
                    raise
                delay = OUTAGE_BACKOFF_S[min(rounds, len(OUTAGE_BACKOFF_S) - 1)]
                rounds += 1
                stats.outages += 1
                _logger().warning(
                    "%s: %s failed after its retries (%s); claims kept, trying again in %.0f s",
                    self.work.label,
                    attempts.stage,
                    stop_reason(exc),
                    delay,
                )
                attempts.failures.clear()
                await asyncio.sleep(clamped_poisson_interval(delay, clamping_factor=0.3))


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The flow run's logger (its lines show in the Prefect UI), else vectorfill's."""
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # not in a run (a test calling the stage directly)
        return log


class _Following:
    """One job followed for one window."""

    def __init__(self, job: str, tally: Tally, stats: Followed) -> None:
        self.name = job
        self.tally = tally
        self.stats = stats
        self.url = database_url()
        self.throttles = Throttles(self.url, job)
        self.job: Job | None = None
        self.workers: list[_Worker] = []
        self.fingerprint: str | None = None
        self.poll_conn: psycopg.AsyncConnection | None = None
        self.check_switch = True
        """Try the switch after the next drained cycle of a new version, even if it claimed nothing."""
        self.switch_due: float | None = None
        """When to try a refused switch again (monotonic seconds), while nothing else happens."""

    async def reload(self, reason: str | None = None) -> None:
        """(Re)load the job and open a worker per version to fill (active first)."""
        await self._close_workers(reason)
        self.job, works = await asyncio.to_thread(_load, self.name)
        self.workers = []
        for work in works:
            worker = _Worker(work, self.throttles.for_version(work.version, work.settings), self.url)
            await worker.open(self.name)
            self.workers.append(worker)
        self.fingerprint = None
        self.check_switch, self.switch_due = True, None

    async def _close_workers(self, reason: str | None) -> None:
        workers, self.workers = self.workers, []
        for worker in workers:
            await worker.close(reason)

    async def close(self, reason: str | None) -> None:
        try:
            await self._close_workers(reason)
        finally:
            await asyncio.shield(self.throttles.aclose())  # gives back the unspent shared budget
            if self.poll_conn is not None:
                await self.poll_conn.close()

    async def cycle(self) -> int:
        """Fill every version once (a new model's up to its per-cycle share); try the switch
        when that version was drained. Returns the rows claimed."""
        total = 0
        for worker in self.workers:
            filling = worker.work.version.state == "filling"
            claimed, drained = await worker.drain(self.tally, FILLING_ROWS_PER_CYCLE if filling else None, self.stats)
            total += claimed
            due = self.switch_due is not None and time.monotonic() >= self.switch_due
            if filling and drained and (claimed or self.check_switch or due):
                self.check_switch, self.switch_due = False, None
                if await self._switch():
                    await self.reload()
                    break
                # refused: rows another run holds, or failed rows; look again in a while
                self.switch_due = time.monotonic() + SWITCH_RETRY_S
        if total:
            self.stats.cycles += 1
        return total

    async def _switch(self) -> bool:
        from .switch import switch_versions

        if not await asyncio.to_thread(_ready, self.name):
            return False
        version = await switch_versions(self.name)
        if version is None:
            return False
        self.stats.switched_to = version
        _logger().info("%s: version %s complete, readers switched to it", self.name, version)
        return True

    async def wait(self, until: float) -> bool:
        """Poll until a queue holds a claimable row (True), the job's versions change (True,
        after reloading it) or the window ends (False)."""
        failures = 0
        while time.time() < until:
            try:
                found = await self._poll()
                failures = 0
            except psycopg.errors.UndefinedTable:  # a version's tables were dropped (abandon, prune)
                found = "changed"
            except (psycopg.OperationalError, DatabaseError) as exc:
                delay = POLL_BACKOFF_S[min(failures, len(POLL_BACKOFF_S) - 1)]
                failures += 1
                _logger().warning("%s: cannot look at the queues (%s); again in %.0f s", self.name, exc, delay)
                await self._drop_poll_conn()
                await asyncio.sleep(min(delay, max(0.0, until - time.time())))
                continue
            if found == "changed":
                self.stats.reloads += 1
                await self.reload()
                return True
            if found:
                return True
            await asyncio.sleep(POLL_S)
        return False

    async def _poll(self) -> bool | str:
        assert self.job is not None
        if self.poll_conn is None or self.poll_conn.closed:
            self.poll_conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True, connect_timeout=10)
        queues = [sql.JobSQL(self.job, w.work.version) for w in self.workers]
        row = await aone_row(await self.poll_conn.execute(sql.sync_poll(queues), {"job_id": self.job.id}))
        fingerprint, *claimable = row
        if self.fingerprint is None:
            self.fingerprint = fingerprint
        elif fingerprint != self.fingerprint:
            return "changed"
        return any(claimable) or (self.switch_due is not None and time.monotonic() >= self.switch_due)

    async def _drop_poll_conn(self) -> None:
        conn, self.poll_conn = self.poll_conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()


def _load(job_name: str) -> tuple[Job, list[Work]]:
    """The job, and its versions to fill (active first), checked as a backfill checks them."""
    from vectorfill.jobs.registry import load_job
    from vectorfill.storage.db import connect

    prepared = _prepare(job_name)
    if prepared.works:
        job = prepared.works[0].job
    else:  # every version paused: nothing to fill, the versions are still watched
        with connect(database_url()) as conn:
            job = load_job(conn, job_name)
    return job, sorted(prepared.works, key=lambda w: w.version.state != "active")


def _ready(job_name: str) -> bool:
    """The first look of the switch (no lock): the job's new version lacks nothing."""
    from vectorfill.jobs.registry import load_job
    from vectorfill.jobs.versions import complete
    from vectorfill.storage.db import connect

    with connect(database_url()) as conn:
        return complete(conn, load_job(conn, job_name)) is not None


#: Set by whoever runs the sync flow (``serve --sync``'s supervisor) to stop it early but
#: cleanly: the cycle running is cancelled, its claims given back, and the run ends with
#: its summary. (A context variable: a flow's parameters go to Prefect's API as JSON.)
STOP: contextvars.ContextVar[asyncio.Event | None] = contextvars.ContextVar("vectorfill_sync_stop", default=None)


async def follow_job(job: str, until: float, tally: Tally) -> Followed:
    """Keep ``job``'s versions in step with its source until ``until`` (epoch seconds), then
    return at the end of the cycle running then (nothing claimed is left held); or, once
    :data:`STOP` is set, at once, having given back what the cycle held."""
    stats = Followed()
    following = _Following(job, tally, stats)
    reason: str | None = None
    stop = STOP.get()
    looping: asyncio.Task | None = None
    try:
        await following.reload()
        looping = asyncio.create_task(_loop(following, job, until, tally))
        if stop is None:
            await looping
        else:
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({looping, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not looping.done():
                reason, stats.stopped = "sync stopped", True
                looping.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await looping
                _logger().info("%s: sync stopped; claims given back", job)
            else:
                looping.result()
    except BaseException as exc:
        reason = stop_reason(exc)
        if looping is not None and not looping.done():
            looping.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.shield(asyncio.wait({looping}))
        raise
    finally:
        await following.close(reason)
    return stats


async def _loop(following: _Following, job: str, until: float, tally: Tally) -> None:
    last_log, logged = time.monotonic(), dict(tally.totals)
    try:
        while True:
            if not await following.cycle():
                if time.time() >= until or not await following.wait(until):
                    break
            elif time.time() >= until:
                break
            if time.monotonic() - last_log >= LOG_EVERY_S:
                last_log = time.monotonic()
                if tally.totals != logged:
                    _log_period(job, logged, tally.totals)
                    logged = dict(tally.totals)
    finally:
        if tally.totals != logged:
            _log_period(job, logged, tally.totals)


def _log_period(job: str, before: dict, now: dict) -> None:
    d = {
        k: (now[k] or 0) - (before.get(k) or 0)
        for k in ("embedded", "deleted", "failed", "stale", "requests", "tokens")
    }
    _logger().info(
        "%s: %d rows embedded, %d deleted, %d failed, %d edited in flight; %d requests, %d tokens",
        job,
        d["embedded"],
        d["deleted"],
        d["failed"],
        d["stale"],
        d["requests"],
        d["tokens"],
    )
