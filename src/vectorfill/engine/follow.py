"""Sync: follow a job's queues and embed what lands in them, until a window ends.

``vectorfill serve --sync`` runs the sync flow (``flows/sync.py``) for each job, one window
(an hour by default) after another. Within a window :func:`follow_job` loops::

    wait for work (poll) -> one cycle: fill each version, active first -> switch? -> ...

**Waiting** is a poll, on one autocommit connection per job: every :data:`POLL_S` one
statement asks each live version's queue whether it holds a claimable row (an ``EXISTS``,
next to free on an idle queue) and how the job's versions stand. Polling rather than
LISTEN/NOTIFY adds nothing to the user's writes (no trigger, no commit-time lock on the
notification queue, which serialises every notifying commit of the cluster) and changes
no schema; it adds at most :data:`POLL_S` to the latency. While work keeps coming, no
poll is made: a cycle that found rows is followed by the next at once.
A poll that cannot reach the database (a transient :class:`~vectorfill.errors.DatabaseError`)
is tried again after :data:`POLL_BACKOFF_S`, on a new connection; one that finds a version's
tables dropped (``UNDEFINED_TABLE``: an abandon, a prune) reloads the job.

**A cycle** fills each version with the engine of the backfill (:class:`~vectorfill.engine.fill.Filler`,
opened once per version for the window, with the endpoint's learnt caps) under the
:data:`FOLLOW` policy, in ``concurrency`` lanes until the queue is drained, so a burst of
writes is taken in few claims: bursts coalesce. Under steady writes the lanes overlap (one
claims while others embed and store) for up to :data:`PIPELINE_S`. A cycle takes no
Prefect task run (the slice body runs in the lane, retried by the same policy): at a trickle of writes that would be one task run per
write or two (thousands an hour); the window's flow run, its log lines (one a minute, when
anything happened) and its summary are the history. One cycle at a time per job: at most
one sync run works on a job version, and a write during a cycle is claimed by it (if it
lands before the queue is drained) or by the next.

A new model's version (after ``vectorfill job set-model``) is filled after the active one
in each cycle, at most :data:`FILLING_ROWS_PER_CYCLE` rows a cycle, so that new writes
keep their latency while a re-embed runs. Once a cycle drained it, the switch is tried:
every row written before the cycle started was embedded by it in both versions, so the
new version lacks nothing the active one has (:func:`vectorfill.jobs.versions.behind`).

**Errors.** A slice retries as in a backfill (``slice.py``). When its retries are spent
on an error that may pass (the provider down, Postgres restarting), the slice keeps its
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
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from vectorfill.errors import UNDEFINED_TABLE, DatabaseError, SpendCapReached
from vectorfill.jobs.registry import load_job
from vectorfill.jobs.versions import complete
from vectorfill.records import Job
from vectorfill.storage import sql
from vectorfill.storage.db import LaneConnection, connect

from . import spend
from .counts import Counts
from .fill import Budget, Filler, Policy, Tally, run_throttles
from .prepare import prepare
from .work import Work, database_url, run_logger

__all__ = [
    "FILLING_ROWS_PER_CYCLE",
    "FOLLOW",
    "OUTAGE_BACKOFF_S",
    "POLL_S",
    "STOP",
    "Followed",
    "Switch",
    "follow_job",
]

#: Seconds between two looks at an idle job's queues.
POLL_S = 0.25
#: Seconds between the run's log lines (one per period in which anything happened).
LOG_EVERY_S = 60.0
#: Seconds before a slice whose retries are spent on a transient error is tried again (the
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


@dataclass
class Followed:
    """What a window of sync did, beside the counts in its :class:`Tally`."""

    cycles: int = 0
    """Cycles that claimed at least one row."""
    switched_to: int | None = None
    """The version a switch in this window made active (the last one)."""
    outages: int = 0
    """Times a slice waited out :data:`OUTAGE_BACKOFF_S` after spending its retries."""
    reloads: int = 0
    """Times the job's versions changed under the run (set-model, switch, pause, ...)."""
    stopped: bool = False
    """The run was stopped (:data:`STOP`) before its window ended."""


#: Sync's policy: lanes follow what keeps arriving; an outage is waited out with the claims kept.
FOLLOW = Policy(
    follow=True,
    pipeline_s=PIPELINE_S,
    claim_gap_s=CLAIM_GAP_S,
    outage_backoff_s=OUTAGE_BACKOFF_S,
    log_slices=False,
)

#: How sync switches a job to its complete new version (the switch task): the version
#: switched to, or None.
Switch = Callable[[str], Awaitable[int | None]]


class _Following:
    """One job followed for one window."""

    def __init__(self, job: str, tally: Tally, stats: Followed, switch: Switch) -> None:
        self.name = job
        self.switch = switch
        self.tally = tally
        self.stats = stats
        self.url = database_url()
        self.throttles = run_throttles(self.url, job)
        self.job: Job | None = None
        self.fillers: list[Filler] = []
        self.fingerprint: str | None = None
        self.poll_conn = LaneConnection(self.url)
        """The connection that looks at the queues between cycles."""
        self.check_switch = True
        """Try the switch after the next drained cycle of a new version, even if it claimed nothing."""
        self.switch_due: float | None = None
        """When to try a refused switch again (monotonic seconds), while nothing else happens."""

    async def reload(self) -> None:
        """(Re)load the job and open a filler per version to fill (active first)."""
        await self._close_fillers()
        self.job, works = await asyncio.to_thread(_load, self.name)
        self.fillers = []
        for work in works:
            filler = Filler(
                work, self.name, self.url, self.throttles.for_version(work.version, work.settings), self.tally
            )
            self.fillers.append(filler)  # (closed with the others, if opening it fails)
            await filler.open()
        self.fingerprint = None
        self.check_switch, self.switch_due = True, None

    async def _close_fillers(self, error: BaseException | None = None, reason: str | None = None) -> None:
        fillers, self.fillers = self.fillers, []
        try:
            for filler in fillers:
                await filler.close(error, reason)
        finally:
            self.stats.outages += sum(f.outages for f in fillers)

    async def close(self, error: BaseException | None = None, reason: str | None = None) -> None:
        try:
            await self._close_fillers(error, reason)
        finally:
            await asyncio.shield(self.throttles.aclose())  # gives back the unspent shared budget
            await self.poll_conn.aclose()

    async def cycle(self) -> int:
        """Fill every version once (a new model's up to its per-cycle share); try the switch
        when that version was drained. Returns the rows claimed."""
        total = 0
        for filler in self.fillers:
            filling = filler.work.version.state == "filling"
            claimed, drained = await filler.fill(FOLLOW, Budget(FILLING_ROWS_PER_CYCLE if filling else None))
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
        if not await asyncio.to_thread(_ready, self.name):
            return False
        version = await self.switch(self.name)
        if version is None:
            return False
        self.stats.switched_to = version
        run_logger().info("%s: version %s complete, readers switched to it", self.name, version)
        return True

    async def wait(self, until: float) -> bool:
        """Poll until a queue holds a claimable row (True), the job's versions change (True,
        after reloading it) or the window ends (False)."""
        failures = 0
        while time.time() < until:
            try:
                found = await self._poll()
                failures = 0
            except DatabaseError as exc:
                if exc.sqlstate == UNDEFINED_TABLE:  # a version's tables were dropped (abandon, prune)
                    found = "changed"
                elif not exc.transient:
                    raise
                else:  # the database is unreachable: wait (the claims held stay held), then again
                    delay = POLL_BACKOFF_S[min(failures, len(POLL_BACKOFF_S) - 1)]
                    failures += 1
                    run_logger().warning("%s: cannot look at the queues (%s); again in %.0f s", self.name, exc, delay)
                    await self.poll_conn.discard()  # a new connection next time
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
        queues = [sql.JobSQL(self.job, f.work.version) for f in self.fillers]
        row = await self.poll_conn.execute(
            sql.sync_poll(queues), {"job_id": self.job.id}, doing="looking at the queues", job=self.name
        )
        if row is None:
            raise DatabaseError("a statement that returns one row returned none", job=None)
        fingerprint, *claimable = row
        if self.fingerprint is None:
            self.fingerprint = fingerprint
        elif fingerprint != self.fingerprint:
            return "changed"
        return any(claimable) or (self.switch_due is not None and time.monotonic() >= self.switch_due)


def _load(job_name: str) -> tuple[Job, list[Work]]:
    """The job, and its versions to fill (active first), checked as a backfill checks them."""
    prepared = prepare(job_name)
    if prepared.works:
        job = prepared.works[0].job
    else:  # every version paused: nothing to fill, the versions are still watched
        with connect(database_url()) as conn:
            job = load_job(conn, job_name)
    return job, sorted(prepared.works, key=lambda w: w.version.state != "active")


def _ready(job_name: str) -> bool:
    """The first look of the switch (no lock): the job's new version lacks nothing."""
    with connect(database_url()) as conn:
        return complete(conn, load_job(conn, job_name)) is not None


#: Set by whoever runs the sync flow (``serve --sync``'s supervisor) to stop it early but
#: cleanly: the cycle running is cancelled, its claims given back, and the run ends with
#: its summary. (A context variable: a flow's parameters go to Prefect's API as JSON.)
STOP: contextvars.ContextVar[asyncio.Event | None] = contextvars.ContextVar("vectorfill_sync_stop", default=None)


async def follow_job(job: str, until: float, tally: Tally, switch: Switch) -> Followed:
    """Keep ``job``'s versions in step with its source until ``until`` (epoch seconds), then
    return at the end of the cycle running then (nothing claimed is left held); or, once
    :data:`STOP` is set, at once, having given back what the cycle held. ``switch`` makes a
    complete new version active (the switch task). The window's counts are in ``tally``
    (the tokens estimated and the probes included, counted as each filler closes)."""
    stats = Followed()
    following = _Following(job, tally, stats, switch)
    reason: str | None = None
    error: BaseException | None = None
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
                run_logger().info("%s: sync stopped; claims given back", job)
            else:
                looping.result()
    except BaseException as exc:
        error = exc
        if looping is not None and not looping.done():
            looping.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.shield(asyncio.wait({looping}))
        raise
    finally:
        await following.close(error, reason)
    return stats


async def _loop(following: _Following, job: str, until: float, tally: Tally) -> None:
    last_log, logged = time.monotonic(), tally.counts
    try:
        while True:
            try:
                claimed = await following.cycle()
            except SpendCapReached as exc:  # wait for the reset instead of failing the run
                await _wait_for_reset(following, job, exc, until)
                if time.time() >= until:
                    break
                continue
            if not claimed:
                if time.time() >= until or not await following.wait(until):
                    break
            elif time.time() >= until:
                break
            if time.monotonic() - last_log >= LOG_EVERY_S:
                last_log = time.monotonic()
                if tally.counts != logged:
                    _log_period(job, logged, tally.counts)
                    logged = tally.counts
    finally:
        if tally.counts != logged:
            _log_period(job, logged, tally.counts)


async def _wait_for_reset(following: _Following, job: str, exc: SpendCapReached, until: float) -> None:
    """A spend cap was reached: give the claims back, wait for the cap's reset (or the end of
    the window, whichever comes first), then open the fillers again."""
    await following._close_fillers(exc)
    wait_s = max(0.0, min(exc.resets_at.timestamp() - spend.wall_clock(), until - time.time()))
    run_logger().warning("%s: %s; waiting %.0f s", job, exc, wait_s)
    await asyncio.sleep(wait_s)
    if time.time() < until:
        await following.reload()


def _log_period(job: str, before: Counts, now: Counts) -> None:
    run_logger().info(
        "%s: %d rows embedded, %d deleted, %d failed, %d edited in flight; %d requests, %d tokens",
        job,
        now.embedded - before.embedded,
        now.deleted - before.deleted,
        now.failed - before.failed,
        now.stale - before.stale,
        now.requests - before.requests,
        now.tokens - before.tokens,
    )
