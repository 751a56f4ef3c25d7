"""Batch API submissions: ``vectorfill.batches`` (one row per provider batch) and
``vectorfill.batch_items`` (its inputs), migration 0006.

Locking: one process at a time submits or collects a job's batches, under a session-level
advisory lock (:data:`BATCH_TRY_LOCK`), so a process that dies lets go of it at once. A
submission's rows stay leased in the version's queue (``claimed_by`` = the submission id)
for the batch's life; the store is the online one (seq-guarded).
"""

from __future__ import annotations

from psycopg import sql

from vectorfill.storage.sql._compose import JobTables

# ----------------------------------------------------------------- Batch API submissions
# ``vectorfill.batches`` (one row per provider batch) and ``vectorfill.batch_items`` (its
# inputs), migration 0006; used by ``tasks/submit.py`` and ``tasks/collect.py``. A
# submission's rows stay leased in the version's queue (``claimed_by`` = the submission id)
# for the batch's life; the store is the online one (:meth:`JobSQL.settle`, seq-guarded).

#: Two-int advisory lock key (class, job id): one process at a time submits or collects a
#: job's batches; held by a session, so a process that dies lets go of it at once.
BATCH_LOCK_CLASS = 0x56464254  # "VFBT"
BATCHES_INSTALLED = sql.SQL("SELECT to_regclass('vectorfill.batches') IS NOT NULL")
BATCH_TRY_LOCK = sql.SQL("SELECT pg_try_advisory_lock(%(cls)s, %(job_id)s)")
BATCH_UNLOCK = sql.SQL("SELECT pg_advisory_unlock(%(cls)s, %(job_id)s)")

BATCH_COLUMNS = sql.SQL(
    """id, job_id, version, state, provider_status, provider_batch_id, input_file_id, output_file_id,
       error_file_id, rows, requests, tokens, billed_tokens, written, stale, failed, retried, error,
       created_at, submitted_at, finished_at"""
)
#: Intent first: the row exists before any queue row is claimed under its id.
BATCH_INSERT = sql.SQL(
    "INSERT INTO vectorfill.batches (id, job_id, version, state) VALUES (%(id)s, %(job_id)s, %(version)s, 'claiming')"
)
BATCH_CLAIMED = sql.SQL(
    """UPDATE vectorfill.batches SET state = 'uploading', rows = %(rows)s, requests = %(requests)s,
              tokens = %(tokens)s
        WHERE id = %(id)s"""
)
BATCH_UPLOADED = sql.SQL("UPDATE vectorfill.batches SET input_file_id = %(file_id)s WHERE id = %(id)s")
BATCH_SUBMITTED = sql.SQL(
    """UPDATE vectorfill.batches SET state = 'submitted', provider_batch_id = %(batch_id)s,
              input_file_id = coalesce(input_file_id, %(file_id)s), provider_status = %(status)s,
              submitted_at = coalesce(submitted_at, to_timestamp(%(created_at)s), now())
        WHERE id = %(id)s"""
)
BATCH_STATUS = sql.SQL("UPDATE vectorfill.batches SET provider_status = %(status)s WHERE id = %(id)s")
BATCH_DONE = sql.SQL(
    """UPDATE vectorfill.batches SET state = 'done', provider_status = %(status)s,
              output_file_id = %(output_file_id)s, error_file_id = %(error_file_id)s,
              billed_tokens = %(billed_tokens)s, written = %(written)s, stale = %(stale)s,
              failed = %(failed)s, retried = %(retried)s, error = %(error)s, finished_at = now()
        WHERE id = %(id)s"""
)
#: Never sent (or the provider has no batch of it): its rows were given back.
BATCH_RELEASED = sql.SQL(
    "UPDATE vectorfill.batches SET state = 'released', error = %(error)s, finished_at = now() WHERE id = %(id)s"
)
BATCH_DELETE = sql.SQL("DELETE FROM vectorfill.batches WHERE id = %(id)s")
BATCH_OPEN = (
    sql.SQL("SELECT ")
    + BATCH_COLUMNS
    + sql.SQL(
        """ FROM vectorfill.batches WHERE job_id = %(job_id)s AND state IN ('claiming', 'uploading', 'submitted')
            ORDER BY created_at"""
    )
)
BATCH_ROWS = (
    sql.SQL("SELECT ")
    + BATCH_COLUMNS
    + sql.SQL(" FROM vectorfill.batches WHERE job_id = %(job_id)s ORDER BY created_at DESC LIMIT %(limit)s")
)
#: ``vectorfill job create/set-model --batch``: the job's default mode.
SET_JOB_BATCH = sql.SQL(
    "UPDATE vectorfill.jobs SET settings = settings || jsonb_build_object('batch', %(batch)s::boolean) "
    "WHERE name = %(name)s"
)


def batch_items_insert(js: JobTables) -> sql.Composed:
    """Record a submission's inputs. Parameters: the submission id, then key arrays, req[],
    pos[], seq[], hash[], tokens[]."""
    return sql.SQL(
        """INSERT INTO vectorfill.batch_items (batch_id, req, pos, row_key, seq, input_hash, tokens)
           SELECT %s, c.req, c.pos, {fkey}, c.seq, c.input_hash, c.tokens FROM {unnest}"""
    ).format(
        fkey=js._failure_key("c"),
        unnest=js._unnest(
            [("req", "int4"), ("pos", "int4"), ("seq", "bigint"), ("input_hash", "bytea"), ("tokens", "int4")]
        ),
    )


def batch_items_read(js: JobTables) -> sql.Composed:
    """A submission's inputs, typed keys first: ``k1..kn, req, pos, seq, input_hash, tokens``.
    Parameter: the submission id."""
    keys = sql.SQL(", ").join(sql.SQL("(i.row_key->>{})::{}").format(sql.Literal(n), t) for n, t in enumerate(js.types))
    return sql.SQL(
        """SELECT {keys}, i.req, i.pos, i.seq, i.input_hash, i.tokens
             FROM vectorfill.batch_items i WHERE i.batch_id = %s ORDER BY i.req, i.pos"""
    ).format(keys=keys)


def batch_give_back(js: JobTables) -> sql.Composed:
    """Free every row a submission still holds, its claim not counted as an attempt (the
    batch never ran: not sent, or refused as a whole). Parameters: error, submission id."""
    return sql.SQL(
        """UPDATE {q} SET lease_until = NULL, claimed_by = NULL, attempts = greatest(attempts - 1, 0),
                          last_error = %s
            WHERE claimed_by = %s"""
    ).format(q=js.q)


def batch_give_back_keys(js: JobTables) -> sql.Composed:
    """:func:`batch_give_back` for some rows only (those that did not fit a file).
    Parameters: key arrays, then the submission id."""
    return sql.SQL(
        """UPDATE {q} q SET lease_until = NULL, claimed_by = NULL, attempts = greatest(q.attempts - 1, 0)
             FROM {unnest} WHERE {match} AND q.claimed_by = %s"""
    ).format(q=js.q, unnest=js._unnest([]), match=js._match("q", "c"))
