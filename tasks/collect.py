"""The collect task: store a job's finished Batch API batches, reconcile unfinished
submissions (:mod:`vectorfill.engine.collect`). Every backfill runs it first."""

from __future__ import annotations

from prefect import task

from vectorfill.engine import collect as stage
from vectorfill.engine.collect import Collected, batch_counts

from .common import TASK_OPTIONS

__all__ = ["Collected", "batch_counts", "collect_batches"]


@task(name="collect", **TASK_OPTIONS)
async def collect_batches(job_name: str) -> Collected:
    """Collect every finished batch of ``job_name`` (:func:`vectorfill.engine.collect.collect_batches`)."""
    return await stage.collect_batches(job_name)
