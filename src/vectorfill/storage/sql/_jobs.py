"""The job and version catalog: ``vectorfill.jobs``, ``vectorfill.versions``,
``vectorfill.failures``, and the look-ups of a source table in ``pg_catalog``.

Every change of a job's versions first takes :data:`LOCK_JOB`, so that two changes
(set-model, cut-over, pause, abandon, prune) of one job never interleave; readers are not
blocked. Adding or switching a version also takes :func:`lock_source` (see there).
"""

from __future__ import annotations

from psycopg import sql

from vectorfill.records import Job

# ----------------------------------------------------------------- catalog look-ups
LOOKUP_TABLE = sql.SQL(
    """SELECT c.oid, n.nspname, c.relname, c.relkind
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %(schema)s AND c.relname = %(table)s"""
)
LOOKUP_COLUMNS = sql.SQL(
    """SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull
         FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum"""
)
LOOKUP_PRIMARY_KEY = sql.SQL(
    """SELECT array_agg(a.attname ORDER BY k.ord)
         FROM pg_catalog.pg_index i
         CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
         JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = %(oid)s AND i.indisprimary
        GROUP BY i.indexrelid"""
)
LOOKUP_UNIQUE_KEYS = sql.SQL(
    """SELECT array_agg(a.attname ORDER BY k.ord)
         FROM pg_catalog.pg_index i
         CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
         JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = %(oid)s AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
        GROUP BY i.indexrelid"""
)

SCHEMA_INSTALLED = sql.SQL("SELECT to_regclass('vectorfill.jobs')")
JOB_NAMES = sql.SQL("SELECT name FROM vectorfill.jobs ORDER BY name")
INSERT_JOB = sql.SQL(
    """INSERT INTO vectorfill.jobs (name, source_schema, source_table, key_columns, key_types,
                                    text_columns, template, settings)
       VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id"""
)
UPDATE_JOB_SETTINGS = sql.SQL(  # `job set`; under LOCK_JOB, so two changes do not interleave
    "UPDATE vectorfill.jobs SET settings = %(settings)s WHERE id = %(job_id)s"
)
DELETE_JOB = sql.SQL("DELETE FROM vectorfill.jobs WHERE id = %s")  # versions, failures: ON DELETE CASCADE
FAILURE_ROWS = sql.SQL(
    """SELECT version, row_key, reason, status, message, attempts, failed_at
         FROM vectorfill.failures WHERE job_id = %s ORDER BY failed_at DESC, row_key LIMIT %s"""
)
SET_ACTIVE_BASE_URL = sql.SQL(  # the demo's endpoint moves between runs (its port)
    "UPDATE vectorfill.versions SET base_url = %s WHERE job_id = %s AND state = 'active'"
)
JOB_ROWS = sql.SQL(
    """SELECT id, name, source_schema, source_table, key_columns, key_types, text_columns,
              template, settings
         FROM vectorfill.jobs WHERE name = %(name)s"""
)
VERSION_ROWS = sql.SQL(
    """SELECT job_id, version, model, base_url, api_key_env, dimensions, vector_dims, state,
              created_at, activated_at, options
         FROM vectorfill.versions WHERE job_id = %(job_id)s ORDER BY version"""
)

# ----------------------------------------------------------------- versions (blue/green)
# Every change of a job's versions first takes LOCK_JOB, so that two changes (set-model,
# cut-over, pause, abandon, prune) of one job never interleave; readers are not blocked.
LOCK_JOB = sql.SQL("SELECT id FROM vectorfill.jobs WHERE name = %(name)s FOR UPDATE")
INSERT_VERSION = sql.SQL(
    """INSERT INTO vectorfill.versions (job_id, version, model, base_url, api_key_env, dimensions,
                                        vector_dims, state, activated_at, options)
       SELECT %(job_id)s, coalesce(max(version), 0) + 1, %(model)s, %(base_url)s, %(api_key_env)s,
              %(dimensions)s, %(vector_dims)s, %(state)s,
              CASE WHEN %(state)s = 'active' THEN now() END, %(options)s
         FROM vectorfill.versions WHERE job_id = %(job_id)s
    RETURNING version"""
)
SET_VERSION_STATE = sql.SQL(
    """UPDATE vectorfill.versions
          SET state = %(state)s,
              activated_at = CASE WHEN %(state)s = 'active' THEN now() ELSE activated_at END
        WHERE job_id = %(job_id)s AND version = %(version)s"""
)
VERSION_DIMS_FOR_UPDATE = sql.SQL(  # the first store of a version types its column, once
    """SELECT vector_dims, state FROM vectorfill.versions
        WHERE job_id = %(job_id)s AND version = %(version)s FOR UPDATE"""
)
SET_VERSION_DIMS = sql.SQL(
    "UPDATE vectorfill.versions SET vector_dims = %(dims)s WHERE job_id = %(job_id)s AND version = %(version)s"
)
DELETE_VERSION = sql.SQL(  # its failure records go with it (ON DELETE CASCADE)
    "DELETE FROM vectorfill.versions WHERE job_id = %(job_id)s AND version = %(version)s"
)


def lock_source(job: Job) -> sql.Composed:
    """Block writes to the source table (not reads) until the transaction ends.

    Taken while a version is added or switched, so that no row can be written between
    the moment the new trigger function is installed and the moment the new version's
    queue is filled from a snapshot: such a row would fire the *old* function (the new
    one is not committed yet) and be missing from the new version's snapshot too.
    """
    return sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(
        sql.Identifier(job.source_schema, job.source_table)
    )
