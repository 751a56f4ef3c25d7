"""The source table's statement-level triggers: what bulk statements queue, key changes,
both versions kept in step, and the upgrade of jobs made with the older row-level triggers."""

from __future__ import annotations

import time

import psycopg
import pytest

from vectorfill.storage.db import connect, head_revision, migrate


@pytest.fixture
def db(migrated_db):
    with connect(migrated_db) as conn:
        # deferrable, so that a statement may swap two keys
        conn.execute(
            "CREATE TABLE articles (id bigint PRIMARY KEY DEFERRABLE, title text, body text, views int DEFAULT 0)"
        )
        conn.execute("INSERT INTO articles SELECT g, 't' || g, 'b' || g FROM generate_series(1, 10) g")
    return migrated_db


def create(url, **kw):
    from vectorfill.jobs.registry import create_job

    args = dict(
        name="docs",
        table="articles",
        text_columns=None,
        template="{title}\n\n{body}",
        key_columns=None,
        model="m",
        base_url="http://127.0.0.1:1/v1",
        api_key_env=None,
    )
    args.update(kw)
    with connect(url) as conn:
        return create_job(conn, **args)


def absorb(conn, job_id: int = 1) -> int:
    """Fold the job's change log into its queues (what a claim or a count does first)."""
    return conn.execute(f"SELECT vectorfill._absorb_{job_id}()").fetchone()[0]


def queue(url, table="_q_1_1") -> dict[int, int]:
    with connect(url) as conn:
        absorb(conn)
        return dict(conn.execute(f"SELECT k1, seq FROM vectorfill.{table}").fetchall())


def drain(url, table="_q_1_1") -> None:
    with connect(url) as conn:
        absorb(conn)
        conn.execute(f"DELETE FROM vectorfill.{table}")


@pytest.mark.slow
def test_bulk_statements_queue_exactly_the_rows_whose_embedded_text_changed(db):
    create(db)
    drain(db)
    with connect(db) as conn:
        conn.execute(
            "INSERT INTO articles (id, title, body) SELECT g, 't' || g, 'b' || g FROM generate_series(11, 2000) g"
        )
    assert set(queue(db)) == set(range(11, 2001))
    drain(db)
    with connect(db) as conn:
        conn.execute("UPDATE articles SET views = views + 1")  # a column the job does not embed
        conn.execute("UPDATE articles SET title = title, body = body")  # embedded columns, same values
        conn.execute("UPDATE articles SET body = body WHERE id < 100")
    assert queue(db) == {}, "no real change, nothing queued"
    with connect(db) as conn:
        conn.execute("UPDATE articles SET body = body || '!' WHERE id % 2 = 0")
        conn.execute("UPDATE articles SET title = NULL WHERE id = 7")  # to NULL is a change too
    first = queue(db)
    assert set(first) == {i for i in range(1, 2001) if i % 2 == 0} | {7}
    with connect(db) as conn:
        conn.execute("UPDATE articles SET body = body || '?' WHERE id = 4")
    assert queue(db)[4] > first[4], "a new change of a queued row gets a new seq"
    assert all(queue(db)[k] == s for k, s in first.items() if k != 4)


def test_a_key_change_is_a_delete_plus_an_insert_and_a_swap_comes_out_right(db):
    create(db)
    drain(db)
    with connect(db) as conn:
        conn.execute(
            """INSERT INTO vectorfill._v_1_1 (k1, embedding, input_hash, model)
               SELECT id, '[1,2,3]', '\\x00', 'm' FROM articles"""
        )
        conn.execute("UPDATE articles SET id = 100 WHERE id = 3")
        conn.execute("UPDATE articles SET id = 3 - id WHERE id IN (1, 2)")  # swap keys, texts differ
        absorb(conn)
        vectors = {r[0] for r in conn.execute("SELECT k1 FROM vectorfill._v_1_1")}
    assert set(queue(db)) == {100, 1, 2}, "the new key and both swapped keys are queued"
    assert 3 not in vectors, "the old key's vector is gone"
    assert {1, 2, 4} <= vectors, "swapped keys keep their (stale) vectors until re-embedded"


def test_a_swap_of_rows_with_the_same_text_queues_nothing(db):
    create(db)
    with connect(db) as conn:
        conn.execute("UPDATE articles SET title = 'same', body = 'same' WHERE id IN (1, 2)")
    drain(db)
    with connect(db) as conn:
        conn.execute("UPDATE articles SET id = 3 - id WHERE id IN (1, 2)")
    assert queue(db) == {}, "each key still has the text its vector was made from"


def test_bulk_delete_removes_queue_rows_vectors_and_failure_records(db):
    create(db)
    with connect(db) as conn:
        conn.execute(
            """INSERT INTO vectorfill._v_1_1 (k1, embedding, input_hash, model)
               SELECT id, '[1,2,3]', '\\x00', 'm' FROM articles"""
        )
        conn.execute(
            """INSERT INTO vectorfill.failures (job_id, version, row_key, reason, message)
               VALUES (1, 1, '[2]', 'empty_text', 'x'), (1, 1, '[9]', 'empty_text', 'x')"""
        )
        conn.execute("DELETE FROM articles WHERE id <= 5")
        absorb(conn)
        vectors = {r[0] for r in conn.execute("SELECT k1 FROM vectorfill._v_1_1")}
        failures = {r[0] for r in conn.execute("SELECT row_key->>0 FROM vectorfill.failures")}
    assert set(queue(db)) == {6, 7, 8, 9, 10}
    assert vectors == {6, 7, 8, 9, 10}
    assert failures == {"9"}


def test_both_versions_stay_in_step_through_bulk_statements(db):
    from vectorfill.jobs.versions import set_model

    create(db)
    with connect(db) as conn:
        set_model(conn, "docs", model="m2")
    drain(db, "_q_1_1")
    drain(db, "_q_1_2")
    with connect(db) as conn:
        conn.execute("INSERT INTO articles (id, title, body) SELECT g, 't', 'b' FROM generate_series(11, 500) g")
        conn.execute("UPDATE articles SET body = 'new' WHERE id BETWEEN 1 AND 5")
        conn.execute("UPDATE articles SET id = id + 1000 WHERE id = 6")
        conn.execute("DELETE FROM articles WHERE id BETWEEN 400 AND 500")
    expected = set(range(1, 6)) | {1006} | set(range(11, 400))
    assert set(queue(db, "_q_1_1")) == expected
    assert set(queue(db, "_q_1_2")) == expected


def test_source_writes_by_a_role_without_rights_on_the_vectorfill_schema_use_the_new_triggers(db):
    create(db)
    drain(db)
    with connect(db) as conn:
        conn.execute("CREATE ROLE bulk_writer LOGIN")
        conn.execute("GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON articles TO bulk_writer")
    with psycopg.connect(db) as conn:
        conn.execute("SET ROLE bulk_writer")
        conn.execute("INSERT INTO articles (id, title, body) SELECT g, 't', 'b' FROM generate_series(11, 100) g")
        conn.execute("UPDATE articles SET body = 'changed' WHERE id <= 3")
        conn.execute("UPDATE articles SET id = 1000 WHERE id = 4")
        conn.execute("DELETE FROM articles WHERE id BETWEEN 50 AND 100")
    assert set(queue(db)) == {1, 2, 3, 1000} | set(range(11, 50))
    with psycopg.connect(db) as conn:
        conn.execute("SET ROLE bulk_writer")
        conn.execute("TRUNCATE articles")
    assert queue(db) == {}


def _install_row_level_triggers(url) -> None:
    """The shape of the triggers of version 1 (row-level, no version in the comment)."""
    with connect(url) as conn:
        for op in ("insert", "update", "delete", "truncate"):
            conn.execute(f"DROP TRIGGER vectorfill_docs_{op} ON articles")
        conn.execute(
            """CREATE OR REPLACE FUNCTION vectorfill._trg_1() RETURNS trigger LANGUAGE plpgsql
               SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
               BEGIN
                 IF TG_OP = 'TRUNCATE' THEN TRUNCATE vectorfill._q_1_1, vectorfill._v_1_1; RETURN NULL; END IF;
                 IF TG_OP = 'DELETE' THEN DELETE FROM vectorfill._q_1_1 WHERE k1 = OLD.id; RETURN OLD; END IF;
                 INSERT INTO vectorfill._q_1_1 (k1, seq) VALUES (NEW.id, nextval('vectorfill.queue_seq'))
                 ON CONFLICT (k1) DO UPDATE SET seq = EXCLUDED.seq;
                 RETURN NEW;
               END $$"""
        )
        conn.execute("COMMENT ON FUNCTION vectorfill._trg_1() IS NULL")
        conn.execute(
            "CREATE TRIGGER vectorfill_docs_insert AFTER INSERT ON articles FOR EACH ROW EXECUTE FUNCTION vectorfill._trg_1()"
        )
        conn.execute(
            "CREATE TRIGGER vectorfill_docs_update AFTER UPDATE OF title, body ON articles FOR EACH ROW "
            "WHEN (OLD.title IS DISTINCT FROM NEW.title OR OLD.body IS DISTINCT FROM NEW.body) "
            "EXECUTE FUNCTION vectorfill._trg_1()"
        )
        conn.execute(
            "CREATE TRIGGER vectorfill_docs_delete AFTER DELETE ON articles FOR EACH ROW EXECUTE FUNCTION vectorfill._trg_1()"
        )
        conn.execute(
            "CREATE TRIGGER vectorfill_docs_truncate AFTER TRUNCATE ON articles FOR EACH STATEMENT EXECUTE FUNCTION vectorfill._trg_1()"
        )


def _trigger_shapes(url) -> dict[str, tuple[bool, bool, bool]]:
    """tgname -> (row-level, has an OLD TABLE, has a NEW TABLE)."""
    with connect(url) as conn:
        rows = conn.execute(
            """SELECT tgname, (tgtype & 1) = 1, tgoldtable IS NOT NULL, tgnewtable IS NOT NULL
                 FROM pg_trigger WHERE tgrelid = 'articles'::regclass AND NOT tgisinternal"""
        ).fetchall()
    return {r[0]: r[1:] for r in rows}


def test_migrate_upgrades_the_row_level_triggers_of_existing_jobs(db):
    create(db)
    _install_row_level_triggers(db)
    assert _trigger_shapes(db)["vectorfill_docs_insert"] == (True, False, False)
    said: list[str] = []
    assert migrate(db, report=said.append) == head_revision()
    assert said == ["job docs: triggers upgraded to statement-level triggers"]
    assert _trigger_shapes(db) == {
        "vectorfill_docs_insert": (False, False, True),
        "vectorfill_docs_update": (False, True, True),
        "vectorfill_docs_delete": (False, True, False),
        "vectorfill_docs_truncate": (False, False, False),
    }
    drain(db)
    with connect(db) as conn:
        conn.execute("UPDATE articles SET views = 1")
        conn.execute("UPDATE articles SET body = 'x' WHERE id <= 2")
    assert set(queue(db)) == {1, 2}
    said.clear()
    migrate(db, report=said.append)
    assert said == [], "jobs already upgraded are left alone"


def test_after_key_changes_and_a_swap_every_row_has_its_own_texts_vector(env):
    with env.connect() as conn:  # make_table fills it; deferrable, so that a statement may swap two keys
        conn.execute(
            "CREATE TABLE articles (id bigint PRIMARY KEY DEFERRABLE, title text, body text, views int DEFAULT 0)"
        )
    env.make_table(20)
    env.create_job()
    env.backfill()
    with env.connect() as conn:
        conn.execute("UPDATE articles SET id = id + 100 WHERE id > 15")  # new keys, same texts
        conn.execute("UPDATE articles SET id = 3 - id WHERE id IN (1, 2)")  # a swap in one statement
        conn.execute("DELETE FROM articles WHERE id = 10")
        conn.execute("UPDATE articles SET id = 10, body = 'moved and edited' WHERE id = 8")
    summary = env.backfill()
    texts = env.texts()
    vectors = env.vectors()
    assert set(vectors) == set(texts)
    for key, text in texts.items():
        assert vectors[key] == pytest.approx(env.provider.expected_vector(text), abs=1e-6), key
    assert summary.embedded == 5 + 2 + 1


def test_a_row_already_queued_gets_a_new_seq_and_loses_its_lease_in_bulk_and_single_statements(db):
    create(db)
    with connect(db) as conn:
        conn.execute(
            "UPDATE vectorfill._q_1_1 SET lease_until = now() + interval '1 hour', claimed_by = gen_random_uuid(), "
            "attempts = 2, last_error = 'x'"
        )
        conn.execute(  # a queue row for a key the table does not have (not made by vectorfill; tolerated)
            "INSERT INTO vectorfill._q_1_1 (k1, seq, lease_until) VALUES (5000, 1, now() + interval '1 hour')"
        )
    before = queue(db)
    with connect(db) as conn:
        conn.execute("UPDATE articles SET body = 'edited' WHERE id <= 5")
        conn.execute("UPDATE articles SET body = 'edited again' WHERE id = 6")
        conn.execute("INSERT INTO articles (id, title, body) VALUES (5000, 't', 'b')")
        absorb(conn)
        rows = conn.execute(
            "SELECT k1, seq, lease_until, claimed_by, attempts, last_error FROM vectorfill._q_1_1 ORDER BY k1"
        ).fetchall()
    for k1, seq, lease, claimed, attempts, error in rows:
        if k1 in (1, 2, 3, 4, 5, 6, 5000):
            assert seq > before[k1] and (lease, claimed, attempts, error) == (None, None, 0, None), k1
        else:
            assert seq == before[k1] and lease is not None, k1


def test_row_level_update_trigger_ignores_other_columns_and_keeps_every_guarantee(db):
    from vectorfill.config import JobSettings
    from vectorfill.jobs.versions import set_model

    create(db, settings=JobSettings(update_trigger="row"))
    assert _trigger_shapes(db)["vectorfill_docs_update"] == (True, False, False)
    with connect(db) as conn:
        set_model(conn, "docs", model="m2")
        conn.execute(
            """INSERT INTO vectorfill._v_1_1 (k1, embedding, input_hash, model)
               SELECT id, '[1,2,3]', '\\x00', 'm' FROM articles"""
        )
    for q in ("_q_1_1", "_q_1_2"):
        drain(db, q)
    with connect(db) as conn:
        conn.execute("UPDATE articles SET views = views + 1")
        conn.execute("UPDATE articles SET title = title, body = body")
    assert queue(db) == {} and queue(db, "_q_1_2") == {}
    with connect(db) as conn:
        conn.execute("UPDATE articles SET body = 'new' WHERE id IN (1, 2)")
        conn.execute("UPDATE articles SET id = 100 WHERE id = 3")
        conn.execute("UPDATE articles SET id = 9 - id WHERE id IN (4, 5)")  # a swap (deferrable key)
        conn.execute("DELETE FROM articles WHERE id = 10")
        absorb(conn)
        vectors = {r[0] for r in conn.execute("SELECT k1 FROM vectorfill._v_1_1")}
    for q in ("_q_1_1", "_q_1_2"):
        assert set(queue(db, q)) == {1, 2, 100, 4, 5}, q
    assert 3 not in vectors and 10 not in vectors and {4, 5} <= vectors


# ----------------------------------------------------------------- the change log and its absorber


def log_rows(url) -> list[tuple[str, list[int]]]:
    with connect(url) as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT op, k1 FROM vectorfill._c_1 ORDER BY seq")]


def add_vectors(conn) -> None:
    conn.execute(
        """INSERT INTO vectorfill._v_1_1 (k1, embedding, input_hash, model)
           SELECT id, '[1,2,3]', '\\x00', 'm' FROM articles ON CONFLICT DO NOTHING"""
    )


def test_one_log_row_per_statement_and_the_log_absorbed_in_order(db):
    create(db)
    drain(db)
    with connect(db) as conn:
        add_vectors(conn)
        conn.execute("INSERT INTO articles (id, title, body) SELECT g, 't', 'b' FROM generate_series(11, 1000) g")
        conn.execute("UPDATE articles SET views = 1")  # nothing embedded changed: no log row
        conn.execute("DELETE FROM articles WHERE id = 1")  # deleted, then inserted again: queued, old vector gone
        conn.execute("INSERT INTO articles (id, title, body) VALUES (1, 'again', 'again')")
        conn.execute("INSERT INTO articles (id, title, body) VALUES (2000, 't', 'b')")  # inserted, then deleted
        conn.execute("DELETE FROM articles WHERE id = 2000")
        conn.execute("UPDATE articles SET id = 3000 WHERE id = 2")  # a key change: 'D' 2 and 'I' 3000
    assert [(op, len(keys)) for op, keys in log_rows(db)] == [
        ("I", 990),
        ("D", 1),
        ("I", 1),
        ("I", 1),
        ("D", 1),
        ("D", 1),
        ("I", 1),
    ]
    with connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM vectorfill._q_1_1").fetchone()[0] == 0, "no queue row yet"
        assert absorb(conn) == 990 + 4, "every key once: 11..1000, 1, 2000, 2, 3000"
        vectors = {r[0] for r in conn.execute("SELECT k1 FROM vectorfill._v_1_1")}
        assert conn.execute("SELECT count(*) FROM vectorfill._c_1").fetchone()[0] == 0, "absorbed rows are gone"
    assert set(queue(db)) == set(range(11, 1001)) | {1, 3000}
    assert vectors == set(range(3, 11)), "1's old vector (deleted, then inserted again) and 2's are gone"
    with connect(db) as conn:
        assert absorb(conn) == 0, "nothing twice"


def test_an_edit_absorbed_before_the_store_discards_its_vector_one_absorbed_after_requeues_the_row(db):
    from vectorfill.jobs.registry import load_job
    from vectorfill.storage import sql

    create(db)
    with connect(db) as conn:
        job = load_job(conn, "docs")
        js = sql.JobSQL(job, job.active)
        token = "00000000-0000-0000-0000-000000000001"
        claimed = {r[0]: r[1] for r in conn.execute(js.claim(), {"limit": 100, "lease_s": 600, "token": token})}
    assert set(claimed) == set(range(1, 11))
    with connect(db) as conn:  # edits while the texts are at the provider
        conn.execute("UPDATE articles SET body = 'edited in flight' WHERE id IN (3, 4)")
    with connect(db) as conn:  # 3's edit is absorbed before the store (as the store does first)...
        absorb(conn)
        conn.execute("UPDATE articles SET body = 'edited again' WHERE id = 4")
    with connect(db) as conn:  # ... 4's second edit only after it
        keys = list(claimed)
        settled = {r[0] for r in conn.execute(js.settle(), [keys, [claimed[k] for k in keys], job.id, 1])}
        assert settled == set(range(1, 11)) - {3, 4}, "3 and 4 were queued again with new seqs: not stored"
    with connect(db) as conn:  # and an edit after the store: stored, then queued again by the absorber
        conn.execute("UPDATE articles SET body = 'edited after the store' WHERE id = 5")
    after = queue(db)
    assert set(after) == {3, 4, 5} and all(after[k] > claimed[k] for k in (3, 4, 5))


def test_two_absorbers_never_run_at_once(db):
    import threading

    create(db)
    drain(db)
    with connect(db) as conn:
        conn.execute("INSERT INTO articles (id, title, body) SELECT g, 't', 'b' FROM generate_series(11, 500) g")
    first = psycopg.connect(db)
    absorb(first)  # holds the absorber's lock until it commits
    with connect(db) as conn:
        conn.execute("UPDATE articles SET body = 'later' WHERE id BETWEEN 11 AND 20")
        conn.execute("INSERT INTO articles (id, title, body) VALUES (600, 't', 'b')")
    second: list[int] = []
    pids: list[int] = []

    def run() -> None:
        with psycopg.connect(db) as conn:
            pids.append(conn.info.backend_pid)
            second.append(absorb(conn))

    t = threading.Thread(target=run)
    t.start()
    with connect(db, autocommit=True) as watcher:  # the second one waits for the lock (polled)
        waiting = False
        deadline = time.monotonic() + 30  # the thread may take a while to connect on a loaded machine
        while not waiting and time.monotonic() < deadline:
            waiting = bool(pids) and watcher.execute(
                "SELECT wait_event_type = 'Lock' AND wait_event = 'advisory' FROM pg_stat_activity WHERE pid = %s",
                (pids[0],),
            ).fetchone() == (True,)
            time.sleep(0.01)
        assert waiting, "the second absorber must wait for the first one's lock"
        assert not second
    first.commit()
    first.close()
    t.join()
    assert second == [11], "after the first committed, the second took only what was left: 11..20 and 600"
    assert set(queue(db)) == set(range(11, 501)) | {600}


def test_a_deleted_rows_vectors_are_not_shown_before_the_delete_is_absorbed(db):
    from vectorfill.jobs.registry import job_status, load_job
    from vectorfill.storage import sql

    create(db)
    drain(db)
    with connect(db) as conn:
        add_vectors(conn)
        conn.execute("DELETE FROM articles WHERE id IN (2, 3)")
        in_table = {r[0] for r in conn.execute("SELECT k1 FROM vectorfill._v_1_1")}
        in_view = {r[0] for r in conn.execute("SELECT id FROM vectorfill.docs")}
        job = load_job(conn, "docs")
        found = {r[0] for r in conn.execute(sql.JobSQL(job, job.active).search(), {"q": "[1,2,3]", "k": 20, "fan": 1})}
    assert in_table == set(range(1, 11)), "not absorbed yet: the vectors are still stored"
    assert in_view == found == set(range(1, 11)) - {2, 3}, "but neither the view nor a search shows them"
    with connect(db) as conn:
        status = job_status(conn, "docs")  # counts absorb first: exact
        assert (status.total, status.embedded, status.pending) == (8, 8, 0)
        assert {r[0] for r in conn.execute("SELECT k1 FROM vectorfill._v_1_1")} == set(range(1, 11)) - {2, 3}


def test_status_is_exact_with_changes_not_absorbed(db):
    from vectorfill.jobs.registry import job_status

    create(db)
    drain(db)
    with connect(db) as conn:
        add_vectors(conn)
        conn.execute("INSERT INTO articles (id, title, body) SELECT g, 't', 'b' FROM generate_series(11, 30) g")
        conn.execute("UPDATE articles SET body = 'new' WHERE id <= 4")
        conn.execute("DELETE FROM articles WHERE id = 10")
    assert [op for op, _ in log_rows(db)] == ["I", "I", "D"]
    with connect(db) as conn:
        status = job_status(conn, "docs")
    assert (status.total, status.embedded, status.pending, status.failed) == (29, 5, 24, 0)
    assert log_rows(db) == []


def test_truncate_empties_the_change_log_too(db):
    create(db)
    with connect(db) as conn:
        conn.execute("INSERT INTO articles (id, title, body) VALUES (50, 't', 'b')")
        conn.execute("TRUNCATE articles")
        conn.execute("INSERT INTO articles (id, title, body) VALUES (60, 't', 'b')")  # after it: kept
    assert log_rows(db) == [("I", [60])]
    assert set(queue(db)) == {60}


def test_migration_0007_down_and_up_keeps_every_change_and_reinstalls_the_log(db):
    create(db)
    drain(db)
    with connect(db) as conn:
        conn.execute("INSERT INTO articles (id, title, body) VALUES (70, 't', 'b')")  # in the log only
    assert log_rows(db) == [("I", [70])]
    migrate(db, "0006", downgrade=True)  # absorbs the log first, then drops it with its triggers
    with connect(db) as conn:
        assert conn.execute("SELECT to_regclass('vectorfill._c_1')").fetchone()[0] is None
        assert {r[0] for r in conn.execute("SELECT k1 FROM vectorfill._q_1_1")} == {70}, "nothing written is lost"
    assert _trigger_shapes(db) == {}
    said: list[str] = []
    assert migrate(db, report=said.append) == head_revision()
    assert said == ["job docs: triggers upgraded to statement-level triggers"]
    with connect(db) as conn:
        conn.execute("UPDATE articles SET body = 'after the upgrade' WHERE id = 1")
    assert log_rows(db) == [("I", [1])]
    assert set(queue(db)) == {70, 1}


def test_composite_text_keys_through_the_change_log(env):
    import numpy as np

    with env.connect() as conn:
        conn.execute("CREATE TABLE notes (tenant int, code varchar(10), a text, PRIMARY KEY (tenant, code))")
        conn.execute(
            "INSERT INTO notes SELECT t, 'c' || n, 'a' || t || n FROM generate_series(1, 3) t, generate_series(1, 4) n"
        )
    env.create_job("notes", table="notes", template=None, text_columns=["a"])
    assert env.backfill("notes").embedded == 12
    with env.connect() as conn:
        conn.execute("INSERT INTO notes SELECT 9, 'n' || g, 'new ' || g FROM generate_series(1, 5) g")
        conn.execute("UPDATE notes SET a = a || '!' WHERE tenant = 1")
        conn.execute("UPDATE notes SET code = 'moved' WHERE tenant = 2 AND code = 'c1'")  # a key change
        conn.execute("DELETE FROM notes WHERE tenant = 3")
        logged = [
            (op, len(k1), len(k2)) for op, k1, k2 in conn.execute("SELECT op, k1, k2 FROM vectorfill._c_1 ORDER BY seq")
        ]
    assert logged == [("I", 5, 5), ("I", 4, 4), ("D", 1, 1), ("I", 1, 1), ("D", 4, 4)], "one row a statement (and side)"
    summary = env.backfill("notes")
    assert summary.embedded == 5 + 4 + 1
    with env.connect() as conn:
        rows = conn.execute("SELECT tenant, code, embedding FROM vectorfill.notes").fetchall()
        texts = {(t, c): a for t, c, a in conn.execute("SELECT tenant, code, a FROM notes")}
        stored = conn.execute("SELECT count(*) FROM vectorfill._v_1_1").fetchone()[0]
    assert {(t, c) for t, c, _ in rows} == set(texts) and stored == len(texts), "no vector of a deleted or moved key"
    for t, c, emb in rows:
        np.testing.assert_allclose(emb.to_numpy(), env.provider.expected_vector(texts[(t, c)]), atol=1e-6)


def test_a_deferrable_key_held_twice_within_a_transaction_is_absorbed_right(db):
    create(db)
    drain(db)
    with connect(db) as conn:  # the fixture's key is DEFERRABLE: checked at the commit
        add_vectors(conn)
        conn.execute("SET CONSTRAINTS ALL DEFERRED")
        conn.execute("INSERT INTO articles (id, title, body) VALUES (50, 't', 'one'), (50, 't', 'two')")
        conn.execute("DELETE FROM articles WHERE id = 50 AND body = 'two'")  # one row keeps the key
        conn.execute("INSERT INTO articles (id, title, body) VALUES (1, 't', 'dup of 1')")
        conn.execute("DELETE FROM articles WHERE id = 1 AND body = 'dup of 1'")
    assert [op for op, _ in log_rows(db)] == ["I", "D", "I", "D"]
    with connect(db) as conn:
        absorb(conn)
        vectors = {r[0] for r in conn.execute("SELECT k1 FROM vectorfill._v_1_1")}
    assert set(queue(db)) == {50, 1}, "a key a row still holds is queued, not forgotten"
    assert 1 not in vectors, "its old vector is not trusted"
    with connect(db) as conn:  # one statement holding a key twice, alone in the log: no duplicate queue row
        conn.execute("SET CONSTRAINTS ALL DEFERRED")
        conn.execute("INSERT INTO articles (id, title, body) VALUES (60, 't', 'a'), (60, 't', 'b')")
        conn.execute("UPDATE articles SET id = 61 WHERE id = 60 AND body = 'b'")
        conn.execute("DELETE FROM articles WHERE id = 1")  # (more log rows; the first is the one at stake)
    with connect(db) as conn:
        conn.execute("DELETE FROM vectorfill._c_1 WHERE op = 'D' OR k1 <> '{60,60}'")  # only the double row
        assert absorb(conn) == 1
    assert {60} <= set(queue(db))


@pytest.mark.slow
def test_writes_during_two_concurrent_backfills_end_with_every_rows_own_vector(env):
    """Inserts, edits, key changes and deletes committed while two runs claim, embed and store:
    at the end every row has its own text's vector and no vector is left of a row gone."""
    import random
    import threading

    env.make_table(3000)
    env.create_job(settings_kw={"max_inputs": 50, "concurrency": 2, "retries": 2})
    env.provider.latency_s = 0.01
    stop = threading.Event()
    wrote: list[int] = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            write()
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    def write() -> None:
        rnd = random.Random(7)
        next_id, moves = 10_000, 0
        deadline = time.monotonic() + 6  # writes for 6 s at most: faster than the runs drain, they would never end
        with connect(env.url, autocommit=True) as conn:
            while not stop.is_set() and time.monotonic() < deadline:
                time.sleep(0.002)
                k = rnd.randint(1, 3000)
                what = rnd.random()
                if what < 0.4:
                    conn.execute("UPDATE articles SET body = body || '+' WHERE id BETWEEN %s AND %s", (k, k + 20))
                elif what < 0.6:
                    conn.execute("DELETE FROM articles WHERE id BETWEEN %s AND %s", (k, k + 5))
                elif what < 0.8:
                    conn.execute(
                        "INSERT INTO articles (id, title, body) SELECT g, 't', 'new ' || g FROM generate_series(%s::int, %s::int) g",
                        (next_id, next_id + 9),
                    )
                    next_id += 10
                else:  # a key change, to a key never used
                    moves += 1
                    conn.execute("UPDATE articles SET id = %s WHERE id = %s", (1_000_000 + moves, k))
                wrote.append(1)

    results = []
    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=lambda: results.append(env.backfill())) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    stop.set()
    threads[0].join()
    assert not errors and len(wrote) > 20, errors or "the writes landed while the runs ran"
    env.backfill()
    texts, vectors = env.texts(), env.vectors()
    assert set(vectors) == set(texts)
    for key, text in texts.items():
        assert vectors[key] == pytest.approx(env.provider.expected_vector(text), abs=1e-6), key
    with env.connect() as conn:
        assert conn.execute("SELECT count(*) FROM vectorfill._v_1_1").fetchone()[0] == len(texts), "none of a row gone"
        assert conn.execute("SELECT count(*) FROM vectorfill._q_1_1").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM vectorfill._c_1").fetchone()[0] == 0
