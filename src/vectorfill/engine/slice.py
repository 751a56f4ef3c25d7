"""One slice of the queue: claim -> embed -> store, resumed at the stage that failed when retried.

:func:`fill_slice` is the body a backfill runs as one Prefect task run per slice (the task,
``tasks/slice.py``: its states, retries and duration are the run's history) and sync runs
as it is (:class:`~vectorfill.engine.fill.Policy`); the three stages inside it are the
plain functions of ``claim.py``, ``embed.py`` and ``store.py``. A slice is
:data:`MIN_SLICE_ROWS` rows, or one API request's worth (``max_inputs``) when that is more:
it sends its requests side by side, through the run's throttle (which holds the run to
``concurrency`` requests in flight), and stores each answer as it comes.

Few tasks, each of many rows, are what keep Prefect's own cost small beside the work: each
task run costs Prefect CPU in this process and in its server, on the same cores as the
HTTP parsing and the COPY, so a task per request of a server that takes few inputs (TEI's
32) would cost more than the work (``bench/bench_throughput.py``; figures in bench/README.md).

A retry of the task **resumes** it at the stage that failed, because :class:`Attempts`,
the slice's record of what it has done, is kept across Prefect's retries of the task:

- a store that fails (Postgres restarted, say) is retried with the vectors already in
  hand: the texts are **not sent (and paid for) again**;
- a request that fails is retried without claiming again (the rows stay leased to the run),
  and of a slice's requests only those that failed are sent again;
- each stage keeps its own budget of retries and its own backoff (:data:`STAGE_RETRIES`,
  :data:`STAGE_DELAYS`; the request's is the job's ``retries``, exponential, and at least
  the provider's ``Retry-After``), and only errors marked transient are retried.

The body waits out the backoff itself before it fails the attempt, so it is retried at
once (by Prefect, or by :func:`run_slice`): one retry policy, :meth:`Attempts.may_retry`
and :meth:`Attempts.delay`, whatever runs it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import uuid
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from prefect.utilities.math import clamped_poisson_interval

from vectorfill.errors import is_transient, stops_run
from vectorfill.provider.client import EmbeddingsClient
from vectorfill.provider.prices import price_per_million
from vectorfill.provider.ratelimit import Throttle
from vectorfill.storage.db import LaneConnection

from .claim import Claim, Request, claim_rows
from .counts import Counts
from .embed import Embedded, embed_request
from .reuse import fill_in
from .spend import SpendCap
from .store import Stored, store_vectors
from .work import Work

__all__ = [
    "MIN_SLICE_ROWS",
    "STAGE_DELAYS",
    "STAGE_RETRIES",
    "Attempts",
    "Filled",
    "Lanes",
    "SliceRunner",
    "fill_slice",
    "rows_per_slice",
    "run_slice",
]

#: The fewest rows one slice claims (when ``max_inputs`` is smaller, the task sends
#: several requests), so that Prefect's fixed cost per task run stays small beside the work.
MIN_SLICE_ROWS = 4096
#: At most this many seconds of the job's request budget (``rpm``) in one slice task: a
#: rate-limited run then does not hold thousands of rows it can send only minutes later,
#: while the other runs of a ``--workers`` fan-out find nothing free to claim and stop.
SLICE_BUDGET_S = 10.0

#: Retries of the database stages (the request's are the job's ``retries``).
STAGE_RETRIES = {"claim": 3, "store": 3}
#: Seconds before retry n (the last repeats): long enough to ride out a Postgres restart.
STAGE_DELAYS = {"claim": (1.0, 5.0, 15.0), "store": (1.0, 5.0, 15.0)}
#: The request's backoff: 2, 4, 8, 16 ... seconds, at least the provider's Retry-After.
EMBED_BACKOFF_S = 2.0
MAX_DELAY_S = 120.0
JITTER = 0.5


@dataclass
class Attempts:
    """What one slice has done so far, kept across Prefect's retries of its task.

    ``stage`` is the stage running (or that failed last); ``failures`` counts each stage's
    failed attempts. The vectors of the slice (``embedded``) are kept until the store
    succeeds, so a retry of the store never sends the texts again.
    """

    work: Work
    claim: Claim | None = None
    embedded: dict[int, Embedded] = field(default_factory=dict)
    """The vectors of the claim's requests (by index in ``claim.requests``), until stored."""
    stored: list[Stored] = field(default_factory=list)
    sent: set[int] = field(default_factory=set)
    """Requests of the claim embedded (and then stored) already."""
    stage: str = "claim"
    failures: Counter = field(default_factory=Counter)
    known: dict[bytes, np.ndarray] = field(default_factory=dict)
    """Vectors by input hash, for the inputs the claim copies (:mod:`.reuse`): those found
    stored, then those its requests are answered with."""
    refused: dict[bytes, tuple[int | None, str]] = field(default_factory=dict)
    """Inputs the provider refused (status, message), by hash: their copies fail alike."""
    texts: dict[bytes, str] = field(default_factory=dict)
    """The text each known vector was made from (an input cut to the model's limit before
    it was sent differs from the planned one), by hash: a copy stores it."""

    def answered(self, embedded: Embedded) -> None:
        """Note an answer's vectors and refusals, for the inputs that copy them."""
        if not self.claim or not self.claim.reused:
            return
        self.known.update(zip((i.input_hash for i in embedded.items), embedded.vectors, strict=True))
        self.texts.update((i.input_hash, i.text) for i in embedded.items)
        self.refused.update((i.input_hash, (status, message)) for i, status, message in embedded.rejected)

    @property
    def requests(self) -> tuple[Request, ...]:
        """The claim's requests; only the stages after the claim ask for them."""
        if self.claim is None:
            raise RuntimeError("the slice's rows are not claimed yet")
        return self.claim.requests

    @property
    def retries(self) -> dict[str, int]:
        return {**STAGE_RETRIES, "embed": self.work.settings.retries}

    @property
    def total_retries(self) -> int:
        """The most retries the task may need (each stage's budget, spent in any order)."""
        return sum(self.retries.values())

    def failed(self, exc: BaseException) -> bool:
        """Count a failed attempt of the current stage; True when it may be retried."""
        self.failures[self.stage] += 1
        return self.may_retry(exc)

    def may_retry(self, exc: BaseException) -> bool:
        return is_transient(exc) and self.failures[self.stage] <= self.retries[self.stage]

    def delay(self, exc: BaseException, throttle: Throttle | None = None) -> float:
        """Seconds to wait before retry ``failures[stage]`` of the current stage, jittered."""
        n = self.failures[self.stage]
        if self.stage == "embed":
            base = EMBED_BACKOFF_S * 2 ** (n - 1)
            retry_after = getattr(exc, "retry_after", None)
            # a 429 through the throttle paused every lane already (and was retried there)
            if retry_after and not (throttle is not None and getattr(exc, "status", None) == 429):
                base = max(base, retry_after)
        else:
            delays = STAGE_DELAYS[self.stage]
            base = delays[min(n - 1, len(delays) - 1)]
        return min(MAX_DELAY_S, clamped_poisson_interval(base, clamping_factor=JITTER))

    def retry_condition(self):
        """A Prefect ``retry_condition_fn`` for this slice's task (a plain function: Prefect
        calls functions, not bound methods)."""

        def may_retry(task, task_run, state) -> bool:
            exc = state.data
            return isinstance(exc, BaseException) and self.may_retry(exc)

        return may_retry


@dataclass
class Lanes:
    """What the lanes filling one job version share.

    ``unstored`` holds the requests sent and not yet stored to ``concurrency`` for the whole
    run, whatever the number of lanes and of requests per slice: a crash loses no more paid
    answers than that, and memory stays bounded (an answer of 1,024 x 1,536 floats is ~14 MB
    in flight). ``drained`` is set once a claim comes back short: no free row was left
    then, and the lanes stop (see :class:`~vectorfill.engine.fill.Policy`).
    """

    unstored: asyncio.Semaphore
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    claiming: asyncio.Lock = field(default_factory=asyncio.Lock)
    spend: SpendCap | None = None
    """The run's daily spend caps, charged before each request (:mod:`.spend`)."""
    """One claim at a time: a claim never takes part of the rows another lane's claim is
    taking (``SKIP LOCKED`` would hand the remainder to it), so each lane's slices are
    full but the last, and a lane that finds the queue drained does not claim at all."""

    @classmethod
    def for_settings(cls, settings, spend: SpendCap | None = None) -> Lanes:
        return cls(asyncio.Semaphore(settings.concurrency), spend=spend)


@dataclass(frozen=True)
class Filled:
    """What one slice did: the rows it claimed, and the claim's and its stores' counts."""

    claimed: int = 0
    counts: Counts = field(default_factory=Counts)

    @classmethod
    def of(cls, work: Work, claim: Claim, stored: list[Stored]) -> Filled:
        tokens = sum(s.tokens for s in stored)
        return cls(
            claimed=claim.claimed,
            counts=Counts(
                embedded=sum(s.written for s in stored),
                unchanged=claim.unchanged,
                deleted=claim.deleted,
                failed=claim.failed + sum(s.failed for s in stored),
                truncated=claim.truncated + sum(s.truncated for s in stored),
                stale=sum(s.stale for s in stored),
                requests=sum(s.requests for s in stored),
                sent=sum(len(r.sent) for r in claim.requests),
                reused=claim.reused,
                derived=claim.derived,
                derived_from=claim.found.derived_from if claim.derived else None,
            ).billed(tokens, price_per_million(work.version.model, work.settings)),
        )


class SliceRunner(Protocol):
    """How a run runs one slice: :func:`run_slice` (in the caller's task), or as a Prefect
    task run (``vectorfill.tasks.slice.as_task_run``)."""

    def __call__(
        self,
        attempts: Attempts,
        limit: int,
        token: uuid.UUID,
        db: LaneConnection,
        client: EmbeddingsClient,
        throttle: Throttle,
        lanes: Lanes,
    ) -> Awaitable[Filled]: ...


async def fill_slice(
    attempts: Attempts,
    limit: int,
    token: uuid.UUID,
    db: LaneConnection,
    client: EmbeddingsClient,
    throttle: Throttle,
    lanes: Lanes,
) -> Filled:
    """Lease up to ``limit`` queued rows for the run ``token``, embed them (their
    packed requests side by side, through ``throttle``) and store their vectors; resumes at
    the stage that failed when run again with the same ``attempts`` (see the module
    docstring). A failed attempt is counted and its backoff waited out before it raises."""
    try:
        if attempts.claim is None:
            attempts.stage = "claim"
            async with lanes.claiming:
                if lanes.drained.is_set():
                    attempts.claim = Claim(requests=())
                else:
                    attempts.claim = await claim_rows(attempts.work, limit, token, db)
                    if attempts.claim.claimed < limit and not attempts.claim.given_back:
                        lanes.drained.set()
            attempts.known.update(attempts.claim.found.vectors)
            attempts.texts.update(attempts.claim.found.texts)
        await _embed_and_store(attempts, client, throttle, db, lanes.unstored, lanes.spend)
    except Exception as exc:
        if attempts.failed(exc):
            await asyncio.sleep(attempts.delay(exc, throttle))
        raise
    return Filled.of(attempts.work, attempts.claim, attempts.stored)


async def run_slice(
    attempts: Attempts,
    limit: int,
    token: uuid.UUID,
    db: LaneConnection,
    client: EmbeddingsClient,
    throttle: Throttle,
    lanes: Lanes,
) -> Filled:
    """:func:`fill_slice` retried here as Prefect retries the slice task (same condition,
    same backoff, waited out by the body), without a task run."""
    while True:
        try:
            return await fill_slice(attempts, limit, token, db, client, throttle, lanes)
        except Exception as exc:
            if not attempts.may_retry(exc):
                raise


async def _embed_and_store(
    attempts: Attempts,
    client: EmbeddingsClient,
    throttle,
    db: LaneConnection,
    unstored: asyncio.Semaphore,
    spend: SpendCap | None = None,
) -> None:
    """Send the claim's requests not answered yet side by side, and store each answer as it
    comes (one transaction each); vectors left from an earlier attempt are stored first.

    ``unstored`` (:class:`Lanes`) holds the run's requests sent and not yet stored to
    ``concurrency``, so a crash loses no more paid answers than that. When something
    fails, the rest goes on (answers are paid for: they are stored if the store still
    works, else kept for the retry), then the worst error is raised (:func:`_severity`)
    with ``attempts.stage`` set to its stage. After an error that stops the run (a wrong
    key, say, or a spend cap reached: ``spend`` is charged before each request), requests
    not sent yet are not sent.
    """
    errors: list[tuple[str, BaseException]] = []
    storing = asyncio.Lock()  # one transaction at a time on the lane's connection

    async def store(i: int) -> None:
        async with storing:
            if any(stage == "store" for stage, _ in errors):
                return  # the store is failing: keep the vectors for the retry
            try:
                await _store(attempts, i, client, db)
            except Exception as exc:
                errors.append(("store", exc))

    async def request(i: int) -> None:
        async with unstored:
            if any(stops_run(e) for _, e in errors):
                return
            try:
                req = attempts.requests[i]
                charge = None
                if spend is not None and req.sent:
                    charge = await spend.charge(spend.tokens(attempts.work.version.model, req.sent))
                answer: Embedded | None = None
                try:
                    answer = await embed_request(attempts.work, client, req, throttle)
                finally:  # corrected to the tokens billed (none when the request failed)
                    if charge is not None and spend is not None:
                        await spend.billed(charge, answer.tokens if answer is not None else 0)
                attempts.embedded[i] = answer
            except Exception as exc:
                errors.append(("embed", exc))
                return
            attempts.sent.add(i)
            attempts.answered(answer)
            await store(i)
            if attempts.claim is not None and attempts.claim.reused:
                for j in sorted(attempts.embedded):  # requests that waited for an input this one sent
                    if j in attempts.embedded:
                        await store(j)

    for i in sorted(attempts.embedded):
        if i in attempts.embedded:
            await store(i)
    await asyncio.gather(*(request(i) for i in range(len(attempts.requests)) if i not in attempts.sent))
    if errors:
        attempts.stage, exc = min(errors, key=lambda e: _severity(e[1]))
        raise exc


def _group(requests, i: int) -> range:
    """The requests stored together with request ``i``: those a row too big for one request
    spans (:attr:`vectorfill.engine.claim.Request.continues`), so its chunks are replaced at once."""
    first = i
    while first > 0 and requests[first - 1].continues:
        first -= 1
    last = i
    while requests[last].continues and last + 1 < len(requests):
        last += 1
    return range(first, last + 1)


def _merged(parts: list[Embedded]) -> Embedded:
    with_vectors = [e.vectors for e in parts if len(e.items)]
    return Embedded(
        tuple(i for e in parts for i in e.items),
        np.vstack(with_vectors) if with_vectors else np.zeros((0, 0), np.float32),
        next((e.model for e in parts if len(e.items)), parts[0].model),
        sum(e.tokens for e in parts),
        sum(e.requests for e in parts),
        tuple(r for e in parts for r in e.rejected),
        sum(e.truncated for e in parts),
    )


async def _store(attempts: Attempts, i: int, client: EmbeddingsClient, db: LaneConnection) -> None:
    """Store request ``i``'s vectors (with those of the requests of its group, once all are
    answered); the first store of a version types its vector column."""
    requests = attempts.requests
    group = _group(requests, i)
    if any(j not in attempts.embedded for j in group):
        return  # the rest of a row's chunks are still in flight: the last answer stores them all
    parts = []
    for j in group:
        part = _with_copies(attempts, requests[j], attempts.embedded[j])
        if part is None:
            return  # an input it copies is still in flight: its answer stores this one
        parts.append(part)
    rows = tuple({p.key: p for j in group for p in requests[j].rows}.values())
    stored = await store_vectors(attempts.work, parts[0] if len(parts) == 1 else _merged(parts), db, rows)
    for j in group:
        del attempts.embedded[j]
    attempts.stored.append(stored)
    work = attempts.work
    if work.version.vector_dims is None and stored.vector_dims:
        # the first store typed the vector column: later requests must match it
        attempts.work = Work(work.job, dataclasses.replace(work.version, vector_dims=stored.vector_dims))
        client.expected_dims = stored.vector_dims


def _with_copies(attempts: Attempts, request: Request, answer: Embedded) -> Embedded | None:
    """``answer`` with the vectors of the inputs ``request`` copies (:func:`.reuse.fill_in`);
    None while one of them is not answered yet."""
    filled = fill_in(request.items, answer.items, answer.vectors, attempts.known, attempts.refused, attempts.texts)
    if filled is None:
        return None
    items, vectors, refused = filled
    if len(items) == len(answer.items) and not refused:
        return answer
    found = attempts.claim.found.model if attempts.claim is not None else None
    return dataclasses.replace(
        answer,
        items=tuple(items),
        vectors=vectors,
        model=answer.model if len(answer.items) else (found or answer.model),
        rejected=answer.rejected + tuple((i, status, message) for i, (status, message) in refused),
    )


def rows_per_slice(settings) -> int:
    """Rows one slice claims: :data:`MIN_SLICE_ROWS`, or fewer when ``rpm`` allows fewer
    requests' worth in :data:`SLICE_BUDGET_S`; always at least a request's worth."""
    rows = MIN_SLICE_ROWS
    if settings.rpm:
        rows = min(rows, math.ceil(settings.rpm / 60 * SLICE_BUDGET_S) * settings.max_inputs)
    return max(settings.max_inputs, rows)


def _severity(exc: BaseException) -> int:
    """Which of several errors a slice raises first (lowest): an error that stops the run,
    a terminal error, a transient one (only then is the slice retried)."""
    if stops_run(exc):
        return 0
    return 2 if is_transient(exc) else 1
