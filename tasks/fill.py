"""Filling a job's versions: ``concurrency`` lanes of batch tasks per version, until its
queue is drained (or the run's row budget spent).

Each lane is a loop of batch tasks (claim -> embed -> store, ``batch.py``), so that
requests stay in flight while vectors are written. The lanes share the run's
:class:`Tally` (counts for the summary and the progress bar), one throttle per endpoint
(:class:`~vectorfill.provider.throttles.Throttles`) and, per version, one
:class:`~vectorfill.tasks.batch.Lanes` (what is in flight, and whether the queue is drained).
No transaction is held and no secret passes through here.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from prefect.utilities.annotations import quote

from vectorfill.errors import first_error, stop_reason
from vectorfill.provider.client import EmbeddingsClient
from vectorfill.provider.prices import price_per_million
from vectorfill.provider.ratelimit import Throttle
from vectorfill.provider.throttles import Throttles
from vectorfill.storage.db import LaneConnection

from .batch import Attempts, Filled, Lanes, batch_task, rows_per_task
from .claim import keep_claims, release_rows
from .common import Work, database_url, run_logger
from .prepare import Prepared

__all__ = ["Tally", "fill_versions"]


def _zero_totals() -> dict:
    return dict(embedded=0, unchanged=0, deleted=0, failed=0, truncated=0, stale=0, requests=0, tokens=0, cost_usd=0.0)


@dataclass
class Tally:
    """Counts shared by the lanes of one run (asyncio: one thread, no locks needed)."""

    budget: int | None
    """Rows the run may still claim (``--max-rows``); None: no limit."""
    pending: int
    """Rows queued when the run started (capped by the budget): 100% of the progress bar."""
    done: int = 0
    totals: dict = field(default_factory=_zero_totals)

    @classmethod
    def for_run(cls, prepared: Prepared, max_rows: int | None) -> Tally:
        return cls(budget=max_rows, pending=min(prepared.pending, max_rows or prepared.pending))

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


async def fill_versions(prepared: Prepared, tally: Tally, job: str) -> None:
    """Fill each version that has rows to embed, one version after another, with
    ``concurrency`` lanes each. On any error, Ctrl-C or cancellation the run's claims are
    given back at once (not left to expire) and the error that stopped the run is raised."""
    url = database_url()
    throttles = Throttles(url, job)  # per endpoint, for this run only
    try:
        for work in prepared.works:
            await _fill_version(work, tally, job, url, throttles.for_version(work.version, work.settings))
    finally:
        await throttles.aclose()


async def _fill_version(work: Work, tally: Tally, job: str, url: str, throttle: Throttle) -> None:
    async with EmbeddingsClient.for_version(work.version, job=job, settings=work.settings) as client:
        token = uuid.uuid4()  # marks this run's claims, so that it can give them back
        keeper = asyncio.create_task(keep_claims(work, token, url))  # leases outlive slow batches
        lanes = Lanes.for_settings(work.settings)
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(work.settings.concurrency):
                    group.create_task(_lane(work, client, tally, token, url, throttle, lanes))
        except BaseException as exc:
            # stopped early (an error, Ctrl-C, a cancellation): give the claims back now
            await asyncio.shield(release_rows(work, token, stop_reason(exc)))
            if isinstance(exc, BaseExceptionGroup):
                raise first_error(exc) from None
            raise
        finally:
            keeper.cancel()


async def _lane(
    work: Work,
    client: EmbeddingsClient,
    tally: Tally,
    token: uuid.UUID,
    url: str,
    throttle: Throttle,
    lanes: Lanes,
) -> None:
    """One batch task after another (claim -> embed -> store) until the queue is drained
    (or the run's budget spent).

    The queue is drained once any lane's claim comes back short (``Lanes.drained``): no
    free row was left to claim then, so every lane stops after its current batch instead
    of each paying for one more task run that would claim nothing. Rows queued after that
    (written during the run, or edited while in flight) are left for the next run, and
    counted in its summary as pending.

    Arguments are ``quote()``d: Prefect would otherwise walk every item of every batch to
    look for futures, which cost about half the wall time (bench/bench_throughput.py).
    """
    price = price_per_million(work.version.model, work.settings)
    logger = run_logger()
    db = LaneConnection(url)
    try:
        while not lanes.drained.is_set() and (limit := tally.take(rows_per_task(work.settings))) > 0:
            attempts = Attempts(work)
            started = time.monotonic()
            filled = await batch_task(attempts)(
                quote(attempts), limit, token, quote(db), quote(client), quote(throttle), quote(lanes)
            )
            tally.give_back(limit - filled.claimed)
            work = attempts.work  # typed by the first store, when the job's dims were not known
            tally.add(filled, price)
            if filled.claimed:  # one line per batch (>= 4,096 rows): counts only, never a text or a URL
                logger.info(
                    "%s: batch of %s rows: %s embedded, %s unchanged, %s deleted, %s failed, %s stale; "
                    "%s tokens in %s requests; %.2f s, %s retries",
                    work.label,
                    f"{filled.claimed:,}",
                    f"{filled.written:,}",
                    f"{filled.unchanged:,}",
                    f"{filled.deleted:,}",
                    f"{filled.failed:,}",
                    f"{filled.stale:,}",
                    f"{filled.tokens:,}",
                    f"{filled.requests:,}",
                    time.monotonic() - started,
                    sum(attempts.failures.values()),
                )
    finally:
        await db.aclose()
