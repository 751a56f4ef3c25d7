"""What a backfill would find to do, from one statement (``backfill``'s no-op check): rows
queued or leased in any version, changes not yet absorbed, batches at the provider."""

from __future__ import annotations

import pytest

from vectorfill.jobs.registry import create_job, work_left
from vectorfill.storage.db import connect


@pytest.fixture
def db(migrated_db):
    with connect(migrated_db) as conn:
        conn.execute("CREATE TABLE articles (id bigint PRIMARY KEY, body text)")
        conn.execute("INSERT INTO articles SELECT g, 'b' || g FROM generate_series(1, 5) g")
        create_job(
            conn,
            name="docs",
            table="articles",
            text_columns=["body"],
            template=None,
            key_columns=None,
            model="m",
            base_url="http://127.0.0.1:1/v1",
            api_key_env=None,
        )
    return migrated_db


def left(url):
    with connect(url) as conn:
        return work_left(conn, "docs")


def queue(conn):
    job_id = conn.execute("SELECT id FROM vectorfill.jobs WHERE name = 'docs'").fetchone()[0]
    return job_id, f"vectorfill._q_{job_id}_1"


def test_a_new_job_has_its_rows_queued(db):
    got = left(db)
    assert got is not None and got.queued and not got.nothing


def test_an_empty_queue_and_log_is_nothing_to_do(db):
    with connect(db) as conn:
        _, q = queue(conn)
        conn.execute(f"DELETE FROM {q}")
    got = left(db)
    assert got is not None and got.nothing and got.failed == 0


def test_a_leased_row_is_work_left(db):
    with connect(db) as conn:
        _, q = queue(conn)
        conn.execute(f"DELETE FROM {q} WHERE ctid <> (SELECT min(ctid) FROM {q})")
        conn.execute(f"UPDATE {q} SET lease_until = now() + interval '1 hour'")
    assert not left(db).nothing


def test_an_edit_not_yet_absorbed_is_work_left(db):
    with connect(db) as conn:
        _, q = queue(conn)
        conn.execute(f"DELETE FROM {q}")
        conn.execute("UPDATE articles SET body = 'edited' WHERE id = 1")  # the trigger logs it
    got = left(db)
    assert got.queued, "the change log's row counts, before any absorb"


def test_a_batch_at_the_provider_is_work_left(db):
    with connect(db) as conn:
        job_id, q = queue(conn)
        conn.execute(f"DELETE FROM {q}")
        conn.execute(
            "INSERT INTO vectorfill.batches (id, job_id, version, state) VALUES (gen_random_uuid(), %s, 1, 'submitted')",
            [job_id],
        )
    got = left(db)
    assert got.batches_open and not got.queued and not got.nothing


def test_failed_rows_are_counted_but_are_not_work(db):
    with connect(db) as conn:
        job_id, q = queue(conn)
        conn.execute(f"DELETE FROM {q}")
        conn.execute(
            "INSERT INTO vectorfill.failures (job_id, version, row_key, reason, message) "
            "VALUES (%s, 1, '[1]', 'input', 'empty text')",
            [job_id],
        )
    got = left(db)
    assert got.nothing and got.failed == 1


def test_an_unknown_job_is_not_told_here(db):
    with connect(db) as conn:
        assert work_left(conn, "ghost") is None
