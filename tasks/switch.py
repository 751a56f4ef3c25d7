"""Stage 4: switch a job to its new model's version once that version is complete.

A run that fills a new version (after ``vectorfill job set-model``) ends here: when no row
of it is left queued or failed, one transaction retires the old version and points the
job's view at the new one (:func:`vectorfill.jobs.versions.switch`), and the event
``vectorfill.version.switched`` tells Prefect (automations, the UI) that it happened.
"""

from __future__ import annotations

import asyncio
import logging

from prefect import task
from prefect.events import emit_event

from vectorfill.errors import JobError
from vectorfill.events import VERSION_SWITCHED, job_resource
from vectorfill.jobs.registry import load_job
from vectorfill.jobs.search import check_indexable, create_index, has_index
from vectorfill.jobs.versions import complete, switch
from vectorfill.records import Version
from vectorfill.storage.db import connect

from .common import TASK_OPTIONS, database_url

__all__ = ["switch_versions"]


@task(name="switch", **TASK_OPTIONS, retries=2, retry_delay_seconds=[2, 10])
async def switch_versions(job_name: str) -> int | None:
    """The version switched to, or None when there was nothing (complete) to switch to.

    When the active version has an HNSW index, the new one gets its own first (built
    without blocking writes, before the switch), so searches stay fast across it. (An
    async task running its blocking work in a thread, as ``prepare`` does.)"""
    version = await asyncio.to_thread(_switch, job_name)
    if version is None:
        return None
    emit_event(
        event=VERSION_SWITCHED,
        resource=job_resource(job_name),
        payload={"job": job_name, "version": version.version, "model": version.model},
    )
    return version.version


def _switch(job_name: str) -> Version | None:
    """Switch ``job_name`` to its complete new version, if it has one; returns that version."""
    url = database_url()
    with connect(url) as conn:
        job = load_job(conn, job_name)
        new = complete(conn, job)
        carry = new is not None and job.active is not None and has_index(conn, job, job.active)
    if new is None:
        return None
    if carry and new.vector_dims:
        try:
            check_indexable(job_name, new)
        except JobError as exc:  # its size was learnt from the first answer: switch, unindexed, and say so
            logging.getLogger("vectorfill").warning("the new version gets no HNSW index: %s", exc)
        else:
            create_index(url, job_name, new.version)
    try:
        with connect(url) as conn:
            version = switch(conn, job_name)  # checks again, under its locks
    except JobError:  # a row was written meanwhile: the next run finishes it
        return None
    return version
