"""All of vectorfill's SQL, composed safely with :mod:`psycopg.sql`, one module per table
family behind this one face (``from vectorfill.storage import sql``; ``sql.JobSQL``).

(Except bootstrap statements that belong to their own machinery: the embedded server's
``CREATE DATABASE`` in :mod:`vectorfill.local.pgembedded` and
:mod:`vectorfill.orchestration.serve`, Alembic's revision check in
:mod:`vectorfill.storage.db`, the demo corpus loader in :mod:`vectorfill.local.corpus`,
and the migrations themselves.)

User-supplied names (schemas, tables, columns) only ever enter SQL as
:class:`psycopg.sql.Identifier`; values only as parameters. Column types are read from
``pg_catalog.format_type`` and re-used verbatim.

==================  ==========================================================================
module              tables and statements
==================  ==========================================================================
``_compose``        the schema name, text templates, :class:`JobTables` (names and key matching)
``_jobs``           ``vectorfill.jobs``, ``versions``, ``failures``; catalog look-ups; job locks
``_queue``          a version's queue: fill, claim, read texts, fail, renew, release, counts
``_vectors``        a version's vectors: tables, the store, search, the HNSW index, the view
``_reuse``          a version's vectors by input hash: the stored vector of an exact input
``_spend``          the daily spend ledger behind ``max_usd_per_day``
``_changelog``      the job's change log and its absorber
``_triggers``       the source table's triggers and their function
``_budgets``        shared rate budgets and learnt endpoint caps
``_batches``        Batch API submissions and their inputs
``_progress``       a new version's catch-up (``behind``) and the sync loop's poll
``_documents``      a document table kept in step with a listing; ``document_hashes``
==================  ==========================================================================

Per job version there are two tables in the ``vectorfill`` schema:

``_q_<job>_<version>`` (the queue)
    one row per source row whose vector is missing or stale: the key (``k1..kn``), ``seq``
    (a value of the global sequence ``vectorfill.queue_seq``, taken anew at each change),
    ``lease_until``, ``attempts`` and ``last_error``.
``_v_<job>_<version>`` (the vectors)
    ``k1..kn``, ``chunk_seq`` (0 for a whole-row vector; room for chunking), ``embedding``
    (``vector(d)``, or ``halfvec(d)``), ``input_hash`` (sha256 of the exact text embedded),
    ``model`` (as the provider named it), ``embedded_at`` and ``chunk`` (that exact text).

The view ``vectorfill.<job>`` shows the active version as ``id, chunk_seq, chunk, embedding,
model, embedded_at`` (a composite key shows its columns under their own names); ``chunk``
is the exact input that was embedded (the whole text for a job without a chunker).

How concurrency is made safe (the locking story, in brief)
----------------------------------------------------------
Each module's docstring tells its part in full:

* writes to the source append one row per statement to the job's change log; an absorber,
  one at a time per job under an advisory lock, folds it into every live version's queue
  (``_changelog``);
* workers claim with ``FOR UPDATE SKIP LOCKED`` and a lease, in a short transaction that
  holds nothing across the HTTP call (``_queue``);
* a store deletes each queue row only if its ``seq`` is still the claimed one and COPYs the
  vectors of exactly the rows it deleted, so an edit made while a text was in flight is
  never lost (``_vectors``);
* every change of a job's versions takes the job's row lock, then the absorber's lock
  (``_jobs``, ``_changelog``);
* the shared rate budgets are one-row autocommit statements that hold no lock between
  statements (``_budgets``); a job's Batch API submissions are serialised by a session
  advisory lock (``_batches``).
"""

from __future__ import annotations

from vectorfill.storage.sql._batches import (
    BATCH_CLAIMED,
    BATCH_COLUMNS,
    BATCH_DELETE,
    BATCH_DONE,
    BATCH_INSERT,
    BATCH_LOCK_CLASS,
    BATCH_OPEN,
    BATCH_RELEASED,
    BATCH_ROWS,
    BATCH_STATUS,
    BATCH_SUBMITTED,
    BATCH_TRY_LOCK,
    BATCH_UNLOCK,
    BATCH_UPLOADED,
    BATCHES_INSTALLED,
    SET_JOB_BATCH,
    batch_give_back,
    batch_give_back_keys,
    batch_items_insert,
    batch_items_read,
)
from vectorfill.storage.sql._budgets import (
    BUDGET_ENSURE,
    BUDGET_GIVE_BACK,
    BUDGET_LEASE,
    BUDGET_PAUSE,
    ENDPOINT_CAPS,
    FORGET_ENDPOINT_CAPS,
    REMEMBER_ENDPOINT_CAPS,
)
from vectorfill.storage.sql._changelog import (
    ABSORB_LOCK_CLASS,
    TRIGGER_OPS,
    TRIGGER_VERSION,
    absorb,
    absorb_function_name,
    absorb_lock,
    create_absorb_function,
    create_log_table,
    drop_log,
    log_table,
    trigger_function_name,
)
from vectorfill.storage.sql._compose import SCHEMA, JobTables, TextSpec, parse_template, text_expression
from vectorfill.storage.sql._documents import (
    DOCUMENT_COLUMNS,
    copy_listing,
    create_document_table,
    create_listing,
    index_listing,
    merge_statements,
    read_document_hashes,
    write_document_hashes,
)
from vectorfill.storage.sql._jobs import (
    DELETE_JOB,
    DELETE_VERSION,
    FAILURE_ROWS,
    INSERT_JOB,
    INSERT_VERSION,
    JOB_NAMES,
    JOB_ROWS,
    LOCK_JOB,
    LOOKUP_COLUMNS,
    LOOKUP_PRIMARY_KEY,
    LOOKUP_TABLE,
    LOOKUP_UNIQUE_KEYS,
    SCHEMA_INSTALLED,
    SET_ACTIVE_BASE_URL,
    SET_VERSION_DIMS,
    SET_VERSION_STATE,
    UPDATE_JOB_SETTINGS,
    VERSION_DIMS_FOR_UPDATE,
    VERSION_ROWS,
    lock_source,
)
from vectorfill.storage.sql._progress import behind, sync_poll
from vectorfill.storage.sql._queue import WORK_LEFT_JOB, QueueStatements, refund_attempts, work_left
from vectorfill.storage.sql._reuse import ReuseStatements, digests
from vectorfill.storage.sql._spend import SPEND_ADJUST, SPEND_CHARGE, SPEND_TODAY
from vectorfill.storage.sql._triggers import (
    TRIGGER_FUNCTION_VERSION,
    create_trigger_function,
    create_triggers,
    drop_triggers,
    trigger_names,
)
from vectorfill.storage.sql._vectors import VectorStatements, create_view, view_name

__all__ = [
    "ABSORB_LOCK_CLASS",
    "BATCHES_INSTALLED",
    "BATCH_CLAIMED",
    "BATCH_COLUMNS",
    "BATCH_DELETE",
    "BATCH_DONE",
    "BATCH_INSERT",
    "BATCH_LOCK_CLASS",
    "BATCH_OPEN",
    "BATCH_RELEASED",
    "BATCH_ROWS",
    "BATCH_STATUS",
    "BATCH_SUBMITTED",
    "BATCH_TRY_LOCK",
    "BATCH_UNLOCK",
    "BATCH_UPLOADED",
    "BUDGET_ENSURE",
    "BUDGET_GIVE_BACK",
    "BUDGET_LEASE",
    "BUDGET_PAUSE",
    "DELETE_JOB",
    "DELETE_VERSION",
    "DOCUMENT_COLUMNS",
    "ENDPOINT_CAPS",
    "FAILURE_ROWS",
    "FORGET_ENDPOINT_CAPS",
    "INSERT_JOB",
    "INSERT_VERSION",
    "JOB_NAMES",
    "JOB_ROWS",
    "LOCK_JOB",
    "LOOKUP_COLUMNS",
    "LOOKUP_PRIMARY_KEY",
    "LOOKUP_TABLE",
    "LOOKUP_UNIQUE_KEYS",
    "REMEMBER_ENDPOINT_CAPS",
    "SCHEMA",
    "SCHEMA_INSTALLED",
    "SET_ACTIVE_BASE_URL",
    "SET_JOB_BATCH",
    "SET_VERSION_DIMS",
    "SET_VERSION_STATE",
    "SPEND_ADJUST",
    "SPEND_CHARGE",
    "SPEND_TODAY",
    "TRIGGER_FUNCTION_VERSION",
    "TRIGGER_OPS",
    "TRIGGER_VERSION",
    "UPDATE_JOB_SETTINGS",
    "VERSION_DIMS_FOR_UPDATE",
    "VERSION_ROWS",
    "WORK_LEFT_JOB",
    "JobSQL",
    "JobTables",
    "TextSpec",
    "absorb",
    "absorb_function_name",
    "absorb_lock",
    "batch_give_back",
    "batch_give_back_keys",
    "batch_items_insert",
    "batch_items_read",
    "behind",
    "copy_listing",
    "create_absorb_function",
    "create_document_table",
    "create_listing",
    "create_log_table",
    "create_trigger_function",
    "create_triggers",
    "create_view",
    "digests",
    "drop_log",
    "drop_triggers",
    "index_listing",
    "lock_source",
    "log_table",
    "merge_statements",
    "parse_template",
    "read_document_hashes",
    "refund_attempts",
    "sync_poll",
    "text_expression",
    "trigger_function_name",
    "trigger_names",
    "view_name",
    "work_left",
    "write_document_hashes",
]


class JobSQL(QueueStatements, VectorStatements, ReuseStatements):
    """Every statement that touches one job version's queue, vectors or source::

        js = sql.JobSQL(job, version)
        conn.execute(js.claim(), {"limit": 512, "lease_s": 600, "token": run_id})

    The queue's statements are :class:`~vectorfill.storage.sql._queue.QueueStatements`'s,
    the vectors' :class:`~vectorfill.storage.sql._vectors.VectorStatements`'s."""
