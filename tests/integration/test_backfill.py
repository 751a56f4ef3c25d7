"""The backfill flow end to end: real Postgres + pgvector, real Prefect, the fake provider."""

from __future__ import annotations

import asyncio
import threading
import uuid

import numpy as np
import pytest

from assertions import assert_vectors_match_texts
from conftest import API_KEY
from vectorfill.errors import AuthenticationError, ModelNotFound, TransientProviderError
from vectorfill.storage.db import LaneConnection


def test_each_stored_vector_is_the_providers_vector_for_that_rows_text(env):
    env.make_table(500)
    env.create_job(settings_kw={"max_inputs": 64, "retries": 1})
    summary = env.backfill()
    assert summary.embedded == 500
    assert summary.pending == 0 and summary.failed_total == 0
    assert_vectors_match_texts(env)
    st = env.status()
    assert (st.total, st.embedded, st.pending, st.failed) == (500, 500, 0, 0)
    # every input was sent exactly once
    assert sorted(env.provider.inputs) == sorted(env.texts().values())


def test_second_backfill_sends_zero_requests(env):
    env.make_table(200)
    env.create_job()
    first = env.backfill()
    assert (first.embedded, first.pending, first.failed_total) == (200, 0, 0)
    assert first.requests == env.provider.requests > 0
    assert_vectors_match_texts(env)
    before = env.provider.requests
    summary = env.backfill()
    assert env.provider.requests == before
    assert summary.embedded == 0 and summary.requests == 0


def test_inserts_edits_and_deletes_after_a_backfill_are_picked_up_by_the_next(env):
    env.make_table(100)
    env.create_job()
    env.backfill()
    with env.connect() as conn:
        conn.execute("INSERT INTO articles (id, title, body) VALUES (1001, 'New', 'A new row')")
        conn.execute("UPDATE articles SET body = 'Edited body' WHERE id IN (5, 6)")
        conn.execute("DELETE FROM articles WHERE id IN (7, 8, 9)")
    assert 7 not in env.vectors(), "deleting a source row deletes its vector at once"
    assert env.status().pending == 3
    env.provider.reset()
    summary = env.backfill()
    assert summary.embedded == 3
    assert sorted(env.provider.inputs) == sorted(
        ["New\n\nA new row", "Title 5\n\nEdited body", "Title 6\n\nEdited body"]
    )
    assert_vectors_match_texts(env)


def test_updates_that_do_not_change_the_embedded_columns_queue_nothing(env):
    env.make_table(50)
    env.create_job()
    env.backfill()
    with env.connect() as conn:
        conn.execute("UPDATE articles SET views = views + 1")  # not an embedded column
        conn.execute("UPDATE articles SET body = body WHERE id < 10")  # same value
    assert env.status().pending == 0


def test_requeued_rows_with_unchanged_text_are_not_sent_again(env):
    env.make_table(40)
    env.create_job()
    env.backfill()
    with env.connect() as conn:  # e.g. a re-import that rewrites identical text via delete+insert of the queue
        conn.execute("INSERT INTO vectorfill._q_1_1 (k1, seq) SELECT id, nextval('vectorfill.queue_seq') FROM articles")
    env.provider.reset()
    summary = env.backfill()
    assert env.provider.requests == 0
    assert summary.unchanged == 40 and env.status().pending == 0


def one_pass_with_a_change_in_flight(env, statement: str):
    """claim -> (``statement`` commits while the texts are at the provider) -> embed -> store,
    with the stage functions called directly so that the change lands exactly in between."""
    from pydantic import SecretStr

    from vectorfill.jobs.registry import load_job
    from vectorfill.provider.client import EmbeddingsClient
    from vectorfill.tasks import Work, claim_rows, embed_request, store_vectors

    with env.connect() as conn:
        job = load_job(conn, "docs")
    work = Work(job, job.active)

    async def run():
        db = LaneConnection(env.url)
        try:
            claim = await claim_rows(work, 100, uuid.uuid4(), db)
            with env.connect() as conn:
                conn.execute(statement)
            async with EmbeddingsClient(
                base_url=env.provider.base_url, model="fake-embed", api_key=SecretStr(API_KEY)
            ) as client:
                embedded = await embed_request(work, client, claim.requests[0])
            return await store_vectors(work, embedded, db)
        finally:
            await db.aclose()

    return asyncio.run(run())


def test_row_edited_during_embedding_ends_with_the_vector_of_its_new_text(env):
    env.make_table(20)
    env.create_job()
    stored = one_pass_with_a_change_in_flight(
        env, "UPDATE articles SET body = 'rewritten while in flight' WHERE id = 3"
    )
    assert stored.written == 19 and stored.stale == 1
    assert 3 not in env.vectors(), "the vector of the old text must not be stored"
    assert env.status().pending == 1
    env.backfill()
    assert_vectors_match_texts(env)


def test_row_deleted_during_embedding_leaves_no_vector(env):
    env.make_table(10)
    env.create_job()
    stored = one_pass_with_a_change_in_flight(env, "DELETE FROM articles WHERE id = 4")
    assert stored.written == 9
    assert set(env.vectors()) == set(range(1, 11)) - {4}
    assert env.status().pending == 0


@pytest.mark.slow
def test_concurrent_backfills_embed_every_row_exactly_once(env):
    env.make_table(3000)
    env.create_job(settings_kw={"max_inputs": 100, "concurrency": 3, "retries": 1})
    env.provider.latency_s = 0.02
    results = []

    def run():
        results.append(env.backfill())

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.embedded for r in results) == 3000
    inputs = env.provider.inputs
    assert len(inputs) == len(set(inputs)) == 3000, "no text paid for twice"
    assert_vectors_match_texts(env)


def test_shuffled_responses_are_put_back_in_index_order(env):
    env.make_table(30)
    env.create_job()
    env.provider.corrupt_next(1, "shuffle")
    env.backfill()
    assert_vectors_match_texts(env)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["short", "nan", "wrong_dims"])
def test_a_malformed_response_stores_nothing_and_the_retry_gets_it_right(env, mode):
    env.make_table(30)
    env.create_job(dimensions=32, settings_kw={"concurrency": 1, "retries": 1})  # one slice
    env.provider.corrupt_next(1, mode)
    summary = env.backfill()
    assert summary.embedded == 30
    assert env.provider.requests == 2
    assert_vectors_match_texts(env)


@pytest.mark.parametrize("mode", ["no_index", "floats_when_base64"])
def test_tolerated_quirks_are_accepted_in_one_request(env, mode):
    env.make_table(30)
    env.create_job(settings_kw={"concurrency": 1, "retries": 1})
    env.provider.corrupt_next(1, mode)
    env.backfill()
    assert env.provider.requests == 1
    assert_vectors_match_texts(env)


def test_one_bad_input_is_isolated_and_the_rest_of_its_request_is_stored(env):
    env.make_table(64)
    with env.connect() as conn:
        conn.execute("UPDATE articles SET body = 'POISON pill' WHERE id = 17")
    env.create_job()
    env.provider.fail_when(lambda text: "POISON" in text, status=400)
    summary = env.backfill()
    assert summary.embedded == 63 and summary.failed == 1
    with env.connect() as conn:
        ((row_key, reason, status, message),) = conn.execute(
            "SELECT row_key, reason, status, message FROM vectorfill.failures"
        ).fetchall()
    assert row_key == [17] and reason == "rejected" and status == 400
    assert message.startswith("HTTP 400")
    st = env.status()
    assert (st.embedded, st.pending, st.failed) == (63, 0, 1)


def test_null_empty_and_whitespace_text_are_recorded_failures_naming_the_row(env):
    env.make_table(5)
    with env.connect() as conn:
        conn.execute("UPDATE articles SET title = NULL, body = NULL WHERE id = 1")
        conn.execute("UPDATE articles SET title = '', body = '' WHERE id = 2")
        conn.execute("UPDATE articles SET title = ' ', body = E'\\n' WHERE id = 3")
    env.create_job()
    summary = env.backfill()
    assert summary.embedded == 2 and summary.failed == 3
    with env.connect() as conn:
        rows = conn.execute("SELECT row_key, reason, message FROM vectorfill.failures ORDER BY row_key").fetchall()
    assert [r[0] for r in rows] == [[1], [2], [3]]
    assert all(r[1] == "empty_text" for r in rows)
    assert "row 1 of public.articles has NULL text" in rows[0][2]
    # filling the text in makes the row pending again and clears its failure
    with env.connect() as conn:
        conn.execute("UPDATE articles SET body = 'now filled' WHERE id = 1")
    assert env.status().failed == 2
    env.backfill()
    assert 1 in env.vectors()


def test_wrong_api_key_stops_the_run_at_once_without_retrying(env, monkeypatch):
    env.make_table(50)
    env.create_job(settings_kw={"max_inputs": 10, "concurrency": 1, "retries": 3})
    monkeypatch.setenv("VF_TEST_API_KEY", "sk-wrong-key")
    with pytest.raises(AuthenticationError) as info:
        env.backfill()
    assert "401" in str(info.value) and "VF_TEST_API_KEY" in str(info.value)
    assert "sk-wrong-key" not in str(info.value)
    assert env.provider.requests == 1
    st = env.status()
    assert st.pending == 50, "nothing lost"
    with env.connect() as conn:
        leased = conn.execute("SELECT count(*) FROM vectorfill._q_1_1 WHERE lease_until IS NOT NULL").fetchone()[0]
    assert leased == 0, "claimed rows are released when the run stops"


def test_unknown_model_gives_a_clear_error(env):
    env.make_table(5)
    env.create_job(model="no-such-model")
    with pytest.raises(ModelNotFound) as info:
        env.backfill()
    assert "no-such-model" in str(info.value) and "--model" in str(info.value)


def test_unreachable_endpoint_gives_a_clear_error_and_loses_nothing(env):
    env.make_table(5)
    env.create_job(base_url="http://127.0.0.1:9/v1", settings_kw={"retries": 0, "timeout_s": 2})
    with pytest.raises(TransientProviderError) as info:
        env.backfill()
    assert "cannot reach http://127.0.0.1:9/v1/embeddings" in str(info.value)
    assert "--base-url" in str(info.value)
    assert env.status().pending == 5


@pytest.mark.slow
def test_transient_server_errors_are_retried(env):
    env.make_table(20)
    env.create_job(settings_kw={"retries": 2})
    env.provider.fail_next(1, status=503)
    summary = env.backfill()
    assert summary.embedded == 20
    assert_vectors_match_texts(env)


def test_dimensions_are_passed_through_and_stored_at_that_size(env):
    env.make_table(10)
    env.create_job(dimensions=8)
    env.backfill()
    vectors = env.vectors()
    assert all(v.shape == (8,) for v in vectors.values())
    text = env.texts()[1]
    np.testing.assert_allclose(vectors[1], env.provider.expected_vector(text, 8), atol=1e-6)


def test_float_encoding_format_works_for_servers_without_base64(env):
    env.make_table(10)
    env.create_job(settings_kw={"encoding_format": "float", "retries": 1})
    env.backfill()
    assert_vectors_match_texts(env)


def test_max_rows_limits_one_run(env):
    env.make_table(100)
    env.create_job(settings_kw={"max_inputs": 10, "retries": 1})
    summary = env.backfill(max_rows=30)
    assert summary.embedded == 30 and env.status().pending == 70


def test_composite_keys_and_several_text_columns(env):
    with env.connect() as conn:
        conn.execute("CREATE TABLE notes (tenant int, n int, a text, b text, PRIMARY KEY (tenant, n))")
        conn.execute(
            "INSERT INTO notes SELECT t, n, 'a' || t || n, CASE WHEN n % 2 = 0 THEN 'b' || n END "
            "FROM generate_series(1, 3) t, generate_series(1, 4) n"
        )
    env.create_job("notes", table="notes", template=None, text_columns=["a", "b"])
    summary = env.backfill("notes")
    assert summary.embedded == 12
    with env.connect() as conn:
        rows = conn.execute("SELECT tenant, n, embedding FROM vectorfill.notes").fetchall()
        texts = {(t, n): txt for t, n, txt in conn.execute("SELECT tenant, n, concat_ws(E'\\n\\n', a, b) FROM notes")}
    for t, n, emb in rows:
        np.testing.assert_allclose(emb.to_numpy(), env.provider.expected_vector(texts[(t, n)]), atol=1e-6)


def test_inputs_over_the_model_limit_are_truncated_token_exactly_by_default(env):
    env.make_table(3)
    long_body = "lorem ipsum dolor sit amet " * 40  # ~200 cl100k tokens
    with env.connect() as conn:
        conn.execute("UPDATE articles SET body = %s WHERE id = 2", (long_body,))
    env.create_job(settings_kw={"max_input_tokens": 50, "retries": 1})
    summary = env.backfill()
    assert summary.embedded == 3 and summary.truncated == 1 and summary.failed == 0
    from vectorfill.provider.tokens import Cl100k

    sent = [t for t in env.provider.inputs if t.startswith("Title 2")]
    assert len(sent) == 1 and Cl100k().count(sent)[0] == 50
    np.testing.assert_allclose(env.vectors()[2], env.provider.expected_vector(sent[0]), atol=1e-6)
    # the stored hash is of the source text: the next run sends nothing
    assert env.backfill().requests == 0


def test_inputs_over_the_limit_fail_with_the_reason_when_asked(env):
    env.make_table(3)
    with env.connect() as conn:
        conn.execute("UPDATE articles SET body = repeat('word ', 500) WHERE id = 2")
    env.create_job(settings_kw={"max_input_tokens": 50, "on_too_long": "fail", "retries": 1})
    summary = env.backfill()
    assert summary.embedded == 2 and summary.failed == 1
    with env.connect() as conn:
        reason, message = conn.execute("SELECT reason, message FROM vectorfill.failures").fetchone()
    assert reason == "too_long" and "over the model's limit of 50" in message


def test_a_provider_that_refuses_a_long_input_gets_a_shorter_one(env):
    """Unknown tokenizer: the provider's 400 says how long is too long; the input is cut to fit."""
    env.make_table(4)
    with env.connect() as conn:
        conn.execute("UPDATE articles SET body = repeat('word ', 2000) WHERE id = 3")
    env.create_job(model="fake-embed", settings_kw={"max_input_tokens": 10_000, "retries": 1})
    env.provider.encoder.max_tokens = 300  # the server's own limit, unknown to vectorfill
    summary = env.backfill()
    assert summary.embedded == 4 and summary.failed == 0 and summary.truncated == 1
    sent = env.provider.embedded
    assert any(t.startswith("Title 3") and len(t) < 2000 for t in sent)


@pytest.mark.parametrize(
    "key_type, keys",
    [
        ("varchar(20)", ["a", "b", "c"]),  # no fast COPY path: row by row
        ("uuid", [str(uuid.UUID(int=i)) for i in (1, 2, 3)]),
        ("text", ["x y", "ünï", "3"]),
    ],
)
def test_key_types_round_trip_into_the_vector_table(env, key_type, keys):
    with env.connect() as conn:
        conn.execute(f"CREATE TABLE keyed (k {key_type} PRIMARY KEY, body text)")
        for k in keys:
            conn.execute("INSERT INTO keyed VALUES (%s, %s)", (k, f"text of {k}"))
    env.create_job("keyed", table="keyed", template=None, text_columns=["body"])
    assert env.backfill("keyed").embedded == 3
    with env.connect() as conn:
        rows = conn.execute("SELECT id::text, embedding FROM vectorfill.keyed").fetchall()
    assert sorted(r[0] for r in rows) == sorted(keys)
    for k, emb in rows:
        np.testing.assert_allclose(emb.to_numpy(), env.provider.expected_vector(f"text of {k}"), atol=1e-6)


@pytest.mark.slow
def test_prefect_keeps_the_runs_history_task_by_task(env):
    """Run history is the orchestrator's: the flow run and its task runs, one per slice,
    are recorded (with vectorfill's Prefect defaults, e.g. no event log on the temporary server)."""
    import time

    from prefect.client.orchestration import get_client

    env.make_table(300)
    env.create_job(settings_kw={"max_inputs": 100, "retries": 1, "concurrency": 1})
    from vectorfill.flows.backfill import backfill

    state = asyncio.run(backfill(env_job := "docs", return_state=True))
    assert state.is_completed() and env_job
    flow_run_id = state.state_details.flow_run_id

    async def task_names():
        async with get_client() as client:  # raw filter: this client sends nulls its server refuses
            runs = (
                await client._client.post(
                    "/task_runs/filter",
                    json={
                        "flow_runs": {"id": {"any_": [str(flow_run_id)]}},
                        "limit": 200,
                        "sort": "EXPECTED_START_TIME_DESC",
                    },
                )
            ).json()
        return sorted(r["name"].rsplit("-", 1)[0] for r in runs if r["state"]["type"] == "COMPLETED")

    def recorded(names) -> bool:  # the server records task runs a little after they end
        # 300 rows, 100 a request: one slice task (it claims at least 4,096 rows) sends 3
        # no new model's version is filling: no switch stage
        return names.count("slice") == 1 and {"prepare", "report"} <= set(names) and "switch" not in names

    deadline = time.monotonic() + 60
    while not recorded(names := asyncio.run(task_names())) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert recorded(names), names

    async def progress_artifacts():
        async with get_client() as client:
            return (
                await client._client.post(
                    "/artifacts/filter",
                    json={
                        "artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}, "type": {"any_": ["progress"]}},
                        "limit": 10,
                        "sort": "CREATED_DESC",
                    },
                )
            ).json()

    (progress,) = asyncio.run(progress_artifacts())
    assert progress["data"] == 100.0, "the run's progress artifact ends at 100%"


@pytest.mark.slow
def test_a_slice_slower_than_its_lease_keeps_its_rows_so_nobody_pays_twice(env):
    """Leases are renewed while a run holds them: a slice that hangs past ``lease_s`` is
    not claimed (and paid for) by another worker."""
    import time

    env.make_table(10)
    env.create_job(settings_kw={"lease_s": 10, "timeout_s": 60, "concurrency": 1, "retries": 1})
    env.provider.hang_next(1, seconds=50)  # until released below, well within the timeout
    result = {}
    runner = threading.Thread(target=lambda: result.setdefault("summary", env.backfill()))
    runner.start()

    def leases() -> list:
        with env.connect() as conn:
            return conn.execute(
                "SELECT lease_until, lease_until > now() FROM vectorfill._q_1_1 WHERE claimed_by IS NOT NULL"
            ).fetchall()

    def wait_for(predicate, what: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while not predicate():
            assert runner.is_alive(), f"the run ended before {what}: {result}"
            assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
            time.sleep(0.1)

    try:
        wait_for(lambda: env.provider.requests == 1 and len(leases()) == 10, "the request to hang")
        # as if the lease were about to run out: 1 s left. Renewals (every lease_s / 3) must
        # extend it while the request hangs, or the rows would be free for another worker.
        with env.connect() as conn:
            (shortened,) = conn.execute(
                "UPDATE vectorfill._q_1_1 SET lease_until = now() + interval '1 second' "
                "WHERE claimed_by IS NOT NULL RETURNING lease_until"
            ).fetchall()[0]
        wait_for(lambda: all(until > shortened for until, _ in leases()), "a renewal", timeout=30)
        held = leases()
        assert len(held) == 10 and all(live for _, live in held), "the rows in flight are still leased to the run"
        assert runner.is_alive() and env.provider.requests == 1, "the request still hangs, and was not sent again"
    finally:
        env.provider.release_hangs()
        runner.join(60)
    assert result["summary"].embedded == 10
    assert sorted(env.provider.inputs) == sorted(env.texts().values()), "each text sent once"
