"""The source table's triggers and their function (one per job), which append to the
change log (:mod:`._changelog`); see the comment there for why each statement is shaped as
it is."""

from __future__ import annotations

from psycopg import sql

from vectorfill.records import Job
from vectorfill.storage.sql._changelog import _NEW, _OLD, TRIGGER_OPS, TRIGGER_VERSION, log_table, trigger_function_name
from vectorfill.storage.sql._compose import JobTables


def create_trigger_function(job: Job) -> sql.Composed:
    """The function the source table's triggers call: one change-log row per statement (and
    per 'D'/'I' side), or, on TRUNCATE, every live version's queue and vectors emptied.
    SECURITY DEFINER, so that an application role that may write the source table need not
    be granted the vectorfill schema."""
    jss = [JobTables(job, v) for v in job.live_versions]
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
