"""The submit task: a job's pending rows sent to the provider's Batch API, leased for the
batches' life (:mod:`vectorfill.engine.submit`)."""

from __future__ import annotations

from prefect import task

from vectorfill.engine import submit as stage
from vectorfill.engine.prepare import Prepared
from vectorfill.engine.submit import BATCH_LEASE_S, Submitted, batch_lock, batch_mode, submit_version

from .common import TASK_OPTIONS

__all__ = ["BATCH_LEASE_S", "Submitted", "batch_lock", "batch_mode", "submit_batches", "submit_version"]


@task(name="submit", **TASK_OPTIONS)
async def submit_batches(prepared: Prepared, max_rows: int | None = None) -> Submitted:
    """Submit the pending rows of every version to fill (:func:`vectorfill.engine.submit.submit_batches`)."""
    return await stage.submit_batches(prepared, max_rows)
