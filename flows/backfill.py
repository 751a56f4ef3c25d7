"""The backfill flow: embed every queued row of a job, then report.

``concurrency`` lanes run side by side, each a loop of batch tasks (claim -> embed ->
store, ``tasks/batch.py``), so that requests stay in flight while vectors are written.
The flow holds no transaction and no secret: the database URL and the API key come from
the environment of the process that runs it (``VECTORFILL_DATABASE_URL`` and the job's
``api_key_env``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field

from prefect import flow
from prefect.utilities.annotations import quote
from prefect.artifacts import acreate_progress_artifact, aupdate_progress_artifact

from vectorfill.budgets import PostgresBudget, endpoint_key
from vectorfill.client import EmbeddingsClient
from vectorfill.errors import stops_run
from vectorfill.prices import price_per_million
from vectorfill.ratelimit import Concurrency, RateLimiter, Throttle
from vectorfill.runtime import frozen_heap
from vectorfill.tasks import (
    Attempts,
    Filled,
    Lanes,
    Work,
    batch_task,
    keep_claims,
    prepare_run,
    release_rows,
    report_run,
    rows_per_task,
    switch_versions,
)
from vectorfill.db import LaneConnection
from vectorfill.tasks.common import database_url
from vectorfill.tasks.report import RunSummary

PROGRESS_EVERY_S = 2.0

__all__ = ["backfill"]


@dataclass
class _Tally:
    """Counts shared by the lanes of one run (asyncio: one thread, no locks needed)."""

    budget: int | None
    pending: int
    done: int = 0
    totals: dict = field(
        default_factory=lambda: dict(
            embedded=0, unchanged=0, deleted=0, failed=0, truncated=0, stale=0, requests=0, tokens=0,
            cost_usd=0.0,
        )
    )

    def add(self, filled: Filled, price: float | None) -> None:
        """Count one batch task's rows, and its billed tokens at ``price`` (USD per million;
        None: unknown, so the cost is too)."""
        for key in ("unchanged", "deleted", "failed", "truncated", "stale", "requests"):
            self.totals[key] += getattr(filled, key)
        self.totals["embedded"] += filled.written
        self.done += filled.claimed
        self.bill(filled.tokens, price)

    def bill(self, tokens: int, price: float | None) -> None:
        """Add billed tokens at ``price`` (USD per million; None: unknown, so the cost is too)."""
        self.totals["tokens"] += tokens
        if price is None or self.totals["cost_usd"] is None:
            self.totals["cost_usd"] = None
        else:
            self.totals["cost_usd"] += tokens * price / 1_000_000

    @property
    def progress(self) -> float:
        """Percent of the rows queued at the start that have been claimed and settled."""
        return min(100.0, 100.0 * self.done / self.pending) if self.pending else 100.0

    def take(self, want: int) -> int:
        if self.budget is None:
            return want
        n = min(want, self.budget)
        self.budget -= n
        return n

    def give_back(self, unused: int) -> None:
        """Return budget taken for rows a claim did not find (so another version gets it)."""
        if self.budget is not None:
            self.budget += unused


def _throttle(throttles: dict, work: Work) -> Throttle:
    """The run's throttle for ``work``'s endpoint: versions on one endpoint share one budget.

    With an ``rpm`` or ``tpm`` setting, the budget is also shared with every other run on
    the endpoint, through ``vectorfill.budgets`` (:mod:`vectorfill.budgets`); without, the
    run follows what the provider announces. :func:`_close_throttles` gives back the budget
    a run leased and did not spend.
    """
    v, s = work.version, work.settings
    key = (v.base_url.rstrip("/"), v.model, v.api_key_env)
    if key not in throttles:
        shared = None
        if s.rpm or s.tpm:
            shared = PostgresBudget(database_url(), endpoint_key(v.base_url, v.model), job=work.job.name)
        throttles[key] = Throttle(
            RateLimiter(s.rpm, s.tpm, job=work.job.name, shared=shared),
            Concurrency(min(4, s.concurrency), max_limit=s.concurrency),
        )
    return throttles[key]


async def _close_throttles(throttles: dict) -> None:
    """Give back the shared budget the run leased and did not spend (best effort, shielded
    from the run's cancellation: a run stopped by Ctrl-C gives it back too)."""
    for throttle in throttles.values():
        await asyncio.shield(throttle.aclose())


async def _lane(
    work: Work,
    client: EmbeddingsClient,
    tally: _Tally,
    token: uuid.UUID,
    url: str,
    throttle: Throttle,
    lanes: Lanes,
) -> None:
    """One batch task after another (claim -> embed -> store) until the queue is drained
    (or the run's budget spent).

    The queue is drained once any lane's claim comes back short (``Lanes.drained``): no
    free row was left to claim then, so every lane stops after its current batch instead
    of each paying for one more task run that would claim nothing. Rows queued after that (written during the
    run, or edited while in flight) are left for the next run, and counted in its summary
    as pending.

    Arguments are ``quote()``d: Prefect would otherwise walk every item of every batch to
    look for futures, which cost about half the wall time (bench/bench_throughput.py).
    """
    price = price_per_million(work.version.model, work.settings)
    db = LaneConnection(url)
    try:
        while not lanes.drained.is_set() and (limit := tally.take(rows_per_task(work.settings))) > 0:
            attempts = Attempts(work)
            filled = await batch_task(attempts)(
                quote(attempts), limit, token, quote(db), quote(client), quote(throttle), quote(lanes)
            )
            tally.give_back(limit - filled.claimed)
            work = attempts.work  # typed by the first store, when the job's dims were not known
            tally.add(filled, price)
    finally:
        await db.aclose()


async def _report_progress(tally: _Tally, job: str, done: asyncio.Event) -> None:
    """The run's progress artifact: created beside the first batches (not before them),
    updated every few seconds (not once per batch: each update is an API round trip) and
    once more when ``done`` is set."""
    last = tally.progress
    artifact = await acreate_progress_artifact(progress=last, description=f"vectorfill backfill of {job}")
    while True:
        finished = done.is_set()
        if tally.progress != last:
            last = tally.progress
            await aupdate_progress_artifact(artifact, progress=last)
        if finished:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), PROGRESS_EVERY_S)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        exc = _first_error(exc)
    if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
        return "run interrupted"
    return str(exc) or type(exc).__name__


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The error to report from the lanes: one that stopped the run, else the first."""
    leaves: list[BaseException] = []

    def walk(g):
        for e in g.exceptions:
            walk(e) if isinstance(e, BaseExceptionGroup) else leaves.append(e)

    walk(group)
    return next((e for e in leaves if stops_run(e)), leaves[0])


@flow(name="vectorfill-backfill", persist_result=False, log_prints=False)
async def backfill(job: str, max_rows: int | None = None) -> RunSummary:
    """Embed every pending row of ``job`` (or at most ``max_rows`` of them), for its active
    version and the new model's version, if one is filling; switch to the latter once complete."""
    with frozen_heap():  # full GC passes skip the heap that was there before the run
        return await _backfill(job, max_rows)


async def _backfill(job: str, max_rows: int | None) -> RunSummary:
    started = time.monotonic()
    prepared = await prepare_run(job)
    tally = _Tally(budget=max_rows, pending=min(prepared.pending, max_rows or prepared.pending))
    done = asyncio.Event()
    reporter = asyncio.create_task(_report_progress(tally, job, done)) if tally.pending else None
    try:
        await _fill(prepared, tally, job)
    except BaseException:
        if reporter is not None:
            reporter.cancel()
        raise
    done.set()  # the reporter's last update goes on beside the switch
    switched = await switch_versions(job) if prepared.filling else None  # only a re-embed switches
    if reporter is not None:
        await reporter
    return await report_run(job, tally.totals, time.monotonic() - started, switched)


async def _fill(prepared, tally: _Tally, job: str) -> None:
    """Run the lanes of each version to fill, one version after another."""
    throttles: dict = {}  # per endpoint, for this run only
    try:
        await _fill_versions(prepared, tally, job, throttles)
    finally:
        await _close_throttles(throttles)


async def _fill_versions(prepared, tally: _Tally, job: str, throttles: dict) -> None:
    """:func:`_fill`'s loop over the versions, with the run's ``throttles`` (closed by it)."""
    for work in prepared.works:
        throttle = _throttle(throttles, work)
        async with EmbeddingsClient.for_version(work.version, job=job, settings=work.settings) as client:
            token = uuid.uuid4()  # marks this run's claims, so that it can give them back
            url = database_url()
            keeper = asyncio.create_task(keep_claims(work, token, url))  # leases outlive slow batches
            lanes = Lanes.for_settings(work.settings)
            try:
                async with asyncio.TaskGroup() as group:
                    for _ in range(work.settings.concurrency):
                        group.create_task(_lane(work, client, tally, token, url, throttle, lanes))
            except BaseException as exc:
                # stopped early (an error, Ctrl-C, a cancellation): give the claims back now
                await asyncio.shield(release_rows(work, token, _reason(exc)))
                if isinstance(exc, BaseExceptionGroup):
                    raise _first_error(exc) from None
                raise
            finally:
                keeper.cancel()
