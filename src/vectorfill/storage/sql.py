"""All of vectorfill's SQL, composed safely with :mod:`psycopg.sql`.

(Except bootstrap statements that belong to their own machinery: the embedded server's
``CREATE DATABASE`` in :mod:`vectorfill.local.pgembedded` and :mod:`vectorfill.orchestration.prefect_server`, Alembic's
revision check in :mod:`vectorfill.storage.db`, the demo corpus loader in :mod:`vectorfill.local.corpus`,
and the migrations themselves.)

User-supplied names (schemas, tables, columns) only ever enter SQL as
:class:`psycopg.sql.Identifier`; values only as parameters. Column types are read from
``pg_catalog.format_type`` and re-used verbatim.

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

How concurrency is made safe (the locking story)
------------------------------------------------
* **Triggers** on the source table (statement-level, with transition tables: see the
  section "triggers and change log") write no queue row: each statement appends ONE row to
  the job's change log ``_c_<job>`` (a new ``seq`` from the global sequence, taken in the
  AFTER STATEMENT trigger, so after the statement's own row locks; ``op`` 'I' for keys to
  queue, 'D' for keys to forget; the keys as arrays).
* The **absorber** (``_absorb_<job>()``, :func:`create_absorb_function`) folds the log
  into every live version's queue. It holds a per-job advisory lock until its transaction
  commits, so two absorbers never run at once (the second waits, then sees the log rows
  the first deleted as gone), and every change of a job's versions (set-model, switch,
  abandon, drop, retry) takes the same lock, after the source's lock, so the absorber
  never works from a stale list of versions. It takes every log row its snapshot sees
  (``DELETE ... RETURNING``, in the same transaction as its queue writes: a crash loses
  nothing) and applies, per key, its highest-``seq`` row, plus a delete when any row was a
  'D'. That is the key's latest committed change: two statements that touch one key
  serialise on it (row lock, or the unique index's check for an insert), so per key
  ``seq`` order is commit order, and a snapshot that sees a later statement's log row sees
  every earlier one for that key. Each queue row's ``seq`` is a value never given to that
  key before (a log row is absorbed once), which is all the seq checks below rely on. It
  runs before every claim, before every store's settle, before counts (status, progress,
  estimate) and before set-model queues a new version's rows (under the source's lock).
* A **row edited while in flight**: the store absorbs before it settles, so an edit
  committed before that has moved the row's ``seq`` and the stale vector is discarded (the
  row stays queued for its new text); an edit committed after it is absorbed later and
  queues the row again, so the vector of the old text, stored meanwhile, is replaced.
* A **deleted row**'s vectors stay stored until its 'D' is absorbed; the view
  ``vectorfill.<job>`` and :meth:`JobSQL.search` show a vector only while its key is in
  the source (a semi-join on the source's key), so readers never see them.
* **Claim** (:meth:`JobSQL.claim`) is one ``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP
  LOCKED)``: concurrent workers never pick the same row, and each claim records the ``seq``
  it saw. The texts are read by a *second* statement (:meth:`JobSQL.read_texts`), whose
  fresh snapshot is at least as new as the claimed ``seq``. The transaction then commits:
  nothing is held open across the HTTP call.
* **Store** (:meth:`JobSQL.settle`, then :meth:`JobSQL.copy_vectors`, in one
  transaction) deletes each queue row *only if its seq is still the claimed one* and COPYs
  the vectors of exactly the rows it deleted. A row edited while its old text was in flight has a new ``seq``: its stale vector
  is discarded and the row stays queued for its new text. Because ``seq`` comes from a
  global sequence, a row that is completed and queued again never reuses a ``seq``.
* A **delete** (absorbed; or the old key of a key change) removes the key's queue rows
  first (waiting for any store that holds them) and then its vectors, in separate
  statements with a fresh snapshot each, so a concurrent store cannot leave a vector
  behind for a deleted row.

Shared rate budgets (``vectorfill.budgets``)
--------------------------------------------
One row per endpoint is a token bucket for requests and one for tokens, whose levels are
refilled by the time elapsed since ``updated_at``, measured by *the database's* clock
(``statement_timestamp()``), so that the clocks of the machines sharing it do not matter.
Every statement on it is one short autocommit statement on one row:

* :data:`BUDGET_LEASE` takes a chunk. Its CTE reads the row ``FOR UPDATE`` (a concurrent
  lease waits for the row lock, then sees the row as the other left it, because READ
  COMMITTED re-reads a row that changed while it waited), refills, grants
  ``least(wanted, level)`` and the ``UPDATE`` writes the rest back. Two leases therefore
  never grant the same budget, and the lock is held for the statement only: no lock and no
  transaction is held between statements, so a process that dies or hangs blocks nobody;
  budget it had leased and not spent is lost and comes back with the refill.
* :data:`BUDGET_GIVE_BACK` and :data:`BUDGET_PAUSE` are single-row UPDATE statements whose
  ``SET`` expressions read the row's own columns, which READ COMMITTED re-evaluates on
  the newest version of the row after waiting for its lock; the refill time never moves
  backwards (``greatest(now, updated_at)``).
"""

from __future__ import annotations

import dataclasses
import string
from dataclasses import dataclass

from psycopg import sql

from vectorfill.records import Job, Version

__all__ = [
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
    "VERSION_DIMS_FOR_UPDATE",
    "VERSION_ROWS",
    "JobSQL",
    "TextSpec",
    "batch_give_back",
    "batch_give_back_keys",
    "batch_items_insert",
    "batch_items_read",
    "behind",
    "lock_source",
    "parse_template",
    "refund_attempts",
    "sync_poll",
]

SCHEMA = "vectorfill"
S = sql.Identifier(SCHEMA)

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


# ----------------------------------------------------------------- text templates
@dataclass(frozen=True)
class TextSpec:
    """What text a job embeds: literal parts and column fields, in order."""

    parts: tuple[tuple[str, str | None], ...]  # (literal, column or None)
    columns: tuple[str, ...]


def parse_template(template: str) -> TextSpec:
    """``"{title}\\n\\n{body}"`` -> literal/column parts. Only bare ``{column}`` fields."""
    parts: list[tuple[str, str | None]] = []
    columns: list[str] = []
    for literal, field, spec, conv in string.Formatter().parse(template):
        if spec or conv:
            raise ValueError(f"template field {{{field}}} may not use format specs or conversions")
        if field is not None and not field:
            raise ValueError("template has an empty field {}; name a column inside the braces")
        parts.append((literal, field))
        if field and field not in columns:
            columns.append(field)
    if not columns:
        raise ValueError("template names no column; use {column} fields")
    return TextSpec(tuple(parts), tuple(columns))


def text_expression(job: Job, alias: str = "s") -> sql.Composed:
    """The SQL expression that renders a source row's text (NULL when every field is NULL)."""
    a = sql.Identifier(alias)
    if job.template is None:
        cols = [sql.SQL("{}.{}::text").format(a, sql.Identifier(c)) for c in job.text_columns]
        if len(cols) == 1:
            return cols[0]
        return sql.SQL("NULLIF(concat_ws(E'\\n\\n', {}), '')").format(sql.SQL(", ").join(cols))
    spec = parse_template(job.template)
    pieces: list[sql.Composable] = []
    for literal, column in spec.parts:
        if literal:
            pieces.append(sql.Literal(literal))
        if column:
            pieces.append(sql.SQL("coalesce({}.{}::text, '')").format(a, sql.Identifier(column)))
    all_null = sql.SQL(" AND ").join(sql.SQL("{}.{} IS NULL").format(a, sql.Identifier(c)) for c in spec.columns)
    return sql.SQL("CASE WHEN {} THEN NULL ELSE concat({}) END").format(all_null, sql.SQL(", ").join(pieces))


# ----------------------------------------------------------------- per job version
class JobSQL:
    """Every statement that touches one job version's queue, vectors or source."""

    def __init__(self, job: Job, version: Version) -> None:
        self.job = job
        self.version = version
        self.src = sql.Identifier(job.source_schema, job.source_table)
        self.q = sql.Identifier(SCHEMA, version.queue_table)
        self.v = sql.Identifier(SCHEMA, version.vector_table)
        self.n = len(job.key_columns)
        self.k = [sql.Identifier(f"k{i + 1}") for i in range(self.n)]
        self.src_k = [sql.Identifier(c) for c in job.key_columns]
        self.types = [sql.SQL(t) for t in job.key_types]  # from pg_catalog.format_type

    # -- helpers
    def _cols(self, alias: str | None = None) -> sql.Composed:
        if alias is None:
            return sql.SQL(", ").join(self.k)
        return sql.SQL(", ").join(sql.Identifier(alias, f"k{i + 1}") for i in range(self.n))

    def _match(self, left: str, right: str, right_cols: list[sql.Identifier] | None = None) -> sql.Composed:
        rk = right_cols or self.k
        return sql.SQL(" AND ").join(
            sql.SQL("{}.{} = {}.{}").format(sql.Identifier(left), lk, sql.Identifier(right), r)
            for lk, r in zip(self.k, rk, strict=True)
        )

    def _unnest(self, extra: list[tuple[str, str]], alias: str = "c") -> sql.Composed:
        """``unnest(%s::t1[], ..., %s::extra[]) AS c(k1, ..., extra)`` for array parameters."""
        arrays = [sql.SQL("%s::{}[]").format(t) for t in self.types]
        arrays += [sql.SQL("%s::{}[]").format(sql.SQL(t)) for _, t in extra]
        names = self.k + [sql.Identifier(name) for name, _ in extra]
        return sql.SQL("unnest({}) AS {}({})").format(
            sql.SQL(", ").join(arrays), sql.Identifier(alias), sql.SQL(", ").join(names)
        )

    def _src_match(self, other: str) -> sql.Composed:
        """``s.<key col> = <other>.k1 AND ...``: the source row of a queue/vector row."""
        return sql.SQL(" AND ").join(
            sql.SQL("s.{} = {}.{}").format(sc, sql.Identifier(other), k)
            for sc, k in zip(self.src_k, self.k, strict=True)
        )

    def _failure_key(self, alias: str) -> sql.Composed:
        return sql.SQL("jsonb_build_array({})").format(self._cols(alias))

    # -- DDL
    def create_tables(self) -> sql.Composed:
        key_defs = sql.SQL(", ").join(
            sql.SQL("{} {} NOT NULL").format(k, t) for k, t in zip(self.k, self.types, strict=True)
        )
        vtype = self.column_type()
        return sql.SQL(
            """
            CREATE TABLE {q} (
                {key_defs},
                seq bigint NOT NULL,
                queued_at timestamptz NOT NULL DEFAULT now(),
                lease_until timestamptz,
                claimed_by uuid,
                attempts integer NOT NULL DEFAULT 0,
                last_error text,
                PRIMARY KEY ({k})
            );
            CREATE INDEX ON {q} (queued_at);
            CREATE TABLE {v} (
                {key_defs},
                chunk_seq integer NOT NULL DEFAULT 0,
                embedding {vtype} NOT NULL,
                input_hash bytea NOT NULL,
                model text NOT NULL,
                embedded_at timestamptz NOT NULL DEFAULT now(),
                chunk text,
                PRIMARY KEY ({k}, chunk_seq)
            );
            """
        ).format(q=self.q, v=self.v, key_defs=key_defs, k=self._cols(), vtype=vtype)

    def drop_tables(self) -> sql.Composed:
        return sql.SQL("DROP TABLE IF EXISTS {q}; DROP TABLE IF EXISTS {v};").format(q=self.q, v=self.v)

    def enqueue_all(self) -> sql.Composed:
        """Queue every existing source row into the queue of a new job or version, created in
        the same transaction, with writes to the source blocked (by CREATE TRIGGER, or
        :func:`lock_source`): the queue is empty, so no ON CONFLICT (its speculative
        insertion cost 1.8x a plain insert), and one seq serves every row (it is compared
        per key only)."""
        return sql.SQL(
            """INSERT INTO {q} ({k}, seq)
               SELECT {sk}, n.seq FROM {src} s, (SELECT nextval('vectorfill.queue_seq') AS seq) n"""
        ).format(
            q=self.q,
            k=self._cols(),
            sk=sql.SQL(", ").join(sql.SQL("s.{}").format(c) for c in self.src_k),
            src=self.src,
        )

    def column_type(self, dims: int | None = None) -> sql.SQL | sql.Composed:
        """``vector(d)`` or ``halfvec(d)`` (:attr:`Version.vector_type`); untyped while the
        dimensions are not known."""
        dims = dims or self.version.vector_dims
        vtype = dataclasses.replace(self.version, vector_dims=dims).vector_type
        if dims:
            return sql.SQL("{}({})").format(sql.SQL(vtype), sql.Literal(dims))
        return sql.SQL(vtype)

    def set_vector_dims(self, dims: int) -> sql.Composed:
        t = self.column_type(dims)
        return sql.SQL("ALTER TABLE {v} ALTER COLUMN embedding TYPE {t} USING embedding::{t}").format(v=self.v, t=t)

    # -- work
    def claim(self) -> sql.Composed:
        """Lease up to %(limit)s free queue rows; returns ``k1..kn, seq, attempts, last_error``.

        ``FOR UPDATE SKIP LOCKED`` lets any number of workers claim side by side without
        waiting on or double-claiming each other; the lease (``lease_until``) keeps the
        rows reserved after this short transaction commits, and expires by itself when a
        worker dies, so that another run takes the rows over. The UPDATE finds the picked
        rows by ``ctid`` (stable while they are locked): a join on the key let the planner
        choose a scan of the whole queue once its statistics saw it full (measured: 60 ms
        a claim at 200k queued rows, 5-10 ms with the Tid Scan).
        """
        return sql.SQL(
            """WITH picked AS (
                   SELECT ctid FROM {q}
                    WHERE lease_until IS NULL OR lease_until < now()
                    ORDER BY queued_at
                    LIMIT %(limit)s
                    FOR UPDATE SKIP LOCKED)
               UPDATE {q} AS q
                  SET lease_until = now() + make_interval(secs => %(lease_s)s),
                      claimed_by = %(token)s,
                      attempts = q.attempts + 1
                WHERE q.ctid = ANY(ARRAY(SELECT ctid FROM picked))
            RETURNING {qk}, q.seq, q.attempts, q.last_error"""
        ).format(q=self.q, qk=self._cols("q"))

    def _stored_hashes(self, alias: str) -> sql.Composed:
        """The input hashes of a row's stored chunks, in order (NULL: no vector)."""
        return sql.SQL("(SELECT array_agg(v.input_hash ORDER BY v.chunk_seq) FROM {v} v WHERE {m})").format(
            v=self.v, m=self._match("v", alias)
        )

    def _fields(self, columns: tuple[str, ...] | list[str]) -> sql.Composed:
        return sql.SQL("").join(sql.SQL(", s.{}::text").format(sql.Identifier(c)) for c in columns)

    def read_texts(self, fields: tuple[str, ...] | list[str] = ()) -> sql.Composed:
        """The current text of claimed rows, whether the row still exists, the hashes of the
        inputs its stored chunks were made from (in chunk order), and the ``fields`` a chunk
        template names. Run after :meth:`claim` (fresh snapshot)."""
        src_match = self._src_match("c")
        return sql.SQL(
            """SELECT {ck}, c.seq, (s.ctid IS NOT NULL) AS present, {text} AS text, {hashes}{fields}
                 FROM {unnest}
                 LEFT JOIN {src} s ON {src_match}"""
        ).format(
            ck=self._cols("c"),
            text=text_expression(self.job, "s"),
            hashes=self._stored_hashes("c"),
            fields=self._fields(fields),
            unnest=self._unnest([("seq", "bigint")]),
            src=self.src,
            src_match=src_match,
        )

    def dequeue(self) -> sql.Composed:
        """Drop queue rows (still at their claimed seq) whose stored vector is already right."""
        return sql.SQL("DELETE FROM {q} q USING {unnest} WHERE {match} AND q.seq = c.seq").format(
            q=self.q, unnest=self._unnest([("seq", "bigint")]), match=self._match("q", "c")
        )

    def fail(self) -> sql.Composed:
        """Move rows (still at their claimed seq) from the queue to the failures table and
        drop their now-stale vectors. Parameters: keys, seqs, reasons, statuses, messages."""
        return sql.SQL(
            """WITH done AS (
                   DELETE FROM {q} q USING {unnest}
                    WHERE {match} AND q.seq = c.seq
                   RETURNING {ck}, c.reason, c.status, c.message, q.attempts),
               gone AS (DELETE FROM {v} v USING done WHERE {vmatch})
               INSERT INTO vectorfill.failures AS f
                      (job_id, version, row_key, reason, status, message, attempts, failed_at)
               SELECT %s, %s, {fkey}, done.reason, done.status, done.message, done.attempts, now()
                 FROM done
               ON CONFLICT (job_id, version, row_key) DO UPDATE
                  SET reason = EXCLUDED.reason, status = EXCLUDED.status,
                      message = EXCLUDED.message, attempts = f.attempts + EXCLUDED.attempts,
                      failed_at = EXCLUDED.failed_at"""
        ).format(
            q=self.q,
            unnest=self._unnest([("seq", "bigint"), ("reason", "text"), ("status", "integer"), ("message", "text")]),
            match=self._match("q", "c"),
            ck=self._cols("c"),
            v=self.v,
            vmatch=self._match("v", "done"),
            fkey=self._failure_key("done"),
        )

    def requeue_failures(self) -> sql.Composed:
        """Queue failed rows again (fresh seq, attempts reset) and clear their records: all of
        them, or those named by key (``ids``: single keys as text; ``rows``: JSON arrays)."""
        keys = sql.SQL(", ").join(
            sql.SQL("(f.row_key->>{})::{}").format(sql.Literal(i), t) for i, t in enumerate(self.types)
        )
        return sql.SQL(
            """WITH gone AS (
                   DELETE FROM vectorfill.failures f
                    WHERE f.job_id = %(job_id)s AND f.version = %(version)s
                      AND (%(all)s OR f.row_key = ANY(%(rows)s::jsonb[])
                           OR (jsonb_array_length(f.row_key) = 1 AND f.row_key->>0 = ANY(%(ids)s::text[])))
                   RETURNING f.row_key)
               INSERT INTO {q} ({k}, seq)
               SELECT {keys}, nextval('vectorfill.queue_seq') FROM gone f
               ON CONFLICT ({k}) DO UPDATE SET seq = EXCLUDED.seq, lease_until = NULL, claimed_by = NULL,
                   attempts = 0"""
        ).format(q=self.q, k=self._cols(), keys=keys)

    def renew(self) -> sql.Composed:
        """Extend the leases of every row the run ``%(token)s`` still holds (claimed, not yet
        stored, released or changed by a trigger, which all clear ``claimed_by``), so that a
        batch whose retries outlast the lease is not claimed and paid for by a second worker.
        A run that dies stops renewing and its leases expire as before."""
        return sql.SQL(
            """UPDATE {q} SET lease_until = now() + make_interval(secs => %(lease_s)s)
                WHERE claimed_by = %(token)s"""
        ).format(q=self.q)

    def release(self) -> sql.Composed:
        """Give back every row a run still holds (lease cleared, error noted) when it stops
        early. Parameters: error, run token."""
        return sql.SQL(
            """UPDATE {q} SET lease_until = NULL, claimed_by = NULL, last_error = %s
                WHERE claimed_by = %s"""
        ).format(q=self.q)

    def settle_chunks(self) -> sql.Composed:
        """:meth:`settle` that keeps the vectors of unchanged chunks: for each row it settles
        (queue row still at its claimed ``seq``), the stored chunk with each listed input
        hash is copied to its new ``chunk_seq`` (written as ``-1 - chunk_seq`` here, flipped
        by :meth:`flip_kept` in the same transaction, since the old rows still hold the
        numbers while this statement runs), then the row's old chunks are deleted. Every
        sub-statement sees the snapshot of the statement's start, so ``kept`` reads the old
        chunks that ``old`` deletes. Returns the settled keys and how many chunks were kept.
        Parameters: keys, seqs; kept keys, chunk_seqs, hashes; job id, version."""
        return sql.SQL(
            """WITH done AS (
                   DELETE FROM {q} q USING {unnest} WHERE {match} AND q.seq = c.seq
                   RETURNING {qk}),
               kept AS (
                   INSERT INTO {v} ({k}, chunk_seq, embedding, input_hash, model, embedded_at, chunk)
                   SELECT {rk}, -1 - r.chunk_seq, o.embedding, o.input_hash, o.model, o.embedded_at, o.chunk
                     FROM {unnest_r}
                     JOIN done ON {rmatch}
                     CROSS JOIN LATERAL (
                         SELECT * FROM {v} o WHERE {omatch} AND o.input_hash = r.input_hash AND o.chunk_seq >= 0
                          ORDER BY o.chunk_seq LIMIT 1) o
                   RETURNING 1),
               old AS (DELETE FROM {v} v USING done WHERE {vmatch} AND v.chunk_seq >= 0),
               cleared AS (
                   DELETE FROM vectorfill.failures f USING done
                    WHERE f.job_id = %s AND f.version = %s AND f.row_key = {dkey})
               SELECT {dk}, (SELECT count(*) FROM kept) FROM done"""
        ).format(
            q=self.q,
            unnest=self._unnest([("seq", "bigint")]),
            match=self._match("q", "c"),
            qk=self._cols("q"),
            v=self.v,
            k=self._cols(),
            rk=self._cols("r"),
            unnest_r=self._unnest([("chunk_seq", "integer"), ("input_hash", "bytea")], alias="r"),
            rmatch=self._match("done", "r"),
            omatch=self._match("o", "r"),
            vmatch=self._match("v", "done"),
            dkey=self._failure_key("done"),
            dk=self._cols("done"),
        )

    def flip_kept(self) -> sql.Composed:
        """Give the chunks :meth:`settle_chunks` kept their real numbers. Parameter: keys."""
        return sql.SQL(
            "UPDATE {v} v SET chunk_seq = -1 - v.chunk_seq FROM {unnest} WHERE {m} AND v.chunk_seq < 0"
        ).format(v=self.v, unnest=self._unnest([]), m=self._match("v", "c"))

    def settle(self) -> sql.Composed:
        """Start storing a batch: delete the queue rows still at their claimed ``seq`` and,
        for exactly those keys, the old vectors and failure records; return the keys.

        The DELETE locks each queue row until the transaction ends (waiting for a
        concurrent trigger's update of it to commit, then re-checking ``seq``), so the
        caller COPYs vectors for exactly the rows whose text is still the embedded one,
        in the same transaction (:meth:`copy_vectors`). Parameters: keys, seqs, job id,
        version.
        """
        return sql.SQL(
            """WITH done AS (
                   DELETE FROM {q} q USING {unnest} WHERE {match} AND q.seq = c.seq
                   RETURNING {qk}),
               old AS (DELETE FROM {v} v USING done WHERE {vmatch}),
               cleared AS (
                   DELETE FROM vectorfill.failures f USING done
                    WHERE f.job_id = %s AND f.version = %s AND f.row_key = {dkey})
               SELECT {dk} FROM done"""
        ).format(
            q=self.q,
            unnest=self._unnest([("seq", "bigint")]),
            match=self._match("q", "c"),
            qk=self._cols("q"),
            v=self.v,
            vmatch=self._match("v", "done"),
            dkey=self._failure_key("done"),
            dk=self._cols("done"),
        )

    def copy_vectors(self) -> sql.Composed:
        """Binary COPY straight into the vector table (after :meth:`settle`)."""
        return sql.SQL(
            "COPY {v} ({k}, chunk_seq, embedding, input_hash, model, chunk) FROM STDIN (FORMAT BINARY)"
        ).format(v=self.v, k=self._cols())

    # -- reading
    def counts(self) -> sql.Composed:
        """Exact counts: source rows, up-to-date vectors, queued rows, failed rows.

        Up-to-date vectors are counted as all vectors less those of queued rows (a semi-join
        from the queue), not as an anti-join of every vector against the queue: at a million
        vectors and 100,000 queued rows, 0.4-0.5 s instead of 0.7-1.3 s (under load)."""
        return sql.SQL(
            """SELECT (SELECT count(*) FROM {src}) AS total,
                      (SELECT count(*) FROM {v} v WHERE v.chunk_seq = 0)
                      - (SELECT count(*) FROM {q} q
                          WHERE EXISTS (SELECT 1 FROM {v} v WHERE {match} AND v.chunk_seq = 0)) AS embedded,
                      (SELECT count(*) FROM {q}) AS pending,
                      (SELECT count(*) FROM vectorfill.failures f
                        WHERE f.job_id = %(job_id)s AND f.version = %(version)s) AS failed"""
        ).format(src=self.src, v=self.v, q=self.q, match=self._match("q", "v"))

    def pending_texts(self, fields: tuple[str, ...] | list[str] = ()) -> sql.Composed:
        """The current text of every queued row and the hashes of its stored chunks' inputs
        (for estimates: no lease is taken, nothing changes), then the chunk template's fields."""
        return sql.SQL(
            """SELECT {text} AS text, {hashes}{fields}
                 FROM {q} q
                 JOIN {src} s ON {src_match}"""
        ).format(
            text=text_expression(self.job, "s"),
            hashes=self._stored_hashes("q"),
            fields=self._fields(fields),
            q=self.q,
            src=self.src,
            src_match=self._src_match("q"),
        )

    def all_texts(self, fields: tuple[str, ...] | list[str] = ()) -> sql.Composed:
        """The text of every source row (for the estimate of a re-embed with a new model)."""
        return sql.SQL("SELECT {text} AS text, NULL::bytea[]{fields} FROM {src} s").format(
            text=text_expression(self.job, "s"), fields=self._fields(fields), src=self.src
        )

    def missing(self) -> sql.Composed:
        """What keeps this version from being complete: rows still queued, and failed rows
        other than those with no text (which have no vector in any version)."""
        return sql.SQL(
            """SELECT (SELECT count(*) FROM {q}) AS pending,
                      (SELECT count(*) FROM vectorfill.failures f
                        WHERE f.job_id = %(job_id)s AND f.version = %(version)s
                          AND f.reason <> 'empty_text') AS failed"""
        ).format(q=self.q)

    def search(self, per_row: bool = False) -> sql.Composed:
        """Nearest chunks (rows, for a job without a chunker) by cosine distance, with their
        chunk number and text. The ORDER BY ... LIMIT runs on the vector table alone so that
        its HNSW index (``vectorfill index``) serves it; the source is joined after, for the
        row's text. ``per_row``: the best chunk of each row, from the nearest
        ``%(k)s * %(fan)s`` chunks (an index scan returns a bounded candidate list).
        Parameters: q (query vector), k, fan."""
        src_match = self._src_match("n")
        # rows deleted whose deletion is still in the change log are not shown (their
        # vectors go when it is absorbed): a probe of the source's key per candidate
        live = sql.SQL("EXISTS (SELECT 1 FROM {src} s WHERE {m})").format(src=self.src, m=self._src_match("v"))
        inner = sql.SQL(
            """SELECT {k}, chunk_seq, chunk, embedding <=> %(q)s{cast} AS distance FROM {v} v WHERE {live}
                ORDER BY embedding <=> %(q)s{cast} LIMIT %(k)s"""
        )
        if per_row:
            inner = sql.SQL(
                """SELECT * FROM (
                       SELECT DISTINCT ON ({k}) * FROM (
                           SELECT {k}, chunk_seq, chunk, embedding <=> %(q)s{cast} AS distance FROM {v} v WHERE {live}
                            ORDER BY embedding <=> %(q)s{cast} LIMIT %(k)s * %(fan)s) c
                        ORDER BY {k}, distance) b
                    ORDER BY distance LIMIT %(k)s"""
            )
        return sql.SQL(
            """SELECT {nk}, n.distance, {text} AS text, n.chunk_seq, n.chunk
                 FROM ({inner}) n
                 LEFT JOIN {src} s ON {m}
                ORDER BY n.distance"""
        ).format(
            inner=inner.format(k=self._cols(), cast=self._query_cast(), v=self.v, live=live),
            nk=self._cols("n"),
            k=self._cols(),
            cast=self._query_cast(),
            text=text_expression(self.job, "s"),
            v=self.v,
            src=self.src,
            m=src_match,
        )

    def index_facts(self) -> sql.Composed:
        """Whether the HNSW index exists, and the planner's row estimate (-1: never analysed)."""
        return sql.SQL(
            """SELECT coalesce((SELECT indisvalid FROM pg_catalog.pg_index WHERE indexrelid = to_regclass({idx})), false),
                      (SELECT reltuples FROM pg_catalog.pg_class WHERE oid = to_regclass({v}))"""
        ).format(
            idx=sql.Literal(f"{SCHEMA}.{self.index_name()}"), v=sql.Literal(f"{SCHEMA}.{self.version.vector_table}")
        )

    def count_vectors(self) -> sql.Composed:
        return sql.SQL("SELECT count(*) FROM {}").format(self.v)

    def _query_cast(self) -> sql.SQL:
        """The query vector (sent as ``vector``) cast to the column's type, so that a
        ``halfvec`` column's index serves the ORDER BY."""
        return sql.SQL("::halfvec") if self.version.vector_type == "halfvec" else sql.SQL("")

    def index_name(self) -> str:
        return f"{self.version.vector_table}_hnsw"

    def create_index(self) -> sql.Composed:
        """An HNSW index for cosine distance (built without blocking writers)."""
        ops = sql.SQL("halfvec_cosine_ops" if self.version.vector_type == "halfvec" else "vector_cosine_ops")
        return sql.SQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {v} USING hnsw (embedding {ops})").format(
            name=sql.Identifier(self.index_name()), v=self.v, ops=ops
        )

    def index_valid(self) -> sql.Composed:
        """Whether the HNSW index exists (NULL: it does not) and is valid: a ``CREATE INDEX
        CONCURRENTLY`` that failed midway leaves an INVALID index behind."""
        return sql.SQL(
            "SELECT (SELECT indisvalid FROM pg_catalog.pg_index WHERE indexrelid = to_regclass({idx}))"
        ).format(idx=sql.Literal(f"{SCHEMA}.{self.index_name()}"))

    def drop_index(self) -> sql.Composed:
        return sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(SCHEMA, self.index_name()))


# ----------------------------------------------------------------- triggers and change log (job-wide)
# The source table carries four statement-level triggers, all calling one function per job
# (``vectorfill._trg_<job id>``). They do not touch any version's queue or vectors: each
# INSERT, UPDATE or DELETE statement writes ONE row into the job's change log
# (``vectorfill._c_<job id>``: ``seq`` from ``vectorfill.queue_seq``, ``op`` 'I' (queue
# these keys) or 'D' (forget these keys), and one array per key column), whatever the
# number of rows it touched. A queue row per source row cost about what the source row
# itself costs (100,000 rows: ~800 ms for the queue rows, ~80-110 ms for one array row);
# a DELETE deleted 100,000 vector rows of ~1 KB in the user's statement. The change log is
# folded into every live version's queue later, by :func:`create_absorb_function`'s
# function, which vectorfill calls before it claims, counts, adds a version or retries.
# Why each statement is shaped as it is:
#
# * Transition tables are not allowed on triggers with a column list (``UPDATE OF``), so the
#   UPDATE trigger fires on every UPDATE and compares the watched columns itself: one hash
#   FULL JOIN of old and new rows on the key, which yields at once the keys that left
#   (a key change: a 'D' row), and the keys that arrived or whose text columns really
#   changed (``IS DISTINCT FROM``: an 'I' row). Set semantics on keys also make a key swap
#   in one statement (``SET id = 3 - id``) come out right: each key is queued if its text
#   changed. An UPDATE that changes nothing the job embeds writes no log row at all.
# * The arrays are stored uncompressed (``STORAGE EXTERNAL``): pglz compressing a
#   100,000-key array made a bulk DELETE's trigger cost 3.8x the plain DELETE instead of 2.1x.
# * The function runs with merge joins off and 32 MB of work_mem: the planner knows no
#   statistics of transition tables and chose a merge FULL JOIN with two sorts (578 ms
#   for 100,000 rows, under load; a hash join 406 ms).
# * TRUNCATE empties every live version's queue and vectors, the log and the failure
#   records at once (the function is rewritten when the live versions change).
#
# The function is SECURITY DEFINER with a fixed search_path, so an application role that
# may write the source table needs no rights on the vectorfill schema.
TRIGGER_OPS = ("insert", "update", "delete", "truncate")
TRIGGER_VERSION = 3
"""Written into the trigger function's comment; a job whose function says otherwise (or
nothing: version 1 was row-level, 2 queued rows itself) is upgraded by
:func:`vectorfill.jobs.registry.upgrade_triggers`."""

#: Two-int advisory lock key (class, job id) that the absorber holds, transaction-level: one
#: absorber at a time per job, and nothing that adds or drops a version runs beside one.
ABSORB_LOCK_CLASS = 0x5646434C  # "VFCL"

_NEW, _OLD = "vf_new", "vf_old"


def trigger_function_name(job: Job) -> sql.Identifier:
    return sql.Identifier(SCHEMA, f"_trg_{job.id}")


def log_table(job: Job) -> sql.Identifier:
    """The job's change log, ``vectorfill._c_<job id>``."""
    return sql.Identifier(SCHEMA, f"_c_{job.id}")


def absorb_function_name(job: Job) -> sql.Identifier:
    return sql.Identifier(SCHEMA, f"_absorb_{job.id}")


def create_log_table(job: Job) -> sql.Composed:
    """The change log (no primary key: nothing looks a row up; the absorber takes them all).
    Also run by :func:`vectorfill.jobs.registry.upgrade_triggers` for jobs made before it."""
    log = log_table(job)
    arrays = [sql.Identifier(f"k{i + 1}") for i in range(len(job.key_columns))]
    return sql.SQL(
        """CREATE TABLE IF NOT EXISTS {log} (seq bigint NOT NULL, op "char" NOT NULL, {cols});
           {storage}"""
    ).format(
        log=log,
        cols=sql.SQL(", ").join(
            sql.SQL("{} {}[] NOT NULL").format(k, sql.SQL(t)) for k, t in zip(arrays, job.key_types, strict=True)
        ),
        storage=sql.SQL(" ").join(
            sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET STORAGE EXTERNAL;").format(log, k) for k in arrays
        ),
    )


def drop_log(job: Job) -> sql.Composed:
    return sql.SQL("DROP FUNCTION IF EXISTS {}(); DROP TABLE IF EXISTS {};").format(
        absorb_function_name(job), log_table(job)
    )


def absorb(job: Job) -> sql.Composed:
    """Fold the job's change log into every live version's queue; one row: how many keys.
    Run it in a transaction of its own, committed before what needs the result (autocommit)."""
    return sql.SQL("SELECT {}()").format(absorb_function_name(job))


def absorb_lock(job: Job) -> sql.Composed:
    """The absorber's lock, until the transaction ends (for changes of a job's versions)."""
    return sql.SQL("SELECT pg_advisory_xact_lock({}, {})").format(sql.Literal(ABSORB_LOCK_CLASS), sql.Literal(job.id))


def create_absorb_function(job: Job) -> sql.Composed:
    """``vectorfill._absorb_<job id>()``: fold the change log into the queues.

    Under the job's advisory lock (``ABSORB_LOCK_CLASS``, transaction-level: two absorbers of
    one job never run at once; the second waits and then finds the log empty), it deletes
    every log row its snapshot sees (``DELETE ... RETURNING``), and computes per key the
    log row with the highest ``seq`` and whether any of its rows was a 'D'. Then, for every
    live version (read from ``vectorfill.versions`` *after* taking the lock, so that a
    version added or dropped by a committed change is known; those changes take the lock
    too), in this order, each a statement of its own (``EXECUTE``, planned with the real
    number of keys):

    1. keys with a 'D': their queue rows are deleted (waiting for a store that holds them),
       then, in the next statements (fresh snapshots: a store that committed meanwhile is
       seen), their vectors (every chunk) and failure records;
    2. keys whose last row is an 'I': their queue rows get that row's ``seq`` (lease, attempts
       and error cleared: claimable again, and a store of the text in flight is discarded
       by its seq check), and keys the UPDATE did not find get one, in the same statement
       (a queue row a store deleted meanwhile is waited for by the UPDATE, found gone, and
       inserted anew); their failure records go.

    Why the order of the log is safe: two statements that touch the same key serialise on
    that key (row lock, or the unique index's check for an insert), and each takes its
    ``seq`` in its AFTER STATEMENT trigger, after its own row changes, so per key ``seq``
    order is commit order; and a snapshot that sees a later statement's log row sees every
    earlier one for that key. So the highest visible ``seq`` per key is the key's latest
    committed change. Each queue row's ``seq`` is a value never given to that key before
    (a log row is absorbed once), which is all the seq checks of claim/settle/fail rely on.
    """
    n = len(job.key_columns)
    types = list(job.key_types)
    k = [f"k{i + 1}" for i in range(n)]
    kid = [sql.Identifier(c) for c in k]
    log = log_table(job)
    job_id = sql.Literal(job.id)
    dvars = [sql.Identifier(f"d{i + 1}") for i in range(n)]
    ivars = [sql.Identifier(f"i{i + 1}") for i in range(n)]
    lvars = [sql.Identifier(f"l{i + 1}") for i in range(n)]  # keys whose last change is a delete

    def unnest(extra: bool) -> str:
        arrays = [f"${i + 1}::{t}[]" for i, t in enumerate(types)] + ([f"${n + 1}::bigint[]"] if extra else [])
        names = k + (["seq"] if extra else [])
        return f"unnest({', '.join(arrays)}) AS c({', '.join(names)})"

    match = " AND ".join(f"t.{c} = c.{c}" for c in k)
    # format() strings: %I is the version's table; everything else is fixed for the job
    del_q = f"DELETE FROM vectorfill.%I AS t USING {unnest(False)} WHERE {match}"
    # the keys queued already get the new seq; the others a queue row, in the same statement:
    # every row the UPDATE did not find is inserted (a row a store deleted meanwhile is
    # waited for by the UPDATE, then found gone; no other writer inserts queue rows while
    # the absorber's lock is held), so the queue is not probed twice
    u_match = " AND ".join(f"u.{c} = c.{c}" for c in k)
    upsert_q = (
        "WITH u AS (UPDATE vectorfill.%I AS t SET seq = c.seq, queued_at = now(), lease_until = NULL,"
        f" claimed_by = NULL, attempts = 0, last_error = NULL FROM {unnest(True)} WHERE {match}"
        f" RETURNING {', '.join('t.' + c for c in k)})"
        f" INSERT INTO vectorfill.%I ({', '.join(k)}, seq, queued_at) SELECT {', '.join('c.' + c for c in k)}, c.seq, now()"
        f" FROM {unnest(True)} WHERE NOT EXISTS (SELECT 1 FROM u WHERE {u_match})"
    )
    fkey = sql.SQL("jsonb_build_array({})").format(sql.SQL(", ").join(sql.SQL("c.{}").format(c) for c in kid))
    fail_del = sql.SQL(
        "DELETE FROM vectorfill.failures f USING {u} WHERE f.job_id = {j} AND f.row_key = {fkey}"
    ).format(u=sql.SQL(unnest(False)), j=job_id, fkey=fkey)

    def each_version(table: str, stmt: str, args: list[sql.Identifier], twice: bool = False) -> sql.Composed:
        name = sql.SQL("'_{}_' || {} || '_' || ver").format(sql.SQL(table), job_id)
        names = sql.SQL("{n}, {n}").format(n=name) if twice else name
        return sql.SQL("FOREACH ver IN ARRAY vers LOOP EXECUTE format({s}, {names}) USING {a}; END LOOP;").format(
            s=sql.Literal(stmt), names=names, a=sql.SQL(", ").join(args)
        )

    body = sql.SQL(
        """
        DECLARE {declare} iseq bigint[]; lseq bigint[]; n bigint; ver int; vers int[]; key_deferrable boolean;
        BEGIN
          IF NOT EXISTS (SELECT 1 FROM {log}) THEN
            RETURN 0;
          END IF;
          PERFORM pg_advisory_xact_lock({cls}, {j});
          -- a deferrable unique key lets a statement hold a key twice (checked at commit)
          key_deferrable := EXISTS (SELECT 1 FROM pg_catalog.pg_index
                                 WHERE indrelid = to_regclass({src_oid}) AND indisunique AND NOT indimmediate);
          -- one log row (one statement since the last absorb, the usual case) holds each key
          -- once: its keys are taken as they are; several are grouped by key
          WITH l AS (DELETE FROM {log} RETURNING seq, op, {kcols}),
               rows_ AS (SELECT count(*) AS log_rows FROM l),
               one AS (SELECT {uk}, l.seq * 2 + (l.op = 'D')::int AS last, l.op = 'D' AS deleted
                         FROM l CROSS JOIN LATERAL unnest({lk}) AS u({kcols})),
               grouped AS (SELECT {uk}, max(l.seq * 2 + (l.op = 'D')::int) AS last, bool_or(l.op = 'D') AS deleted
                             FROM l CROSS JOIN LATERAL unnest({lk}) AS u({kcols})
                            GROUP BY {uk}),
               e AS (SELECT * FROM one WHERE (SELECT log_rows FROM rows_) = 1 AND NOT key_deferrable
                     UNION ALL
                     SELECT * FROM grouped WHERE (SELECT log_rows FROM rows_) > 1 OR key_deferrable)
          SELECT {dagg}, {iagg}, array_agg(e.last / 2) FILTER (WHERE e.last % 2 = 0), {lagg},
                 array_agg(e.last / 2) FILTER (WHERE e.last % 2 = 1), count(*)
            INTO {dv}, {iv}, iseq, {lv}, lseq, n
            FROM e;
          IF coalesce(n, 0) = 0 THEN
            RETURN 0;
          END IF;
          IF key_deferrable AND {l1} IS NOT NULL THEN
            -- a key last seen deleted that a row holds now (a duplicate deleted before the
            -- commit) is queued, not forgotten
            SELECT {iext}, iseq || array_agg(c.seq) INTO {iv}, iseq
              FROM (SELECT * FROM {unnest_l}) c
             WHERE EXISTS (SELECT 1 FROM {src} s WHERE {src_match});  -- (x || NULL is x)
          END IF;
          SELECT coalesce(array_agg(version ORDER BY version), '{{}}') INTO vers
            FROM vectorfill.versions WHERE job_id = {j} AND state <> 'retired';
          IF {d1} IS NOT NULL THEN
            {del_q}
            {del_v}
            IF EXISTS (SELECT 1 FROM vectorfill.failures WHERE job_id = {j}) THEN
              EXECUTE {fail_del} USING {dv};
            END IF;
          END IF;
          IF {i1} IS NOT NULL THEN
            {upsert_q}
            IF EXISTS (SELECT 1 FROM vectorfill.failures WHERE job_id = {j}) THEN
              EXECUTE {fail_del} USING {iv};
            END IF;
          END IF;
          RETURN n;
        END
        """
    ).format(
        declare=sql.SQL(" ").join(
            sql.SQL("{} {}[];").format(v, sql.SQL(t))
            for v, t in zip(dvars + ivars + lvars, types + types + types, strict=True)
        ),
        src_oid=sql.Literal(sql.Identifier(job.source_schema, job.source_table).as_string()),
        lagg=sql.SQL(", ").join(sql.SQL("array_agg(e.{}) FILTER (WHERE e.last % 2 = 1)").format(c) for c in kid),
        lv=sql.SQL(", ").join(lvars),
        l1=lvars[0],
        iext=sql.SQL(", ").join(
            sql.SQL("{} || array_agg(c.{})").format(iv, c) for iv, c in zip(ivars, kid, strict=True)
        ),
        unnest_l=sql.SQL("unnest({}, lseq) AS c({}, seq)").format(sql.SQL(", ").join(lvars), sql.SQL(", ").join(kid)),
        src=sql.Identifier(job.source_schema, job.source_table),
        src_match=sql.SQL(" AND ").join(
            sql.SQL("s.{} = c.{}").format(sql.Identifier(sc), c) for sc, c in zip(job.key_columns, kid, strict=True)
        ),
        log=log,
        cls=sql.Literal(ABSORB_LOCK_CLASS),
        j=job_id,
        kcols=sql.SQL(", ").join(kid),
        uk=sql.SQL(", ").join(sql.SQL("u.{}").format(c) for c in kid),
        lk=sql.SQL(", ").join(sql.SQL("l.{}").format(c) for c in kid),
        dagg=sql.SQL(", ").join(sql.SQL("array_agg(e.{}) FILTER (WHERE e.deleted)").format(c) for c in kid),
        iagg=sql.SQL(", ").join(sql.SQL("array_agg(e.{}) FILTER (WHERE e.last % 2 = 0)").format(c) for c in kid),
        dv=sql.SQL(", ").join(dvars),
        iv=sql.SQL(", ").join(ivars),
        d1=dvars[0],
        i1=ivars[0],
        del_q=each_version("q", del_q, dvars),
        del_v=each_version("v", del_q, dvars),
        upsert_q=each_version("q", upsert_q, ivars + [sql.Identifier("iseq")], twice=True),
        fail_del=sql.Literal(fail_del.as_string()),
    )
    fn = absorb_function_name(job)
    return sql.SQL(
        """CREATE OR REPLACE FUNCTION {fn}() RETURNS bigint
           LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
           SET enable_seqscan = off SET work_mem = '32MB'
           AS {body}"""
    ).format(fn=fn, body=sql.Literal(body.as_string()))


def create_trigger_function(job: Job) -> sql.Composed:
    """The function the source table's triggers call: one change-log row per statement (and
    per 'D'/'I' side), or, on TRUNCATE, every live version's queue and vectors emptied.
    SECURITY DEFINER, so that an application role that may write the source table need not
    be granted the vectorfill schema."""
    jss = [JobSQL(job, v) for v in job.live_versions]
    n = len(job.key_columns)
    src_k = [sql.Identifier(c) for c in job.key_columns]
    texts = [sql.Identifier(c) for c in job.text_columns if c not in job.key_columns]
    types = [sql.SQL(t) for t in job.key_types]
    job_id = sql.Literal(job.id)
    log = log_table(job)
    kcols = sql.SQL(", ").join(sql.Identifier(f"k{i + 1}") for i in range(n))

    def on_keys(a: str, b: str) -> sql.Composed:
        return sql.SQL(" AND ").join(
            sql.SQL("{}.{} = {}.{}").format(sql.Identifier(a), c, sql.Identifier(b), c) for c in src_k
        )

    def log_all(op: str, table: str) -> sql.Composed:
        """One log row with every key of a transition table (none when it is empty)."""
        aggs = sql.SQL(", ").join(
            sql.SQL("array_agg(t.{}) AS {}").format(c, sql.Identifier(f"a{i + 1}")) for i, c in enumerate(src_k)
        )
        return sql.SQL(
            """INSERT INTO {log} (seq, op, {kcols})
               SELECT nextval('vectorfill.queue_seq'), {op}, {a}
                 FROM (SELECT {aggs} FROM {t} t) x WHERE x.a1 IS NOT NULL;"""
        ).format(
            log=log,
            kcols=kcols,
            op=sql.Literal(op),
            a=sql.SQL(", ").join(sql.Identifier("x", f"a{i + 1}") for i in range(n)),
            aggs=aggs,
            t=sql.Identifier(table),
        )

    def log_vars(op: str, names: list[sql.Identifier]) -> sql.Composed:
        return sql.SQL(
            "IF {v1} IS NOT NULL THEN INSERT INTO {log} (seq, op, {kcols}) VALUES (nextval('vectorfill.queue_seq'), {op}, {vs}); END IF;"
        ).format(v1=names[0], log=log, kcols=kcols, op=sql.Literal(op), vs=sql.SQL(", ").join(names))

    # UPDATE: one FULL JOIN of old and new rows by key, into arrays of keys gone and keys to queue
    gone = [sql.Identifier(f"gone{i + 1}") for i in range(n)]
    todo = [sql.Identifier(f"todo{i + 1}") for i in range(n)]
    first = src_k[0]
    changed = sql.SQL(" OR ").join(
        [sql.SQL("o.{} IS NULL").format(first)] + [sql.SQL("o.{c} IS DISTINCT FROM n.{c}").format(c=c) for c in texts]
    )
    diff = sql.SQL(
        """SELECT {gone_aggs}, {todo_aggs} INTO {vars}
             FROM {old} o FULL JOIN {new} n ON {on}
            WHERE n.{first} IS NULL OR {changed};"""
    ).format(
        vars=sql.SQL(", ").join(gone + todo),
        gone_aggs=sql.SQL(", ").join(
            sql.SQL("array_agg(o.{}) FILTER (WHERE n.{} IS NULL)").format(c, first) for c in src_k
        ),
        todo_aggs=sql.SQL(", ").join(
            sql.SQL("array_agg(n.{}) FILTER (WHERE n.{} IS NOT NULL)").format(c, first) for c in src_k
        ),
        old=sql.Identifier(_OLD),
        new=sql.Identifier(_NEW),
        on=on_keys("o", "n"),
        first=first,
        changed=changed,
    )
    on_update = sql.SQL("{diff}\n{gone}\n{todo}").format(diff=diff, gone=log_vars("D", gone), todo=log_vars("I", todo))
    declare = sql.SQL(" ").join(
        sql.SQL("{} {}[];").format(var, t) for var, t in zip(gone + todo, types + types, strict=True)
    )
    truncate: sql.Composable = sql.SQL(" ").join([sql.SQL("TRUNCATE {}, {};").format(js.q, js.v) for js in jss])
    # UPDATE, row-level (update_trigger = "row"): fired only when a key or text column changed.
    # The old key is forgotten only if no row holds it now (AFTER triggers fire once the whole
    # statement is done): a swap of two keys in one statement keeps both queued.
    old_k = [sql.SQL("OLD.{}").format(c) for c in src_k]
    new_k = [sql.SQL("NEW.{}").format(c) for c in src_k]
    key_changed = sql.SQL(" OR ").join(sql.SQL("OLD.{c} IS DISTINCT FROM NEW.{c}").format(c=c) for c in src_k)
    on_update_row = sql.SQL(
        """IF ({key_changed}) AND NOT EXISTS (SELECT 1 FROM {src} s WHERE {old_match}) THEN
             INSERT INTO {log} (seq, op, {kcols}) VALUES (nextval('vectorfill.queue_seq'), 'D', {old_arrays});
           END IF;
           INSERT INTO {log} (seq, op, {kcols}) VALUES (nextval('vectorfill.queue_seq'), 'I', {new_arrays});"""
    ).format(
        key_changed=key_changed,
        src=sql.Identifier(job.source_schema, job.source_table),
        old_match=sql.SQL(" AND ").join(sql.SQL("s.{c} = OLD.{c}").format(c=c) for c in src_k),
        log=log,
        kcols=kcols,
        old_arrays=sql.SQL(", ").join(sql.SQL("ARRAY[{}]").format(o) for o in old_k),
        new_arrays=sql.SQL(", ").join(sql.SQL("ARRAY[{}]").format(o) for o in new_k),
    )
    body = sql.SQL(
        """
        DECLARE {declare}
        BEGIN
          IF TG_LEVEL = 'ROW' THEN  -- UPDATE, update_trigger = row
            {on_update_row}
            RETURN NULL;
          END IF;
          IF TG_OP = 'INSERT' THEN
            {on_insert}
          ELSIF TG_OP = 'UPDATE' THEN
            {on_update}
          ELSIF TG_OP = 'DELETE' THEN
            {on_delete}
          ELSE
            {truncate}
            TRUNCATE {log};
            DELETE FROM vectorfill.failures WHERE job_id = {job_id};
          END IF;
          RETURN NULL;
        END
        """
    ).format(
        declare=declare,
        on_update_row=on_update_row,
        on_insert=log_all("I", _NEW),
        on_update=on_update,
        on_delete=log_all("D", _OLD),
        truncate=truncate,
        log=log,
        job_id=job_id,
    )
    fn = trigger_function_name(job)
    return sql.SQL(
        """CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger
           LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
           SET enable_mergejoin = off SET work_mem = '32MB'
           AS {body};
           COMMENT ON FUNCTION {fn}() IS {comment}"""
    ).format(fn=fn, body=sql.Literal(body.as_string()), comment=sql.Literal(f"vectorfill triggers v{TRIGGER_VERSION}"))


def trigger_names(job: Job) -> dict[str, sql.Identifier]:
    return {op: sql.Identifier(f"vectorfill_{job.name}_{op}") for op in TRIGGER_OPS}


def create_triggers(job: Job) -> sql.Composed:
    """Four triggers: INSERT, DELETE and TRUNCATE statement-level (the first two with transition
    tables); UPDATE statement-level with transition tables too, or row-level, firing only
    on a real change of a key or embedded column (job setting ``update_trigger``)."""
    names = trigger_names(job)
    src = sql.Identifier(job.source_schema, job.source_table)
    fn = trigger_function_name(job)
    new, old = sql.Identifier(_NEW), sql.Identifier(_OLD)
    if job.settings.update_trigger == "row":
        watched = list(dict.fromkeys(list(job.key_columns) + list(job.text_columns)))
        changed = sql.SQL(" OR ").join(
            sql.SQL("OLD.{c} IS DISTINCT FROM NEW.{c}").format(c=sql.Identifier(c)) for c in watched
        )
        update = sql.SQL(
            "CREATE TRIGGER {upd} AFTER UPDATE OF {cols} ON {src} FOR EACH ROW WHEN ({changed}) EXECUTE FUNCTION {fn}();"
        ).format(
            upd=names["update"],
            cols=sql.SQL(", ").join(map(sql.Identifier, watched)),
            src=src,
            changed=changed,
            fn=fn,
        )
    else:
        update = sql.SQL(
            """CREATE TRIGGER {upd} AFTER UPDATE ON {src} REFERENCING OLD TABLE AS {old} NEW TABLE AS {new}
               FOR EACH STATEMENT EXECUTE FUNCTION {fn}();"""
        ).format(upd=names["update"], src=src, old=old, new=new, fn=fn)
    return sql.SQL(
        """CREATE TRIGGER {ins} AFTER INSERT ON {src} REFERENCING NEW TABLE AS {new}
               FOR EACH STATEMENT EXECUTE FUNCTION {fn}();
           {update}
           CREATE TRIGGER {dele} AFTER DELETE ON {src} REFERENCING OLD TABLE AS {old}
               FOR EACH STATEMENT EXECUTE FUNCTION {fn}();
           CREATE TRIGGER {trunc} AFTER TRUNCATE ON {src} FOR EACH STATEMENT EXECUTE FUNCTION {fn}();"""
    ).format(
        ins=names["insert"],
        update=update,
        dele=names["delete"],
        trunc=names["truncate"],
        src=src,
        fn=fn,
        new=new,
        old=old,
    )


def drop_triggers(job: Job) -> sql.Composed:
    src = sql.Identifier(job.source_schema, job.source_table)
    stmts = [sql.SQL("DROP TRIGGER IF EXISTS {} ON {};").format(n, src) for n in trigger_names(job).values()]
    stmts.append(sql.SQL("DROP FUNCTION IF EXISTS {}();").format(trigger_function_name(job)))
    return sql.SQL(" ").join(stmts)


#: The version written in a job's trigger function comment (NULL: none, i.e. version 1).
TRIGGER_FUNCTION_VERSION = sql.SQL(
    """SELECT substring(obj_description(to_regprocedure(%(fn)s), 'pg_proc') FROM 'vectorfill triggers v([0-9]+)')::int"""
)


def view_name(job: Job) -> sql.Identifier:
    return sql.Identifier(SCHEMA, job.name)


def create_view(job: Job, version: Version) -> sql.Composed:
    """``vectorfill.<job>``: the active version's vectors, keyed like the source."""
    js = JobSQL(job, version)
    keys: sql.Composable
    if len(job.key_columns) == 1:
        keys = sql.SQL("v.k1 AS id")
    else:
        keys = sql.SQL(", ").join(
            sql.SQL("v.{} AS {}").format(k, sql.Identifier(c)) for k, c in zip(js.k, job.key_columns, strict=True)
        )
    # the semi-join hides the vectors of rows deleted whose deletion is still in the change
    # log (absorbed at the next claim or count): a probe of the source's key per row shown
    return sql.SQL(
        """DROP VIEW IF EXISTS {view};
           CREATE VIEW {view} AS
           SELECT {keys}, v.chunk_seq, v.chunk, v.embedding, v.model, v.embedded_at FROM {v} v
            WHERE EXISTS (SELECT 1 FROM {src} s WHERE {m})"""
    ).format(view=view_name(job), keys=keys, v=js.v, src=js.src, m=js._src_match("v"))


# ----------------------------------------------------------------- shared rate budgets
# Parameters: endpoint (vectorfill.budgets.endpoint_key, never a secret); rpm/tpm (the
# limits the caller asserts, NULL for none); requests/tokens (how much it wants or gives
# back); seconds (a pause). Levels are float8: the refill is continuous.

#: Make the endpoint's row, full, unless it exists.
BUDGET_ENSURE = sql.SQL(
    """INSERT INTO vectorfill.budgets (endpoint, rpm, tpm, requests, tokens)
       VALUES (%(endpoint)s, %(rpm)s::float8, %(tpm)s::float8,
               coalesce(%(rpm)s::float8, 0), coalesce(%(tpm)s::float8, 0))
       ON CONFLICT (endpoint) DO NOTHING"""
)

_REFILLED = "least({cap}, {level} + extract(epoch FROM {t} - {updated})::float8 * {cap} / 60)"

#: Take up to ``requests``/``tokens`` from the endpoint's buckets, after refilling them; one
#: row (granted requests and tokens, the levels left, the limits in force and the seconds
#: of pause left), or none when the row does not exist yet (run :data:`BUDGET_ENSURE`).
#:
#: The limits in force are the lowest any lease asserted in the last 60 seconds, per kind:
#: a run configured higher than another on the same endpoint is held to the other's limit
#: while that one is working, and gets its own a minute after it stopped. A kind with no
#: limit (NULL) grants whatever is asked.
#:
#: Locking: the ``cur`` CTE locks the row ``FOR UPDATE``; see the module docstring.
BUDGET_LEASE = sql.SQL(
    """WITH cur AS (
           SELECT b.endpoint, b.requests, b.tokens, b.updated_at, b.paused_until,
                  b.rpm_set_at, b.tpm_set_at,
                  greatest(statement_timestamp(), b.updated_at) AS t,
                  CASE WHEN b.rpm_set_at > statement_timestamp() - interval '60 seconds'
                       THEN least(b.rpm, %(rpm)s::float8) ELSE %(rpm)s::float8 END AS rpm,
                  CASE WHEN b.tpm_set_at > statement_timestamp() - interval '60 seconds'
                       THEN least(b.tpm, %(tpm)s::float8) ELSE %(tpm)s::float8 END AS tpm
             FROM vectorfill.budgets b
            WHERE b.endpoint = %(endpoint)s
              FOR UPDATE
       ), refilled AS (
           SELECT cur.*, """
    + _REFILLED.format(cap="cur.rpm", level="cur.requests", t="cur.t", updated="cur.updated_at")
    + """ AS requests_now, """
    + _REFILLED.format(cap="cur.tpm", level="cur.tokens", t="cur.t", updated="cur.updated_at")
    + """ AS tokens_now
             FROM cur
       ), granted AS (
           SELECT r.*,
                  CASE WHEN r.rpm IS NULL THEN %(requests)s::float8
                       ELSE least(%(requests)s::float8, greatest(r.requests_now, 0)) END AS got_requests,
                  CASE WHEN r.tpm IS NULL THEN %(tokens)s::float8
                       ELSE least(%(tokens)s::float8, greatest(r.tokens_now, 0)) END AS got_tokens
             FROM refilled r
       )
       UPDATE vectorfill.budgets b
          SET rpm = g.rpm,
              tpm = g.tpm,
              requests = coalesce(g.requests_now - g.got_requests, 0),
              tokens = coalesce(g.tokens_now - g.got_tokens, 0),
              updated_at = g.t,
              rpm_set_at = CASE WHEN g.rpm IS NOT DISTINCT FROM %(rpm)s::float8 THEN g.t ELSE g.rpm_set_at END,
              tpm_set_at = CASE WHEN g.tpm IS NOT DISTINCT FROM %(tpm)s::float8 THEN g.t ELSE g.tpm_set_at END
         FROM granted g
        WHERE b.endpoint = g.endpoint
    RETURNING g.got_requests, g.got_tokens, b.requests, b.tokens, b.rpm, b.tpm,
              extract(epoch FROM greatest(b.paused_until, g.t) - g.t)::float8"""
)

_NOW = "greatest(statement_timestamp(), b.updated_at)"

#: Put unspent budget back (``requests``/``tokens``; a negative amount is a debt, charged):
#: refill, add, cap at the limit.
BUDGET_GIVE_BACK = sql.SQL(
    """UPDATE vectorfill.budgets b
          SET requests = CASE WHEN b.rpm IS NULL THEN 0 ELSE least(b.rpm, """
    + _REFILLED.format(cap="b.rpm", level="b.requests", t=_NOW, updated="b.updated_at")
    + """ + %(requests)s::float8) END,
              tokens = CASE WHEN b.tpm IS NULL THEN 0 ELSE least(b.tpm, """
    + _REFILLED.format(cap="b.tpm", level="b.tokens", t=_NOW, updated="b.updated_at")
    + """ + %(tokens)s::float8) END,
              updated_at = """
    + _NOW
    + """
        WHERE b.endpoint = %(endpoint)s"""
)

#: The provider refused a request (429): every run on the endpoint pauses ``seconds`` (from
#: its next lease on), and the buckets are emptied: the provider has less than they said.
BUDGET_PAUSE = sql.SQL(
    """UPDATE vectorfill.budgets b
          SET paused_until = greatest(b.paused_until,
                                      statement_timestamp() + make_interval(secs => %(seconds)s::float8)),
              requests = CASE WHEN b.rpm IS NULL THEN 0 ELSE least(0, """
    + _REFILLED.format(cap="b.rpm", level="b.requests", t=_NOW, updated="b.updated_at")
    + """) END,
              tokens = CASE WHEN b.tpm IS NULL THEN 0 ELSE least(0, """
    + _REFILLED.format(cap="b.tpm", level="b.tokens", t=_NOW, updated="b.updated_at")
    + """) END,
              updated_at = """
    + _NOW
    + """
        WHERE b.endpoint = %(endpoint)s"""
)


# ---------------------------------------------------------------------------------------------
# Endpoint capabilities (vectorfill.endpoint_caps, migration 0005): per-request limits and the
# encoding an endpoint was found to accept, learnt from its refusals, shared by every run.
# Parameters by name: endpoint, max_inputs, max_request_tokens, encoding_format, evidence.
# A learnt limit only ever lowers the one remembered (least); NULL keeps what is there.

#: The endpoint's remembered limits: max_inputs, max_request_tokens, encoding_format.
ENDPOINT_CAPS = sql.SQL(
    """SELECT max_inputs, max_request_tokens, encoding_format
         FROM vectorfill.endpoint_caps WHERE endpoint = %(endpoint)s"""
)

#: Remember what a refusal taught (limits lowered, never raised; the encoding replaced).
REMEMBER_ENDPOINT_CAPS = sql.SQL(
    """INSERT INTO vectorfill.endpoint_caps AS c
              (endpoint, max_inputs, max_request_tokens, encoding_format, evidence)
       VALUES (%(endpoint)s, %(max_inputs)s, %(max_request_tokens)s, %(encoding_format)s, %(evidence)s)
       ON CONFLICT (endpoint) DO UPDATE
          SET max_inputs = CASE WHEN EXCLUDED.max_inputs IS NULL THEN c.max_inputs
                                ELSE least(c.max_inputs, EXCLUDED.max_inputs) END,
              max_request_tokens = CASE WHEN EXCLUDED.max_request_tokens IS NULL THEN c.max_request_tokens
                                        ELSE least(c.max_request_tokens, EXCLUDED.max_request_tokens) END,
              encoding_format = coalesce(EXCLUDED.encoding_format, c.encoding_format),
              evidence = coalesce(EXCLUDED.evidence, c.evidence),
              learned_at = clock_timestamp()"""
)

#: Forget what was learnt about an endpoint (the server was upgraded or reconfigured).
FORGET_ENDPOINT_CAPS = sql.SQL("DELETE FROM vectorfill.endpoint_caps WHERE endpoint = %(endpoint)s")


def refund_attempts(js: JobSQL) -> sql.Composed:
    """Take back the attempt a run's claim counted on every row it still holds, when the run
    stops for a reason that is no row's fault (a refused request, a wrong key): rows that
    wait for a fixed setting never reach ``max_attempts`` for it. Parameter: run token."""
    return sql.SQL("UPDATE {q} SET attempts = greatest(attempts - 1, 0) WHERE claimed_by = %s AND attempts > 0").format(
        q=js.q
    )


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


def batch_items_insert(js: JobSQL) -> sql.Composed:
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


def batch_items_read(js: JobSQL) -> sql.Composed:
    """A submission's inputs, typed keys first: ``k1..kn, req, pos, seq, input_hash, tokens``.
    Parameter: the submission id."""
    keys = sql.SQL(", ").join(sql.SQL("(i.row_key->>{})::{}").format(sql.Literal(n), t) for n, t in enumerate(js.types))
    return sql.SQL(
        """SELECT {keys}, i.req, i.pos, i.seq, i.input_hash, i.tokens
             FROM vectorfill.batch_items i WHERE i.batch_id = %s ORDER BY i.req, i.pos"""
    ).format(keys=keys)


def batch_give_back(js: JobSQL) -> sql.Composed:
    """Free every row a submission still holds, its claim not counted as an attempt (the
    batch never ran: not sent, or refused as a whole). Parameters: error, submission id."""
    return sql.SQL(
        """UPDATE {q} SET lease_until = NULL, claimed_by = NULL, attempts = greatest(attempts - 1, 0),
                          last_error = %s
            WHERE claimed_by = %s"""
    ).format(q=js.q)


def batch_give_back_keys(js: JobSQL) -> sql.Composed:
    """:func:`batch_give_back` for some rows only (those that did not fit a file).
    Parameters: key arrays, then the submission id."""
    return sql.SQL(
        """UPDATE {q} q SET lease_until = NULL, claimed_by = NULL, attempts = greatest(q.attempts - 1, 0)
             FROM {unnest} WHERE {match} AND q.claimed_by = %s"""
    ).format(q=js.q, unnest=js._unnest([]), match=js._match("q", "c"))


# ----------------------------------------------------------------- re-embed catch-up and continuous sync
# (issue 11: a re-embed switches as soon as the new version is at least as complete as the
# active one; `vectorfill serve --sync` polls the queues instead of waiting for a schedule)


def behind(new: JobSQL, active: JobSQL) -> sql.Composed:
    """What the new version lacks that the active one has: rows queued in ``new``, or
    failed there (other than rows with no text), whose vector in ``active`` is up to date
    (stored, and not queued again). Zero for both means no reader loses a fresh vector
    when the view moves to ``new``; rows queued in both stay queued in ``new``.

    Index look-ups per queued and failed row of ``new`` (run it when that queue is small:
    :func:`vectorfill.jobs.versions.complete` looks at the plain counts first).
    Parameters: job_id, version (the new one's)."""
    failed_keys = [
        sql.SQL("v.{} = (f.row_key->>{})::{}").format(k, sql.Literal(i), t)
        for i, (k, t) in enumerate(zip(active.k, active.types, strict=True))
    ]
    return sql.SQL(
        """SELECT (SELECT count(*) FROM {qn} n
                    WHERE EXISTS (SELECT 1 FROM {va} v WHERE {vn} AND v.chunk_seq = 0)
                      AND NOT EXISTS (SELECT 1 FROM {qa} a WHERE {an})) AS queued,
                  (SELECT count(*) FROM vectorfill.failures f
                    WHERE f.job_id = %(job_id)s AND f.version = %(version)s AND f.reason <> 'empty_text'
                      AND EXISTS (SELECT 1 FROM {va} v
                                   WHERE {fv} AND v.chunk_seq = 0
                                     AND NOT EXISTS (SELECT 1 FROM {qa} a WHERE {av}))) AS failed"""
    ).format(
        qn=new.q,
        va=active.v,
        qa=active.q,
        vn=new._match("v", "n"),
        an=new._match("a", "n"),
        fv=sql.SQL(" AND ").join(failed_keys),
        av=new._match("a", "v"),
    )


def sync_poll(queues: list[JobSQL]) -> sql.Composed:
    """One row: the job's versions as ``version:state,...`` (a change means set-model, a
    switch, a pause or an abandon happened: the sync loop reloads the job), then for each
    queue whether it holds a row a claim would take now (not leased, or its lease expired).

    ``EXISTS`` stops at the first such row: on an idle queue (empty, or holding only rows
    leased by a run) it costs next to nothing, so the sync loop runs this every few hundred
    milliseconds, on one connection for all of a job's versions. Parameter: job_id."""
    exists = [
        sql.SQL("EXISTS (SELECT 1 FROM {q} WHERE lease_until IS NULL OR lease_until < now())").format(q=js.q)
        for js in queues
    ]
    if queues:  # changes not absorbed yet are work too (the claim absorbs them)
        exists.append(sql.SQL("EXISTS (SELECT 1 FROM {})").format(log_table(queues[0].job)))
    return sql.SQL(
        """SELECT (SELECT coalesce(string_agg(version::text || ':' || state, ',' ORDER BY version), '')
                     FROM vectorfill.versions WHERE job_id = %(job_id)s){}"""
    ).format(sql.SQL("").join(sql.SQL(", {}").format(e) for e in exists))
