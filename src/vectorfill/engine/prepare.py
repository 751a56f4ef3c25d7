"""What a run fills: the job loaded, its source checked, its versions to fill listed."""

from __future__ import annotations

from dataclasses import dataclass

from vectorfill.config import read_api_key
from vectorfill.errors import SourceError
from vectorfill.jobs.registry import absorb, load_job
from vectorfill.storage import sql
from vectorfill.storage.db import connect, one_row

from .work import Work, database_url

__all__ = ["Prepared", "prepare"]


@dataclass(frozen=True)
class Prepared:
    works: tuple[Work, ...]
    pending: int
    """Rows queued across those versions when the run started."""

    @property
    def filling(self) -> bool:
        """A new model's version is being filled (a re-embed): the run ends with the switch stage."""
        return any(w.version.state == "filling" for w in self.works)


def prepare(job_name: str) -> Prepared:
    """Load the job, check its source and API keys, and list its versions to fill with the
    rows queued in them (blocking: the task runs it in a thread)."""
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
