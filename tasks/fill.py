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
import dataclasses
import time
import uuid
from dataclasses import dataclass, field

from prefect.utilities.annotations import quote

from vectorfill.errors import first_error, stop_reason, stops_run
from vectorfill.provider.budgets import endpoint_key
from vectorfill.provider.client import EmbeddingsClient
from vectorfill.provider.negotiate import load_caps, negotiator_for
from vectorfill.provider.prices import price_per_million
from vectorfill.provider.ratelimit import Throttle
from vectorfill.provider.throttles import Throttles
from vectorfill.storage import sql
from vectorfill.storage.db import LaneConnection, aconnect

from .batch import Attempts, Filled, Lanes, batch_task, rows_per_task
from .claim import keep_claims, release_rows
from .common import Work, database_url, run_logger
from .prepare import Prepared
from .switch import switch_versions

__all__ = ["CATCH_UP_PASSES", "LIVE_TALLIES", "Tally", "catch_up", "fill_versions", "switch_caught_up"]


def _zero_totals() -> dict:
    return dict(
        embedded=0,
        unchanged=0,
        deleted=0,
        failed=0,
        truncated=0,
        stale=0,
        requests=0,
        tokens=0,
        tokens_estimated=0,
        cost_usd=0.0,
    )


#: The tallies of the runs of each job in this process (several with ``--workers``), in the
#: order they started: the CLI's progress bar reads them from its own thread between exact
#: counts (ints read whole: no lock needed). Only appended to.
LIVE_TALLIES: dict[str, list[Tally]] = {}


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
    def for_run(cls, prepared: Prepared, max_rows: int | None, job: str | None = None) -> Tally:
        """The run's tally; with ``job``, also added to :data:`LIVE_TALLIES`."""
        tally = cls(budget=max_rows, pending=min(prepared.pending, max_rows or prepared.pending))
        if job is not None:
            LIVE_TALLIES.setdefault(job, []).append(tally)
        return tally

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


async def catch_up(prepared: Prepared, tally: Tally, job: str) -> bool:
    """Fill the new model's version once more, after its switch was refused because it lacked
    rows that the active version has up to date (another run, ``serve --sync`` say, embedded
    them there meanwhile); True when it claimed any row (then the switch may be tried again)."""
    filling = tuple(w for w in prepared.works if w.version.state == "filling")
    done = tally.done
    await fill_versions(Prepared(works=filling, pending=0), tally, job)
    return tally.done > done


async def _fill_version(work: Work, tally: Tally, job: str, url: str, throttle: Throttle) -> None:
    async with EmbeddingsClient.for_version(work.version, job=job, settings=work.settings) as client:
        # what the endpoint was found to accept (by any run): caps, the encoding
        endpoint = endpoint_key(work.version.base_url, work.version.model)
        client.negotiator = negotiator_for(client, url, endpoint, await load_caps(url, endpoint))
        work = _negotiated(work, client)
        try:
            await _fill_lanes(work, tally, job, url, throttle, client)
        finally:
            tally.totals["tokens_estimated"] += client.tokens_estimated
            tally.totals["requests"] += client.negotiator.probes  # the one-input probes sent, if any


def _negotiated(work: Work, client: EmbeddingsClient) -> Work:
    """``work`` with the endpoint's learnt caps in its settings (what claims pack to)."""
    settings = client.negotiator.apply(work.settings)
    if settings is work.settings:
        return work
    return Work(dataclasses.replace(work.job, settings=settings), work.version)


async def _fill_lanes(
    work: Work, tally: Tally, job: str, url: str, throttle: Throttle, client: EmbeddingsClient
) -> None:
    token = uuid.uuid4()  # marks this run's claims, so that it can give them back
    keeper = asyncio.create_task(keep_claims(work, token, url))  # leases outlive slow batches
    lanes = Lanes.for_settings(work.settings)
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(work.settings.concurrency):
                group.create_task(_lane(work, client, tally, token, url, throttle, lanes))
    except BaseException as exc:
        # stopped early (an error, Ctrl-C, a cancellation): give the claims back now
        cause = first_error(exc) if isinstance(exc, BaseExceptionGroup) else exc
        if stops_run(cause):  # a setting's fault, not the rows': their attempt is not counted
            await asyncio.shield(_refund_attempts(work, token))
        await asyncio.shield(release_rows(work, token, stop_reason(exc)))
        if isinstance(exc, BaseExceptionGroup):
            raise first_error(exc) from None
        raise
    finally:
        keeper.cancel()


async def _refund_attempts(work: Work, token: uuid.UUID) -> None:
    async with aconnect(database_url()) as conn:
        await conn.execute(sql.refund_attempts(sql.JobSQL(work.job, work.version)), (token,))


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
            work = _negotiated(attempts.work, client)  # typed by the first store; caps learnt meanwhile
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


#: Passes over the new version after a refused switch, each while the last one found rows.
CATCH_UP_PASSES = 5


async def switch_caught_up(prepared: Prepared, tally: Tally, job: str) -> int | None:
    """The switch of a re-embed: to the new model's version once it lacks nothing the active
    one has up to date. Refused because another run (``serve --sync``, say) made rows fresh
    in the active version meanwhile, the new version is filled again (:func:`catch_up`) and
    the switch tried again, up to :data:`CATCH_UP_PASSES` times. The version switched to,
    or None."""
    switched = await switch_versions(job)
    for _ in range(CATCH_UP_PASSES):
        if switched is not None or not await catch_up(prepared, tally, job):
            break
        switched = await switch_versions(job)
    return switched
