"""Stage 0, the task: load the job, check that its source and key are usable, list the work
(:func:`vectorfill.engine.prepare.prepare`)."""

from __future__ import annotations

import asyncio

from prefect import task

from vectorfill.engine.prepare import Prepared, prepare

from .common import TASK_OPTIONS

__all__ = ["Prepared", "prepare_run"]


@task(name="prepare", **TASK_OPTIONS, retries=2, retry_delay_seconds=[2, 10])
async def prepare_run(job_name: str) -> Prepared:
    """Load the job and list its versions to fill (an async task running its blocking
    queries in a thread: a sync task run from the flow costs ~50 ms more in Prefect)."""
    return await asyncio.to_thread(prepare, job_name)
