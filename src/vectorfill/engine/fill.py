"""The run engine: one job version filled by one run, in ``concurrency`` lanes of slices.

Every caller fills a version through :class:`Filler`: a backfill (:func:`fill_versions`,
each flow run of ``--workers``/``--pool``, the re-embed's :func:`catch_up`) and sync
(``follow.py``, cycle after cycle of one window). What tells them apart is a
:class:`Policy` and a row :class:`Budget`:

* :data:`DRAIN` (a backfill): every lane stops at the first short claim: no free row was
  left then, so each lane stops after its current slice instead of each paying for one more
  slice that would claim nothing. Rows queued after that are the next run's.
* ``FOLLOW`` (sync, ``follow.py``): the lanes go on claiming what keeps arriving for
  ``pipeline_s``, claims ``claim_gap_s`` apart, and a slice whose retries are spent on a
  transient error keeps its claims and is tried again after ``outage_backoff_s``.

Both use one retry policy (:class:`~vectorfill.engine.slice.Attempts`); the policy's
``runner`` says whether a slice is one Prefect task run (a backfill's history:
``vectorfill.tasks.slice.as_task_run``) or runs in the lane (:func:`run_slice`).

A :class:`Filler` holds what a version's fill needs for its whole life: the client, with
the endpoint's learnt caps and negotiation (loaded when opened, saved as learnt, and
re-applied to the claims after each slice), the run's throttle for the endpoint (the
shared budget), one connection per lane, the claims token and the keeper that renews its
leases. Closed after an error, Ctrl-C or a cancellation, it gives the claims back at once
(and the rows' attempts, when the error was a setting's fault). Its counts go to the run's
:class:`Tally` (which the progress bar reads, :data:`LIVE_TALLIES`). No transaction is
held and no secret passes through here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from dataclasses import dataclass, field

from prefect.utilities.math import clamped_poisson_interval

from vectorfill.errors import first_error, is_transient, stop_reason, stops_run
from vectorfill.provider.budgets import endpoint_key
from vectorfill.provider.client import EmbeddingsClient
from vectorfill.provider.negotiate import Negotiator
from vectorfill.provider.ratelimit import Throttle
from vectorfill.provider.throttles import Throttles
from vectorfill.provider.tokens import counter_for, max_input_tokens
from vectorfill.storage import sql
from vectorfill.storage.budgets import PostgresBudget
from vectorfill.storage.caps import load_caps, remembering
from vectorfill.storage.db import LaneConnection, aconnect

from .claim import keep_claims, release_rows
from .counts import Counts
from .prepare import Prepared
from .slice import Attempts, Filled, Lanes, SliceRunner, rows_per_slice, run_slice
from .spend import SpendCap
from .work import Work, database_url, run_logger

__all__ = [
    "DRAIN",
    "LIVE_TALLIES",
    "Budget",
    "Filler",
    "Policy",
    "Tally",
    "catch_up",
    "fill_versions",
    "run_throttles",
]


@dataclass(frozen=True)
class Policy:
    """How a :class:`Filler` fills: when its lanes stop, how a slice runs and is retried.

    The default is :data:`DRAIN`; ``follow.FOLLOW`` is sync's."""

    follow: bool = False
    """Lanes go on claiming rows that keep arriving (until a claim finds nothing, or comes
    back short after ``pipeline_s``); else all stop at the first short claim."""
    pipeline_s: float = 0.0
    claim_gap_s: float = 0.0
    """Seconds at least between two claims of the lanes, so that rows arriving meanwhile are
    taken in one."""
    outage_backoff_s: tuple[float, ...] = ()
    """After a slice's retries are spent on a transient error: seconds before it is tried
    again with its claims kept (the last repeats); empty: the error ends the fill."""
    log_slices: bool = True
    """One log line per slice (a backfill's); sync logs a line a minute instead."""
    runner: SliceRunner = run_slice
    """How one slice runs: in the lane (:func:`run_slice`) or as a Prefect task run."""

    def with_runner(self, runner: SliceRunner) -> Policy:
        return dataclasses.replace(self, runner=runner)


#: A backfill's policy: drain the queue, then stop.
DRAIN = Policy()


@dataclass
class Budget:
    """Rows a fill may still claim; None: no limit. Lanes take a slice's worth and give
    back what their claim did not find (so that another version or lane gets it)."""

    rows: int | None = None

    def take(self, want: int) -> int:
        if self.rows is None:
            return want
        n = min(want, self.rows)
        self.rows -= n
        return n

    def give_back(self, unused: int) -> None:
        if self.rows is not None:
            self.rows += unused


#: The tallies of the runs of each job in this process (several with ``--workers``), in the
#: order they started: the CLI's progress bar reads them from its own thread between exact
#: counts (one attribute read: no lock needed). Only appended to.
LIVE_TALLIES: dict[str, list[Tally]] = {}


@dataclass
class Tally:
    """A run's counts, shared by its lanes (asyncio: one thread, no locks needed)."""

    budget: Budget = field(default_factory=Budget)
    """Rows the run may still claim (``--max-rows``)."""
    pending: int = 0
    """Rows queued when the run started (capped by the budget): 100% of the progress bar."""
    done: int = 0
    """Rows claimed and settled."""
    counts: Counts = field(default_factory=Counts)

    @classmethod
    def for_run(cls, prepared: Prepared, max_rows: int | None, job: str | None = None) -> Tally:
        """The run's tally; with ``job``, also added to :data:`LIVE_TALLIES`."""
        tally = cls(Budget(max_rows), pending=min(prepared.pending, max_rows or prepared.pending))
        if job is not None:
            LIVE_TALLIES.setdefault(job, []).append(tally)
        return tally

    def add(self, filled: Filled) -> None:
        """Count one slice."""
        self.counts = self.counts + filled.counts
        self.done += filled.claimed

    @property
    def progress(self) -> float:
        """Percent of the rows queued at the start that have been claimed and settled."""
        return min(100.0, 100.0 * self.done / self.pending) if self.pending else 100.0


class Filler:
    """One job version filled by one run (see the module docstring): open it (or ``async
    with``), :meth:`fill` it once or cycle after cycle, close it."""

    def __init__(self, work: Work, job: str, url: str, throttle: Throttle, tally: Tally) -> None:
        self.work = work
        self.job = job
        self.url = url
        self.throttle = throttle
        self.tally = tally
        self.token = uuid.uuid4()  # marks this run's claims, so that it can give them back
        self.outages = 0
        """Times a slice waited out ``outage_backoff_s`` after spending its retries."""
        self._client: EmbeddingsClient | None = None
        self._client_cm: contextlib.AbstractAsyncContextManager[EmbeddingsClient] | None = None
        self._dbs: list[LaneConnection] = []
        self._keeper: asyncio.Task | None = None
        self.spend: SpendCap | None = None
        """The job's daily spend caps, charged before each request (None: no cap)."""

    @property
    def client(self) -> EmbeddingsClient:
        if self._client is None:
            raise RuntimeError(f"the filler of {self.work.label} is not open: call open() first")
        return self._client

    async def open(self) -> Filler:
        work = self.work
        self._client_cm = EmbeddingsClient.for_version(work.version, job=self.job, settings=work.settings)
        self._client = client = await self._client_cm.__aenter__()
        # what the endpoint was found to accept (by any run): caps, the encoding
        endpoint = endpoint_key(work.version.base_url, work.version.model)
        caps = await load_caps(self.url, endpoint)
        client.negotiator = Negotiator(client, caps=caps, remember=remembering(self.url, endpoint))
        if not counter_for(work.version.model).exact:
            # the model's tokenizer is not here: the server's own /tokenize (vLLM, TEI) counts exactly
            client.tokenizer = await client.find_tokenizer()
            if client.tokenizer is not None and client.tokenizer.max_model_len and not caps.max_input_tokens:
                await client.negotiator.announced(client.tokenizer.max_model_len, client.tokenizer.url)
        if not (
            client.negotiator.max_input_tokens or work.settings.max_input_tokens or max_input_tokens(work.version.model)
        ):
            # the model's limit is not known here: where the server announces it (vLLM, TEI), take it
            announced = await client.announced_input_limit()
            if announced is not None:
                await client.negotiator.announced(*announced)
        self.work = _negotiated(work, client)
        self._dbs = [LaneConnection(self.url) for _ in range(work.settings.concurrency)]
        self.spend = SpendCap.for_work(self.work, self.url)
        self._keeper = asyncio.create_task(keep_claims(work, self.token, self.url))  # leases outlive slow slices
        return self

    async def close(self, error: BaseException | None = None, reason: str | None = None) -> None:
        """Give back what the token still holds (after ``error``, or for ``reason``; nothing
        after clean fills: they settled every row they claimed), stop renewing, count what
        the client estimated and probed, close the connections and the client."""
        try:
            if error is not None:
                if stops_run(error):  # a setting's fault, not the rows': their attempt is not counted
                    await asyncio.shield(_refund_attempts(self.work, self.token, self.url))
                reason = stop_reason(error)
            if reason is not None:
                await asyncio.shield(release_rows(self.work, self.token, reason))
        finally:
            if self._keeper is not None:
                self._keeper.cancel()
            if self._client is not None:
                self.tally.counts = self.tally.counts + Counts(
                    tokens_estimated=self._client.tokens_estimated,
                    maybe_truncated=self._client.maybe_truncated,
                    requests=self._client.negotiator.probes,  # the one-input probes sent, if any
                )
                self._client = None
            for db in self._dbs:
                await db.aclose()
            self._dbs = []
            if self.spend is not None:
                await self.spend.aclose()
            if self._client_cm is not None:
                cm, self._client_cm = self._client_cm, None
                await cm.__aexit__(None, None, None)

    async def __aenter__(self) -> Filler:
        try:
            return await self.open()
        except BaseException:
            await self.close()
            raise

    async def __aexit__(self, exc_type, exc, tb) -> None:
        await self.close(exc)

    async def fill(self, policy: Policy, budget: Budget) -> tuple[int, bool]:
        """Fill the version in ``concurrency`` lanes as ``policy`` says, claiming at most
        ``budget`` rows; returns (rows claimed, whether the queue was drained). Raises the
        error that stopped a lane (the claims are given back by :meth:`close`)."""
        shared = Lanes.for_settings(self.work.settings, spend=self.spend)
        # drain: the first short claim (Lanes.drained, set by the slice) stops every lane;
        # follow: each slice has its own flag, and the lanes stop as the policy says
        done = asyncio.Event() if policy.follow else shared.drained
        deadline = time.monotonic() + policy.pipeline_s
        pace = _Pacing(policy.claim_gap_s) if policy.claim_gap_s > 0 else None
        claimed = 0
        logger = run_logger() if policy.log_slices else None

        async def lane(db: LaneConnection) -> None:
            nonlocal claimed
            while not done.is_set() and (limit := budget.take(rows_per_slice(self.work.settings))) > 0:
                if pace is not None:
                    await pace.wait()
                    if done.is_set():
                        budget.give_back(limit)
                        return
                attempts = Attempts(self.work)
                lanes = (
                    Lanes(shared.unstored, claiming=shared.claiming, spend=shared.spend) if policy.follow else shared
                )
                started = time.monotonic()
                filled = await self._slice(policy, attempts, limit, db, lanes)
                budget.give_back(limit - filled.claimed)
                self.work = _negotiated(attempts.work, self.client)  # typed by the first store; caps learnt meanwhile
                claimed += filled.claimed
                self.tally.add(filled)
                if logger is not None and filled.claimed:
                    _log_slice(logger, self.work, filled, time.monotonic() - started, attempts)
                if policy.follow and filled.claimed < limit and (filled.claimed == 0 or time.monotonic() >= deadline):
                    done.set()

        try:
            async with asyncio.TaskGroup() as group:
                for db in self._dbs:
                    group.create_task(lane(db))
        except BaseExceptionGroup as exc:
            raise first_error(exc) from None
        return claimed, done.is_set()

    async def _slice(self, policy: Policy, attempts: Attempts, limit: int, db: LaneConnection, lanes: Lanes) -> Filled:
        """One slice, run by the policy's runner (which retries it); once its retries are
        spent on an error that may pass, tried again after ``outage_backoff_s`` with its
        claims kept (renewed by the keeper, so nothing is paid twice), when the policy says so."""
        rounds = 0
        while True:
            try:
                return await policy.runner(attempts, limit, self.token, db, self.client, self.throttle, lanes)
            except Exception as exc:
                if not policy.outage_backoff_s or not is_transient(exc):
                    raise
                backoff = policy.outage_backoff_s
                delay = backoff[min(rounds, len(backoff) - 1)]
                rounds += 1
                self.outages += 1
                run_logger().warning(
                    "%s: %s failed after its retries (%s); claims kept, trying again in %.0f s",
                    self.work.label,
                    attempts.stage,
                    stop_reason(exc),
                    delay,
                )
                attempts.failures.clear()
                await asyncio.sleep(clamped_poisson_interval(delay, clamping_factor=0.3))


class _Pacing:
    """Claims at least ``gap_s`` apart, so that what arrives meanwhile is taken in one."""

    def __init__(self, gap_s: float) -> None:
        self.gap_s = gap_s
        self.lock = asyncio.Lock()
        self.last = 0.0

    async def wait(self) -> None:
        async with self.lock:
            wait = self.last + self.gap_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self.last = time.monotonic()


def _log_slice(logger, work: Work, filled: Filled, took_s: float, attempts: Attempts) -> None:
    """One line per slice (>= 4,096 rows): counts only, never a text or a URL."""
    c = filled.counts
    logger.info(
        "%s: slice of %s rows: %s embedded, %s unchanged, %s deleted, %s failed, %s stale; "
        "%s tokens in %s requests; %.2f s, %s retries",
        work.label,
        f"{filled.claimed:,}",
        f"{c.embedded:,}",
        f"{c.unchanged:,}",
        f"{c.deleted:,}",
        f"{c.failed:,}",
        f"{c.stale:,}",
        f"{c.tokens:,}",
        f"{c.requests:,}",
        took_s,
        sum(attempts.failures.values()),
    )


def _negotiated(work: Work, client: EmbeddingsClient) -> Work:
    """``work`` with the endpoint's learnt caps in its settings (what claims pack to)."""
    settings = client.negotiator.apply(work.settings)
    if settings is work.settings:
        return work
    return Work(dataclasses.replace(work.job, settings=settings), work.version)


def run_throttles(url: str, job: str) -> Throttles:
    """A run's throttles, whose budgets (with ``rpm``/``tpm``) are shared with every run on
    the endpoint through ``vectorfill.budgets`` in the database at ``url``."""
    return Throttles(job, shared_budget=lambda endpoint: PostgresBudget(url, endpoint, job=job))


async def _refund_attempts(work: Work, token: uuid.UUID, url: str) -> None:
    async with aconnect(url) as conn:
        await conn.execute(sql.refund_attempts(sql.JobSQL(work.job, work.version)), (token,))


async def fill_versions(prepared: Prepared, tally: Tally, job: str, policy: Policy = DRAIN) -> None:
    """Fill each version that has rows to embed, one version after another, as ``policy``
    says, within the tally's budget. On any error, Ctrl-C or cancellation the run's claims
    are given back at once (not left to expire) and the error that stopped the run is raised."""
    url = database_url()
    throttles = run_throttles(url, job)  # per endpoint, for this run only
    try:
        for work in prepared.works:
            async with Filler(work, job, url, throttles.for_version(work.version, work.settings), tally) as filler:
                await filler.fill(policy, tally.budget)
    finally:
        await throttles.aclose()


async def catch_up(prepared: Prepared, tally: Tally, job: str, policy: Policy = DRAIN) -> bool:
    """Fill the new model's version once more, after its switch was refused because it lacked
    rows that the active version has up to date (another run, ``serve --sync`` say, embedded
    them there meanwhile); True when it claimed any row (then the switch may be tried again)."""
    filling = tuple(w for w in prepared.works if w.version.state == "filling")
    done = tally.done
    await fill_versions(Prepared(works=filling, pending=0), tally, job, policy)
    return tally.done > done
