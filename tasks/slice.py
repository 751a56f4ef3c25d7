"""The slice task: one Prefect task run per slice of the queue (claim -> embed -> store).

Prefect records one task run per slice of a backfill: its states, retries and duration are
the run's history. The body is the engine's (:func:`vectorfill.engine.slice.fill_slice`),
with its retry policy (:class:`~vectorfill.engine.slice.Attempts`): Prefect retries the
task at once, the body having waited out the stage's backoff, and a retry resumes at the
stage that failed. :func:`as_task_run` is the engine's slice runner for a backfill
(:data:`BACKFILL`); sync runs the same body without a task run
(:data:`vectorfill.engine.fill.FOLLOW`).

Arguments are ``quote()``d: Prefect would otherwise walk every item of every slice to look
for futures, which cost about half the wall time (bench/bench_throughput.py).
"""

from __future__ import annotations

import uuid

from prefect import task
from prefect.utilities.annotations import quote

from vectorfill.engine import slice as body
from vectorfill.engine.fill import DRAIN
from vectorfill.engine.slice import Attempts, Filled, Lanes
from vectorfill.provider.client import EmbeddingsClient
from vectorfill.provider.ratelimit import Throttle
from vectorfill.storage.db import LaneConnection

from .common import TASK_OPTIONS

__all__ = ["BACKFILL", "as_task_run", "fill_slice", "slice_task"]


@task(name="slice", **TASK_OPTIONS)
async def fill_slice(
    attempts: Attempts,
    limit: int,
    token: uuid.UUID,
    db: LaneConnection,
    client: EmbeddingsClient,
    throttle: Throttle,
    lanes: Lanes,
) -> Filled:
    """Lease up to ``limit`` queued rows for the run ``token``, embed and store them
    (:func:`vectorfill.engine.slice.fill_slice`). Call it through :func:`slice_task`, which
    sets the retries and the retry condition."""
    return await body.fill_slice(attempts, limit, token, db, client, throttle, lanes)


def slice_task(attempts: Attempts):
    """:func:`fill_slice` with the retries of ``attempts`` (one slice's record)."""
    return fill_slice.with_options(
        retries=attempts.total_retries, retry_delay_seconds=0, retry_condition_fn=attempts.retry_condition()
    )


async def as_task_run(
    attempts: Attempts,
    limit: int,
    token: uuid.UUID,
    db: LaneConnection,
    client: EmbeddingsClient,
    throttle: Throttle,
    lanes: Lanes,
) -> Filled:
    """One slice as one Prefect task run (a :class:`~vectorfill.engine.slice.SliceRunner`)."""
    return await slice_task(attempts)(
        quote(attempts), limit, token, quote(db), quote(client), quote(throttle), quote(lanes)
    )


#: A backfill's policy: drain the queue, one task run per slice.
BACKFILL = DRAIN.with_runner(as_task_run)
