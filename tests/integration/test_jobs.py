"""Job creation and the schema: clear errors for bad sources, migrations up and down."""

from __future__ import annotations

import psycopg
import pytest

from vectorfill.errors import ConfigError, JobError, SourceError
from vectorfill.storage.db import connect, current_revision, head_revision, migrate


@pytest.fixture
def db(migrated_db):
    with connect(migrated_db) as conn:
        conn.execute("CREATE TABLE articles (id bigint PRIMARY KEY, title text, body text)")
        conn.execute("INSERT INTO articles SELECT g, 't' || g, 'b' || g FROM generate_series(1, 10) g")
    return migrated_db


def create(url, **kw):
    from vectorfill.jobs.registry import create_job

    args = dict(
        name="docs",
        table="articles",
        text_columns=["body"],
        template=None,
        key_columns=None,
        model="m",
        base_url="http://127.0.0.1:1/v1",
        api_key_env=None,
    )
    args.update(kw)
    with connect(url) as conn:
        return create_job(conn, **args)


def triggers_on(url, table="articles"):
    with connect(url) as conn:
        return sorted(
            r[0]
            for r in conn.execute(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal", (table,)
            )
        )


def test_migrations_upgrade_and_downgrade_leave_no_trace_on_user_tables(db):
    assert current_revision(db) == head_revision()
    create(db)
    assert len(triggers_on(db)) == 4
    assert migrate(db, "base", downgrade=True) is None
    assert triggers_on(db) == []
    with connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'vectorfill'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM articles").fetchone()[0] == 10, "user data untouched"
        conn.execute("INSERT INTO articles VALUES (11, 'x', 'y')")  # no dangling trigger function
    assert migrate(db) == head_revision()
    create(db)  # and a job can be created again


def test_migrate_is_idempotent(db):
    assert migrate(db) == head_revision()
    assert migrate(db) == head_revision()


def test_the_budgets_migration_goes_down_and_up(db):
    def budgets_table():
        with connect(db) as conn:
            return conn.execute("SELECT to_regclass('vectorfill.budgets')").fetchone()[0]

    assert budgets_table() == "vectorfill.budgets"
    assert migrate(db, "0001", downgrade=True) == "0001"
    assert budgets_table() is None
    assert migrate(db) == head_revision()
    assert budgets_table() == "vectorfill.budgets"


def test_the_endpoint_caps_migration_goes_down_and_up(db):
    def caps_table():
        with connect(db) as conn:
            return conn.execute("SELECT to_regclass('vectorfill.endpoint_caps')").fetchone()[0]

    assert caps_table() == "vectorfill.endpoint_caps"
    assert migrate(db, "0002", downgrade=True) == "0002"
    assert caps_table() is None
    assert migrate(db) == head_revision()
    assert caps_table() == "vectorfill.endpoint_caps"


def test_job_created_twice_is_a_clear_error(db):
    create(db)
    with pytest.raises(JobError, match="exists already"):
        create(db)


def test_missing_table_is_a_clear_error(db):
    with pytest.raises(SourceError, match=r"source table public\.nope does not exist"):
        create(db, table="nope")


def test_missing_column_lists_the_real_columns(db):
    with pytest.raises(SourceError, match=r"no column 'bdy'.*id, title, body"):
        create(db, text_columns=["bdy"])


def test_template_naming_a_missing_column_is_a_clear_error(db):
    with pytest.raises(SourceError, match="no column 'summary'"):
        create(db, text_columns=None, template="{title}: {summary}")


def test_identifiers_that_try_sql_injection_are_treated_as_names(db):
    evil = "articles; DROP TABLE articles; --"
    with pytest.raises(SourceError, match="does not exist"):
        create(db, table=evil)
    with pytest.raises(SourceError, match="no column"):
        create(db, text_columns=['body"; DROP TABLE articles; --'])
    with connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM articles").fetchone()[0] == 10


def test_a_table_with_strange_but_legal_names_works(db):
    with connect(db) as conn:
        conn.execute('CREATE SCHEMA "My Schema"')
        conn.execute('CREATE TABLE "My Schema"."Odd ""Table""" ("Key" int PRIMARY KEY, "the text" text)')
        conn.execute('INSERT INTO "My Schema"."Odd ""Table""" VALUES (1, \'hello\')')
    create(db, name="odd", table='My Schema.Odd "Table"', text_columns=["the text"])
    with connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM vectorfill._q_1_1").fetchone()[0] == 1


def test_table_without_primary_key_needs_a_unique_not_null_id(db):
    with connect(db) as conn:
        conn.execute("CREATE TABLE loose (slug text, body text)")
    with pytest.raises(SourceError, match="has no primary key; pass --id"):
        create(db, table="loose")
    with pytest.raises(SourceError, match="not unique"):
        create(db, table="loose", key_columns=["slug"])
    with connect(db) as conn:
        conn.execute("CREATE UNIQUE INDEX ON loose (slug)")
    with pytest.raises(SourceError, match="may be NULL"):
        create(db, table="loose", key_columns=["slug"])
    with connect(db) as conn:
        conn.execute("ALTER TABLE loose ALTER COLUMN slug SET NOT NULL")
    create(db, table="loose", key_columns=["slug"])


@pytest.mark.parametrize("name", ["Docs", "1docs", "jobs", "a-b", "x" * 41, ""])
def test_bad_job_names_are_refused(db, name):
    with pytest.raises(ConfigError):
        create(db, name=name)


def test_api_key_itself_is_refused_where_a_variable_name_is_expected(db):
    with pytest.raises(ConfigError, match="NAME of an environment variable"):
        create(db, api_key_env="sk-live-abc123-xyz")


def test_job_commands_need_the_schema(fresh_db):
    with pytest.raises(JobError, match="run `vectorfill migrate` first"):
        create(fresh_db)


def test_dropping_a_job_removes_triggers_and_vectors_but_not_rows(db):
    from vectorfill.jobs.registry import drop_job

    create(db)
    with connect(db) as conn:
        drop_job(conn, "docs")
    assert triggers_on(db) == []
    with connect(db) as conn:
        assert conn.execute("SELECT to_regclass('vectorfill.docs')").fetchone()[0] is None
        assert conn.execute("SELECT count(*) FROM articles").fetchone()[0] == 10


def test_source_writes_work_for_a_role_without_rights_on_the_vectorfill_schema(db):
    create(db)
    with connect(db) as conn:
        conn.execute("CREATE ROLE app_writer LOGIN")
        conn.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON articles TO app_writer")
    with psycopg.connect(db) as conn:
        conn.execute("SET ROLE app_writer")
        conn.execute("INSERT INTO articles VALUES (99, 't', 'b')")
        conn.execute("UPDATE articles SET body = 'changed' WHERE id = 1")
        conn.execute("DELETE FROM articles WHERE id = 2")
    with connect(db) as conn:
        conn.execute("SELECT vectorfill._absorb_1()")  # the change log into the queue, as a claim does
        queued = {r[0] for r in conn.execute("SELECT k1 FROM vectorfill._q_1_1")}
    assert 99 in queued and 1 in queued and 2 not in queued


def test_truncating_the_source_empties_queue_and_vectors(db):
    create(db)
    with connect(db) as conn:
        conn.execute("TRUNCATE articles")
        assert conn.execute("SELECT count(*) FROM vectorfill._q_1_1").fetchone()[0] == 0


def test_dropped_source_table_gives_a_clear_error_at_backfill(db, monkeypatch, prefect_server):
    import asyncio

    from vectorfill.flows.backfill import backfill

    create(db)
    with connect(db) as conn:
        conn.execute("ALTER TABLE articles RENAME TO articles_old")
    monkeypatch.setenv("VECTORFILL_DATABASE_URL", db)
    with pytest.raises(SourceError, match="no longer exists"):
        asyncio.run(backfill("docs"))


def test_index_is_suggested_for_big_tables_and_search_finds_the_row_through_it(env, monkeypatch):
    from psycopg import sql as pgsql

    import vectorfill.jobs.search as search_mod
    from vectorfill.jobs.registry import load_job
    from vectorfill.storage import sql

    env.make_table(300)
    env.create_job()
    env.backfill()
    with env.connect() as conn:
        assert not search_mod.index_suggested(conn, "docs")  # 300 rows: no index needed
        monkeypatch.setattr(search_mod, "INDEX_SUGGESTION_ROWS", 100)
        assert search_mod.index_suggested(conn, "docs")
    notices: list[str] = []
    name = search_mod.create_index(env.url, "docs", memory="96MB", notices=notices)
    assert name == "vectorfill._v_1_1_hnsw"
    text = env.texts()[5]
    with env.connect() as conn:
        assert not search_mod.index_suggested(conn, "docs")
        conn.execute("SET enable_seqscan = off")
        hits = search_mod.search(conn, "docs", text, k=3)
        job = load_job(conn, "docs")
        plan = conn.execute(
            pgsql.SQL("EXPLAIN ") + sql.JobSQL(job, job.active).search(),
            {"q": env.provider.expected_vector(text), "k": 3},
        ).fetchall()
    assert hits[0].id == 5 and hits[0].distance < 1e-5 and hits[0].text == text
    assert any("_v_1_1_hnsw" in line for (line,) in plan), "the search's ORDER BY ... LIMIT uses the index"
