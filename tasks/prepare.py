"""Stage 0: load the job, check that its source and key are usable, list the work."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from prefect import task

from vectorfill.config import read_api_key
from vectorfill.errors import SourceError
from vectorfill.jobs.registry import absorb, load_job
from vectorfill.storage import sql
from vectorfill.storage.db import connect, one_row

from .common import TASK_OPTIONS, Work, database_url

__all__ = ["Prepared", "prepare_run"]


@dataclass(frozen=True)
class Prepared:
    works: tuple[Work, ...]
    pending: int
    """Rows queued across those versions when the run started."""

    @property
    def filling(self) -> bool:
        """A new model's version is being filled (a re-embed): the run ends with the switch stage."""
        return any(w.version.state == "filling" for w in self.works)


@task(name="prepare", **TASK_OPTIONS, retries=2, retry_delay_seconds=[2, 10])
async def prepare_run(job_name: str) -> Prepared:
    """Load the job and list its versions to fill (an async task running its blocking
    queries in a thread: a sync task run from the flow costs ~50 ms more in Prefect)."""
    return await asyncio.to_thread(_prepare, job_name)


def _prepare(job_name: str) -> Prepared:
    with connect(database_url()) as conn:
        job = load_job(conn, job_name)
        if conn.execute(sql.LOOKUP_TABLE, {"schema": job.source_schema, "table": job.source_table}).fetchone() is None:
            raise SourceError(
                f"source table {job.source} no longer exists (renamed or dropped?). Restore it, or "
                f"`vectorfill job drop {job.name}` and create the job again on the new table",
                job=job.name,
            )
        works = tuple(Work(job, v) for v in job.versions if v.state in ("active", "filling"))
        absorb(conn, job)
        conn.commit()
        pending = 0
        for work in works:
            read_api_key(work.version.api_key_env, job=job.name)  # fail early if the key is missing
            js = sql.JobSQL(job, work.version)
            pending += one_row(conn.execute(js.counts(), {"job_id": job.id, "version": work.version.version}))[2]
    return Prepared(works=works, pending=pending)
