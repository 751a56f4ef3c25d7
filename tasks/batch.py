"""The batch task: one Prefect task per API batch, running claim -> embed -> store.

Prefect records one task run per batch (its states, retries and duration are the run's
history); the three stages inside it are the plain functions of ``claim.py``, ``embed.py``
and ``store.py``. One task instead of three per batch is what keeps Prefect's own cost
small beside the work: each task run costs ~5 ms of engine time in this process and as
much again in Prefect's server, on the same cores as the HTTP parsing and the COPY
(``bench/bench_throughput.py`` measures the share).

A retry of the task **resumes** it at the stage that failed, because :class:`Attempts`,
the batch's record of what it has done, is kept across Prefect's retries of the task:

- a store that fails (Postgres restarted, say) is retried with the vectors already in
  hand: the texts are **not sent (and paid for) again**;
- a request that fails is retried without claiming again: the rows stay leased to the run;
- each stage keeps its own budget of retries and its own backoff (:data:`STAGE_RETRIES`,
  :data:`STAGE_DELAYS`; the request's is the job's ``retries``, exponential, and at least
  the provider's ``Retry-After``), and only errors marked transient are retried.

The task waits out the backoff itself before it fails the attempt, so Prefect retries it
at once (its own ``retry_delay_seconds`` would be one policy for every stage).
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections import Counter
from dataclasses import dataclass, field

from prefect import task
from prefect.utilities.math import clamped_poisson_interval

from vectorfill.client import EmbeddingsClient
from vectorfill.db import LaneConnection
from vectorfill.errors import is_transient
from vectorfill.ratelimit import Throttle

from .claim import Claim, claim_rows
from .common import TASK_OPTIONS, Work
from .embed import Embedded, embed_batch
from .store import Stored, store_batch

__all__ = ["Attempts", "Filled", "fill_batch", "batch_task", "STAGE_RETRIES", "STAGE_DELAYS"]

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
    """What one batch has done so far, kept across Prefect's retries of its task.

    ``stage`` is the stage running (or that failed last); ``failures`` counts each stage's
    failed attempts. The vectors of the batch being stored (``embedded``) are kept until
    the store succeeds, so a retry of the store never sends the texts again.
    """

    work: Work
    claim: Claim | None = None
    done: int = 0
    """Batches of the claim stored so far."""
    embedded: Embedded | None = None
    stored: list[Stored] = field(default_factory=list)
    stage: str = "claim"
    failures: Counter = field(default_factory=Counter)

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
        """A Prefect ``retry_condition_fn`` for this batch's task (a plain function: Prefect
        calls functions, not bound methods)."""

        def may_retry(task, task_run, state) -> bool:
            exc = state.data
            return isinstance(exc, BaseException) and self.may_retry(exc)

        return may_retry


@dataclass(frozen=True)
class Filled:
    """What one batch task did: the claim's counts and its stores' counts, summed."""

    claimed: int = 0
    unchanged: int = 0
    deleted: int = 0
    failed: int = 0
    truncated: int = 0
    written: int = 0
    stale: int = 0
    requests: int = 0
    tokens: int = 0
    vector_dims: int | None = None

    @classmethod
    def of(cls, claim: Claim, stored: list[Stored], vector_dims: int | None) -> Filled:
        return cls(
            claimed=claim.claimed,
            unchanged=claim.unchanged,
            deleted=claim.deleted,
            failed=claim.failed + sum(s.failed for s in stored),
            truncated=claim.truncated + sum(s.truncated for s in stored),
            written=sum(s.written for s in stored),
            stale=sum(s.stale for s in stored),
            requests=sum(s.requests for s in stored),
            tokens=sum(s.tokens for s in stored),
            vector_dims=vector_dims,
        )


@task(name="batch", **TASK_OPTIONS)
async def fill_batch(
    attempts: Attempts,
    limit: int,
    token: uuid.UUID,
    db: LaneConnection,
    client: EmbeddingsClient,
    throttle: Throttle | None = None,
) -> Filled:
    """Lease up to ``limit`` queued rows for the run ``token``, embed them (one request per
    packed batch, through ``throttle``) and store their vectors; resumes at the stage that
    failed when Prefect retries it (see the module docstring). Call it through
    :func:`batch_task`, which sets the retries and the retry condition."""
    try:
        if attempts.claim is None:
            attempts.stage = "claim"
            attempts.claim = await claim_rows(attempts.work, limit, token, db)
        batches = attempts.claim.batches
        while attempts.done < len(batches):
            batch = batches[attempts.done]
            if attempts.embedded is None:
                attempts.stage = "embed"
                attempts.embedded = await embed_batch(attempts.work, client, batch, throttle)
            attempts.stage = "store"
            stored = await store_batch(attempts.work, batch, attempts.embedded, db)
            attempts.stored.append(stored)
            attempts.embedded, attempts.done = None, attempts.done + 1
            work = attempts.work
            if work.version.vector_dims is None and stored.vector_dims:
                # the first store typed the vector column: later batches must match it
                attempts.work = Work(work.job, dataclasses.replace(work.version, vector_dims=stored.vector_dims))
                client.expected_dims = stored.vector_dims
    except Exception as exc:
        if attempts.failed(exc):
            await asyncio.sleep(attempts.delay(exc, throttle))
        raise
    return Filled.of(attempts.claim, attempts.stored, attempts.work.version.vector_dims)


def batch_task(attempts: Attempts):
    """:func:`fill_batch` with the retries of ``attempts`` (one batch's record)."""
    return fill_batch.with_options(
        retries=attempts.total_retries, retry_delay_seconds=0, retry_condition_fn=attempts.retry_condition()
    )
