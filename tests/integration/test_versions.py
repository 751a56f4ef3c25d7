"""Blue/green model changes: set-model, the switch, pause/resume/abandon/prune, estimates.

Two fake providers stand for two models: ``old`` (fake-embed, 32 dims, the job's first
model) and ``new`` (fake-embed-v2, 48 dims), so a vector shows which model made it.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from psycopg import sql

from conftest import API_KEY
from fake_provider import FakeProvider
from vectorfill.errors import ConfigError, JobError
from vectorfill.jobs import versions
from vectorfill.jobs.estimate import estimate
from vectorfill.jobs.search import create_index, search


@pytest.fixture
def new():
    with FakeProvider(dimensions=48, api_key=API_KEY, model="fake-embed-v2") as fake:
        yield fake


def view_matches(env, provider, *, keys=None) -> None:
    """Every row (or ``keys``) seen through vectorfill.docs has ``provider``'s vector for its text."""
    texts = env.texts()
    vectors = env.vectors()
    assert set(vectors) == set(texts)
    for key in keys or texts:
        np.testing.assert_allclose(vectors[key], provider.expected_vector(texts[key]), rtol=0, atol=1e-6)


def set_model(env, new, **kw):
    with env.connect() as conn:
        return versions.set_model(conn, "docs", model=new.model, base_url=new.base_url, **kw)


def states(env) -> dict[int, str]:
    with env.connect() as conn:
        return {v.version: v.state for v in versions.list_versions(conn, "docs")}


def queue_size(env, version: int) -> int:
    with env.connect() as conn:
        conn.execute("SELECT vectorfill._absorb_1()")  # the change log into the queues, as a claim does
        return conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("vectorfill", f"_q_1_{version}"))
        ).fetchone()[0]


@pytest.mark.slow
def test_a_new_model_fills_beside_the_old_and_readers_switch_only_when_complete(env, new):
    env.make_table(300)
    env.create_job(settings_kw={"max_inputs": 50, "retries": 1})
    env.backfill()
    view_matches(env, env.provider)
    create_index(env.url, "docs")

    v2 = set_model(env, new)
    assert (v2.version, v2.state, v2.model) == (2, "filling", "fake-embed-v2")
    with env.connect() as conn:
        listed = {v.version: v for v in versions.list_versions(conn, "docs")}
    assert (listed[1].state, listed[1].embedded, listed[1].total) == ("active", 300, 300)
    assert (listed[2].state, listed[2].embedded, listed[2].pending) == ("filling", 0, 300)

    partial = env.backfill(max_rows=120)
    assert partial.switched_to is None and partial.embedded == 120
    view_matches(env, env.provider)  # half a re-embed is never visible: still all old vectors
    assert states(env) == {1: "active", 2: "filling"}

    old_requests = env.provider.requests
    rest = env.backfill()
    assert rest.switched_to == 2 and rest.embedded == 180
    assert env.provider.requests == old_requests, "nothing was queued for the old model"
    view_matches(env, new)  # every row now shows the new model's vector
    assert states(env) == {1: "retired", 2: "active"}
    assert sorted(new.inputs) == sorted(env.texts().values()), "each row sent to the new model once"
    with env.connect() as conn:
        assert conn.execute("SELECT to_regclass('vectorfill._v_1_2_hnsw')").fetchone()[0] is not None, (
            "the old version's HNSW index was carried over before the switch"
        )

    # searches embed the query with the new model and read the new vectors
    before = new.requests
    with env.connect() as conn:
        hits = search(conn, "docs", "Title 7", k=3)
    assert new.requests == before + 1 and len(hits) == 3

    # the retired version is no longer kept in step: an edit queues only the active one
    with env.connect() as conn:
        conn.execute("UPDATE articles SET body = 'changed' WHERE id = 1")
    assert queue_size(env, 2) == 1 and queue_size(env, 1) == 0


def test_rows_edited_during_a_reembed_get_the_right_vector_in_both_versions(env, new):
    env.make_table(100)
    env.create_job()
    env.backfill()
    set_model(env, new)
    with env.connect() as conn:
        conn.execute("UPDATE articles SET body = 'edited during the re-embed' WHERE id IN (3, 4)")
        conn.execute("INSERT INTO articles (id, title, body) VALUES (500, 'new', 'inserted during it')")
        conn.execute("DELETE FROM articles WHERE id = 5")
        versions.pause(conn, "docs")
    assert states(env) == {1: "active", 2: "paused"}

    paused_run = env.backfill()  # fills the active version only
    assert paused_run.embedded == 3 and new.requests == 0
    view_matches(env, env.provider)  # readers see the edits with the old model
    assert queue_size(env, 2) == 100, "the paused version's queue is kept in step: 99 rows + 1 insert"

    with env.connect() as conn:
        versions.resume(conn, "docs")
    done = env.backfill()
    assert done.switched_to == 2
    view_matches(env, new)


@pytest.mark.slow
def test_no_switch_while_a_row_is_missing(env, new):
    env.make_table(50)
    env.create_job()
    env.backfill()
    set_model(env, new)
    new.fail_when(lambda text: "row 7 " in text, status=400)
    summary = env.backfill()
    assert summary.switched_to is None and summary.failed == 1
    assert states(env) == {1: "active", 2: "filling"}
    view_matches(env, env.provider)
    with env.connect() as conn, pytest.raises(JobError, match=r"not complete: 0 rows still queued and 1 failed"):
        versions.switch(conn, "docs")

    # fixing the row's text queues it again; the next run completes the version and switches
    with env.connect() as conn:
        conn.execute("UPDATE articles SET body = 'a body the new model accepts' WHERE id = 7")
    assert env.backfill().switched_to == 2
    view_matches(env, new)


def test_a_forced_switch_is_possible_and_says_what_is_missing(env, new):
    env.make_table(20)
    env.create_job()
    env.backfill()
    set_model(env, new)
    with env.connect() as conn:
        active = versions.switch(conn, "docs", force=True)
    assert active.version == 2 and states(env) == {1: "retired", 2: "active"}
    assert env.vectors() == {}, "nothing embedded with the new model yet"
    env.backfill()
    view_matches(env, new)


def test_rows_with_no_text_do_not_block_the_switch(env, new):
    env.make_table(10)
    with env.connect() as conn:
        conn.execute("UPDATE articles SET title = NULL, body = NULL WHERE id = 2")
    env.create_job()
    env.backfill()
    set_model(env, new)
    assert env.backfill().switched_to == 2


def test_no_row_written_while_set_model_runs_is_missed(env, new):
    env.make_table(30_000)
    env.create_job()
    stop = threading.Event()
    written = []
    failure: list[BaseException] = []

    def writer():
        from vectorfill.storage.db import connect

        try:
            with connect(env.url, autocommit=True) as conn:
                i = 100_000
                while not stop.is_set():
                    conn.execute("INSERT INTO articles (id, title, body) VALUES (%s, 'w', 'written meanwhile')", (i,))
                    written.append(i)
                    i += 1
        except BaseException as exc:  # shown by the test's wait, which would otherwise wait in vain
            failure.append(exc)
            raise

    t = threading.Thread(target=writer, daemon=True)

    def wait_for_writes(n: int) -> None:
        """Until the writer has written ``n`` rows: not forever if it dies or stalls."""
        deadline = time.monotonic() + 60
        while len(written) < n:
            assert t.is_alive(), f"the writer stopped after {len(written)} rows: {failure}"
            assert time.monotonic() < deadline, f"the writer wrote {len(written)} rows of {n} in 60 s"
            time.sleep(0.001)

    t.start()
    try:
        wait_for_writes(20)
        set_model(env, new)
        wait_for_writes(len(written) + 20)
    finally:
        stop.set()
        t.join(60)
    assert not t.is_alive() and not failure, failure
    with env.connect() as conn:
        conn.execute("SELECT vectorfill._absorb_1()")  # the change log into the queues, as a claim does
        missing = conn.execute(
            "SELECT count(*) FROM articles a WHERE NOT EXISTS (SELECT 1 FROM vectorfill._q_1_2 q WHERE q.k1 = a.id)"
        ).fetchone()[0]
    assert missing == 0 and queue_size(env, 2) == 30_000 + len(written)


def test_abandon_drops_the_new_version_and_prune_the_retired_one(env, new):
    env.make_table(30)
    env.create_job()
    env.backfill()
    set_model(env, new)
    with env.connect() as conn:
        versions.abandon(conn, "docs")
        assert conn.execute("SELECT to_regclass('vectorfill._q_1_2'), to_regclass('vectorfill._v_1_2')").fetchone() == (
            None,
            None,
        )
        conn.execute("INSERT INTO articles (id, title, body) VALUES (99, 'x', 'y')")  # trigger works on
    assert states(env) == {1: "active"} and env.status().pending == 1

    again = set_model(env, new)
    assert again.version == 2, "an abandoned version leaves no trace, not even its number"
    env.backfill()
    with env.connect() as conn:
        assert versions.prune(conn, "docs") == [1]
        assert conn.execute("SELECT to_regclass('vectorfill._v_1_1')").fetchone()[0] is None
    assert states(env) == {2: "active"}
    view_matches(env, new)


def test_set_model_refuses_what_makes_no_sense(env, new):
    env.make_table(5)
    env.create_job()
    with env.connect() as conn, pytest.raises(JobError, match="already embeds with fake-embed"):
        versions.set_model(conn, "docs", model="fake-embed")
    with env.connect() as conn, pytest.raises(ConfigError, match="takes the NAME of an environment variable"):
        versions.set_model(conn, "docs", model="other", api_key_env="sk-" + "x" * 20 + "-key")
    with env.connect() as conn, pytest.raises(ConfigError, match="--dimensions must be a positive number"):
        versions.set_model(conn, "docs", model="other", dimensions=0)
    with env.connect() as conn:  # '' means no key (as `job set-model --api-key-env ''` says)
        assert versions.set_model(conn, "docs", model="keyless", api_key_env="").api_key_env is None
        versions.abandon(conn, "docs")
    set_model(env, new)
    with (
        env.connect() as conn,
        pytest.raises(JobError, match=r"version 2 \(fake-embed-v2\) is already filling.*abandon"),
    ):
        versions.set_model(conn, "docs", model="other")
    with env.connect() as conn, pytest.raises(JobError, match="cannot resume: version 2 is filling"):
        versions.resume(conn, "docs")


def test_prune_on_switch_drops_the_old_version_at_once(env, new):
    env.make_table(10)
    env.create_job(settings_kw={"prune_on_switch": True})
    env.backfill()
    set_model(env, new)

    def old_tables():
        with env.connect() as conn:
            return conn.execute("SELECT to_regclass('vectorfill._v_1_1'), to_regclass('vectorfill._q_1_1')").fetchone()

    assert None not in old_tables(), "the old version's tables are there while the new one fills"
    assert env.backfill().switched_to == 2
    assert states(env) == {2: "active"}
    assert old_tables() == (None, None), "the old version's vector table and queue were dropped at the switch"
    view_matches(env, new)


# ------------------------------------------------------------------ estimates and cost
def test_the_estimate_is_the_tokens_the_provider_then_bills(env):
    env.make_table(400)
    with env.connect() as conn:  # a few long and empty texts, to exercise the same rules as a run
        conn.execute("UPDATE articles SET body = repeat('lorem ipsum ', 3000) WHERE id <= 3")
        conn.execute("UPDATE articles SET title = NULL, body = NULL WHERE id = 4")
    env.create_job(settings_kw={"retries": 1, "prices": {"fake-embed": 0.5}, "max_input_tokens": 2000})
    with env.connect() as conn:
        (before,) = estimate(conn, "docs")
    assert before.rows == 399 and before.empty == 1 and before.too_long == 3 and before.exact
    assert env.provider.requests == 0, "estimating sends nothing"

    summary = env.backfill()
    billed = env.provider.tokens_billed
    assert summary.tokens == billed
    assert abs(before.tokens - billed) <= 0.02 * billed
    assert summary.cost_usd == pytest.approx(billed * 0.5 / 1e6)
    assert before.cost_usd == pytest.approx(before.tokens * 0.5 / 1e6)

    with env.connect() as conn:
        conn.execute("UPDATE articles SET body = body || '!' WHERE id = 10")  # edited and edited back:
        conn.execute("UPDATE articles SET body = left(body, -1) WHERE id = 10")  # queued, text unchanged
        conn.execute("UPDATE articles SET views = 7")  # not an embedded column: not even queued
        (after,) = estimate(conn, "docs")
    assert (after.rows, after.tokens, after.unchanged) == (0, 0, 1)


def test_estimate_of_a_reembed_counts_every_row_at_the_new_models_price(env):
    env.make_table(50)
    env.create_job()
    env.backfill()
    with env.connect() as conn:
        (current,) = estimate(conn, "docs")
        (reembed,) = estimate(conn, "docs", model="text-embedding-3-large")
        (unknown,) = estimate(conn, "docs", model="some-local-model")
    assert current.rows == 0
    assert reembed.rows == 50 and reembed.version is None and reembed.exact
    assert reembed.cost_usd == pytest.approx(reembed.tokens * 0.13 / 1e6)
    assert unknown.cost_usd is None and not unknown.exact
