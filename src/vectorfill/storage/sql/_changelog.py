"""The job's change log (``_c_<job>``) and its absorber (``_absorb_<job>()``).

Locking
-------
* The **triggers** (:mod:`._triggers`) write no queue row: each statement appends ONE row
  to the job's change log (a new ``seq`` from the global sequence, taken in the AFTER
  STATEMENT trigger, so after the statement's own row locks; ``op`` 'I' for keys to queue,
  'D' for keys to forget; the keys as arrays).
* The **absorber** (:func:`create_absorb_function`) folds the log into every live
  version's queue. It holds a per-job advisory lock until its transaction commits, so two
  absorbers never run at once (the second waits, then sees the log rows the first deleted
  as gone), and every change of a job's versions (set-model, switch, abandon, drop, retry)
  takes the same lock (:func:`absorb_lock`), after the source's lock, so the absorber
  never works from a stale list of versions. It takes every log row its snapshot sees
  (``DELETE ... RETURNING``, in the same transaction as its queue writes: a crash loses
  nothing) and applies, per key, its highest-``seq`` row, plus a delete when any row was a
  'D'. That is the key's latest committed change: two statements that touch one key
  serialise on it (row lock, or the unique index's check for an insert), so per key
  ``seq`` order is commit order, and a snapshot that sees a later statement's log row sees
  every earlier one for that key. Each queue row's ``seq`` is a value never given to that
  key before (a log row is absorbed once), which is all the seq checks rely on. It runs
  before every claim, before every store's settle, before counts (status, progress,
  estimate) and before set-model queues a new version's rows (under the source's lock).
* A **row edited while in flight**: the store absorbs before it settles, so an edit
  committed before that has moved the row's ``seq`` and the stale vector is discarded (the
  row stays queued for its new text); an edit committed after it is absorbed later and
  queues the row again, so the vector of the old text, stored meanwhile, is replaced.
* A **delete** (absorbed; or the old key of a key change) removes the key's queue rows
  first (waiting for any store that holds them) and then its vectors, in separate
  statements with a fresh snapshot each, so a concurrent store cannot leave a vector
  behind for a deleted row.
"""

from __future__ import annotations

from psycopg import sql

from vectorfill.records import Job
from vectorfill.storage.sql._compose import SCHEMA

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
:func:`vectorfill.storage.jobs.upgrade_triggers`."""

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
    Also run by :func:`vectorfill.storage.jobs.upgrade_triggers` for jobs made before it."""
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
