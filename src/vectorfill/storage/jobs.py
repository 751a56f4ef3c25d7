"""A job's records as its tables hold them, and the upgrade of old jobs' triggers.

Read here (not in :mod:`vectorfill.jobs.registry`, which adds the checks and messages of
the commands) because :func:`vectorfill.storage.db.migrate` upgrades every job's triggers,
and storage does not depend on the layers above it.
"""

from __future__ import annotations

from typing import Any

import psycopg

from vectorfill.config import ChunkSettings, JobSettings
from vectorfill.records import Job, Version
from vectorfill.storage import sql

__all__ = ["job_names", "read_job", "upgrade_triggers", "version_from_row"]


def job_names(conn: psycopg.Connection) -> list[str]:
    """Every job's name, sorted (the schema must be installed)."""
    return [r[0] for r in conn.execute(sql.JOB_NAMES)]


def read_job(conn: psycopg.Connection, name: str) -> Job | None:
    """The job named ``name`` with its versions, or None when there is none."""
    row = conn.execute(sql.JOB_ROWS, {"name": name}).fetchone()
    if row is None:
        return None
    job_id, name, schema, table, keys, types, text_cols, template, settings = row
    versions = tuple(version_from_row(r) for r in conn.execute(sql.VERSION_ROWS, {"job_id": job_id}))
    return Job(
        id=job_id,
        name=name,
        source_schema=schema,
        source_table=table,
        key_columns=tuple(keys),
        key_types=tuple(types),
        text_columns=tuple(text_cols),
        template=template,
        settings=JobSettings(**settings),
        versions=versions,
    )


def version_from_row(row: tuple[Any, ...]) -> Version:
    """A :data:`vectorfill.storage.sql.VERSION_ROWS` row; its columns named, not spread by
    position into the dataclass (whose later fields are the options')."""
    (
        job_id,
        version,
        model,
        base_url,
        api_key_env,
        dimensions,
        vector_dims,
        state,
        created_at,
        activated_at,
        options,
    ) = row
    options = options or {}
    return Version(
        job_id=job_id,
        version=version,
        model=model,
        base_url=base_url,
        api_key_env=api_key_env,
        dimensions=dimensions,
        vector_dims=vector_dims,
        state=state,
        created_at=created_at,
        activated_at=activated_at,
        storage=options.get("storage", "vector"),  # versions made before the option existed
        chunking=ChunkSettings(**options.get("chunking", {})),
    )


def upgrade_triggers(conn: psycopg.Connection) -> list[str]:
    """Re-install the triggers of every job whose trigger function predates this release's
    (:data:`vectorfill.storage.sql.TRIGGER_VERSION`, kept in the function's comment; none
    means the row-level triggers of version 1); returns the names of the jobs upgraded.
    Jobs made before the change log (version 3) get theirs, and its absorber, here.

    Run by :func:`vectorfill.storage.db.migrate`, in the caller's transaction: each job's
    row is locked and writes to its source table wait until the commit, so no write runs
    between the old triggers and the new ones. Jobs whose source table is gone are left
    alone (their backfill says so).
    """
    if conn.execute(sql.SCHEMA_INSTALLED).fetchone() in (None, (None,)):
        return []
    upgraded = []
    for name in job_names(conn):
        conn.execute(sql.LOCK_JOB, {"name": name})
        job = read_job(conn, name)
        if job is None:  # dropped meanwhile
            continue
        fn = sql.trigger_function_name(job).as_string() + "()"
        row = conn.execute(sql.TRIGGER_FUNCTION_VERSION, {"fn": fn}).fetchone()
        if row is not None and row[0] == sql.TRIGGER_VERSION:
            continue
        if conn.execute(sql.LOOKUP_TABLE, {"schema": job.source_schema, "table": job.source_table}).fetchone() is None:
            continue
        conn.execute(sql.lock_source(job))
        conn.execute(sql.drop_triggers(job))
        conn.execute(sql.create_log_table(job))
        conn.execute(sql.create_absorb_function(job))
        conn.execute(sql.create_trigger_function(job))
        conn.execute(sql.create_triggers(job))
        upgraded.append(name)
    return upgraded
