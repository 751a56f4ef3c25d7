"""Backfills through the Batch API end to end: real Postgres, real Prefect, the fake
provider's Files and Batches endpoints (tests/fake_batch_api.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from assertions import assert_vectors_match_texts
from batch_helpers import batches, queue_state, wait_for_fake
from conftest import API_KEY
from vectorfill.jobs.batches import set_batch_mode

POLL = 0.05


def test_batch_backfill_with_wait_stores_the_online_vectors_and_sends_nothing_online(env):
    env.make_table(300)
    env.create_job(settings_kw={"max_inputs": 50, "retries": 1})
    summary = env.backfill(batch=True, wait=True, poll_s=POLL)
    assert summary.embedded == 300 and summary.batch_rows == 300 and summary.pending == 0
    assert summary.batches_submitted == 1 and summary.batches_collected == 1 and summary.batches_open == 0
    assert summary.tokens == env.provider.batch_api.billed_tokens > 0
    assert env.provider.requests == 0, "nothing went through the online endpoint"
    assert env.provider.batch_api.submitted_inputs == 300 and env.provider.batch_api.billed_inputs == 300
    assert_vectors_match_texts(env)
    [b] = batches(env)
    assert (b.state, b.provider_status, b.rows, b.requests, b.written) == ("done", "completed", 300, 6, 300)
    assert b.billed_tokens == summary.tokens and b.submitted_at and b.finished_at


def test_rows_of_a_batch_out_are_not_resent_online_and_a_later_run_collects_them(env):
    env.make_table(120)
    env.create_job(settings_kw={"max_inputs": 50, "retries": 1})
    env.provider.batch_api.hold_next()
    summary = env.backfill(batch=True)
    assert summary.batches_submitted == 1 and summary.batches_open == 1 and summary.embedded == 0
    pending, claimed, lease = queue_state(env)
    assert pending == claimed == 120 and lease.total_seconds() > 24 * 3600, "leased for the batch's life"
    online = env.backfill(batch=False)  # a concurrent online run: the batch's rows are not its to send
    assert online.embedded == 0 and env.provider.requests == 0
    assert online.batches_open == 1 and online.batches_collected == 0  # still running: shown, not collected
    env.provider.batch_api.release()
    wait_for_fake(env)
    summary = env.backfill(batch=False)  # the next run collects first
    assert summary.batch_rows == 120 and summary.embedded == 120 and summary.batches_collected == 1
    assert env.provider.requests == 0 and env.provider.batch_api.billed_inputs == 120
    assert_vectors_match_texts(env)


def test_a_row_edited_and_one_deleted_while_their_batch_is_out_end_right(env):
    env.make_table(60)
    env.create_job(settings_kw={"max_inputs": 20, "retries": 1})
    env.provider.batch_api.hold_next()
    env.backfill(batch=True)
    with env.connect() as conn:
        conn.execute("UPDATE articles SET body = 'Edited while out' WHERE id = 5")
        conn.execute("DELETE FROM articles WHERE id = 6")
    env.provider.batch_api.release()
    wait_for_fake(env)
    summary = env.backfill(batch=False)
    assert summary.batch_rows == 58 and summary.stale == 2  # 5's old text and 6: not written
    assert env.provider.inputs == ["Title 5\n\nEdited while out"], "only the edited row is sent again (online)"
    assert_vectors_match_texts(env)  # 5 has its new text's vector, 6 has none
    assert 6 not in env.vectors() and env.status().pending == 0


def test_an_expired_batch_stores_what_completed_and_sends_the_rest_again(env):
    env.make_table(100)
    env.create_job(settings_kw={"max_inputs": 10, "retries": 1})
    env.provider.batch_api.expire_next(0.5)
    summary = env.backfill(batch=True, wait=True, poll_s=POLL)
    assert summary.embedded == 100 and summary.pending == 0 and summary.batch_retried == 50
    by_status = {b.provider_status: b for b in batches(env)}
    assert set(by_status) == {"expired", "completed"}
    assert (by_status["expired"].rows, by_status["expired"].written, by_status["expired"].retried) == (100, 50, 50)
    assert (by_status["completed"].rows, by_status["completed"].written) == (50, 50)
    api = env.provider.batch_api
    assert api.billed_inputs == 100 and sorted(api.embedded) == sorted(env.texts().values()), "nothing paid twice"
    assert env.provider.requests == 0
    assert_vectors_match_texts(env)


def test_a_backfill_over_the_input_limit_is_split_into_batches_within_it(env):
    env.make_table(150)
    env.create_job(settings_kw={"max_inputs": 30, "batch_max_inputs": 100, "retries": 1})
    env.provider.batch_api.max_inputs = 100  # the fake refuses a batch over 100 inputs
    summary = env.backfill(batch=True, wait=True, poll_s=POLL)
    assert summary.batches_submitted == 2 and summary.embedded == 150
    assert sorted(b.rows for b in batches(env)) == [50, 100]
    assert all(b.provider_status == "completed" for b in batches(env))
    assert env.provider.batch_api.submitted_inputs == 150
    assert_vectors_match_texts(env)


def test_a_file_over_the_size_limit_is_split_and_its_remainder_sent_in_the_next(env, monkeypatch):
    from vectorfill.provider import batches as batch_api

    env.make_table(80)
    env.create_job(settings_kw={"max_inputs": 10, "retries": 1})
    monkeypatch.setattr(batch_api, "MAX_FILE_BYTES", 2500)  # about 3 requests of 10 inputs a file
    summary = env.backfill(batch=True, wait=True, poll_s=POLL)
    assert summary.embedded == 80 and summary.batches_submitted >= 3
    assert all(len(f.content) <= 2500 for f in env.provider.batch_api.files.values() if f.purpose == "batch")
    assert env.provider.batch_api.billed_inputs == 80
    assert_vectors_match_texts(env)


def test_input_level_400s_are_failures_with_the_reason_and_the_rest_of_the_line_is_retried(env):
    env.make_table(40)
    env.create_job(settings_kw={"max_inputs": 10, "retries": 1})
    env.provider.batch_api.fail_lines_when(lambda t: t.startswith("Title 7\n"), status=400)
    summary = env.backfill(batch=True, wait=True, poll_s=POLL)
    assert summary.embedded == 39 and summary.failed == 1 and summary.pending == 0
    with env.connect() as conn:
        [(key, reason, status, message)] = conn.execute(
            "SELECT row_key, reason, status, message FROM vectorfill.failures"
        ).fetchall()
    assert key == [7] and reason == "rejected" and status == 400 and "refused" in message
    assert env.provider.batch_api.billed_inputs == 39


@pytest.mark.slow
def test_token_limit_exceeded_gives_the_rows_back_without_an_attempt_and_they_go_later(env):
    env.make_table(100)
    env.create_job(settings_kw={"max_inputs": 25, "batch_max_inputs": 50, "retries": 1})
    api = env.provider.batch_api
    api.token_limit = 50 * 40  # about one batch of 50 rows enqueued at a time
    api.stage_s = 0.5  # the first is still in progress when the second is validated
    summary = env.backfill(batch=True, wait=True, poll_s=POLL)
    assert summary.embedded == 100 and summary.pending == 0
    refused = [b for b in batches(env) if b.provider_status == "failed"]
    assert refused and all("token_limit_exceeded" in b.error for b in refused)
    assert api.billed_inputs == 100
    assert_vectors_match_texts(env)


def test_a_crash_after_the_upload_gives_the_rows_back(env, monkeypatch):
    from vectorfill.provider.batches import BatchesClient

    class Crash(BaseException):
        pass

    async def upload(self, content, filename="x"):
        raise Crash()

    env.make_table(30)
    env.create_job()
    with monkeypatch.context() as m:
        m.setattr(BatchesClient, "upload", upload)
        with pytest.raises(Crash):
            env.backfill(batch=True)
    assert queue_state(env)[1] == 30, "the rows stay claimed by the dead submission"
    summary = env.backfill(batch=False)  # collect: nothing was created, so the rows go back and online
    assert summary.embedded == 30 and env.provider.batch_api.created == 0
    [b] = batches(env)
    assert b.state == "released" and "stopped before it was created" in b.error
    assert_vectors_match_texts(env)


def test_batch_mode_as_the_jobs_default_makes_the_re_embed_a_batch_run(env):
    from vectorfill.jobs.versions import set_model

    env.make_table(50)
    env.create_job()
    env.backfill()
    with env.connect() as conn:
        set_batch_mode(conn, "docs", True)
        set_model(conn, "docs", model="fake-embed", dimensions=16)
    summary = env.backfill(wait=True, poll_s=POLL)  # no --batch: the job's setting
    assert summary.batch_rows == 50 and summary.switched_to == 2
    assert env.provider.requests == 1  # the first, online backfill only
    vectors = env.vectors()
    for key, text in env.texts().items():
        np.testing.assert_allclose(vectors[key], env.provider.expected_vector(text, 16), atol=1e-6)


def test_estimate_shows_the_batch_price_beside_the_online_one(env):
    from vectorfill.jobs.estimate import estimate
    from vectorfill.provider.prices import batch_price_per_million, price_per_million

    assert batch_price_per_million("text-embedding-3-large") == price_per_million("text-embedding-3-large") / 2
    env.make_table(20)
    env.create_job(settings_kw={"prices": {"fake-embed": 0.2}, "batch_prices": {"fake-embed": 0.1}})
    with env.connect() as conn:
        [e] = estimate(conn, "docs")
        [o] = estimate(conn, "docs", batch_price=0.05)
    assert e.cost_usd == pytest.approx(e.tokens * 0.2 / 1e6) and e.batch_cost_usd == pytest.approx(e.cost_usd / 2)
    assert o.batch_cost_usd == pytest.approx(e.tokens * 0.05 / 1e6)


def test_a_collect_only_run_stores_finished_batches_and_submits_nothing(env):
    from vectorfill.orchestration.serve import build_deployments

    served = {d.name: d for d in build_deployments(["docs", "other"], batch_jobs=["docs"])}
    assert "collect-batches-other" not in served
    assert served["collect-batches-docs"].parameters == {"job": "docs", "batch": True, "max_rows": 0}
    env.make_table(40)
    env.create_job()
    env.backfill(batch=True, max_rows=30)
    wait_for_fake(env)
    with env.connect() as conn:
        conn.execute("INSERT INTO articles (id, title, body) VALUES (1001, 'New', 'queued after')")
    summary = env.backfill(**served["collect-batches-docs"].parameters)  # what `vectorfill serve` runs
    assert summary.batch_rows == 30 and summary.batches_submitted == 0 and summary.pending == 11
    assert env.provider.batch_api.created == 1 and env.provider.requests == 0


def test_cancelled_batches_store_what_they_finished_and_give_the_rest_back(env):
    from vectorfill.jobs.batches import cancel_batches

    env.make_table(40)
    env.create_job(settings_kw={"max_inputs": 10, "retries": 1})
    env.provider.batch_api.hold_next()
    env.backfill(batch=True)
    [b] = batches(env)
    api = env.provider.batch_api
    deadline = time.monotonic() + 10
    while api.batches[b.provider_batch_id].status != "in_progress":  # the fake validates it with time
        api._advance(api.batches[b.provider_batch_id])
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with env.connect() as conn:
        assert cancel_batches(conn, "docs") == [b.provider_batch_id]
    assert batches(env)[0].provider_status == "cancelling"
    wait_for_fake(env)
    summary = env.backfill(batch=False)  # collects the half it finished; the rest goes online
    assert summary.batch_rows == 20 and summary.embedded == 40 and summary.batch_retried == 20
    [b] = batches(env)
    assert (b.state, b.provider_status, b.written, b.retried) == ("done", "cancelled", 20, 20)
    assert env.provider.batch_api.billed_inputs == 20 and len(env.provider.inputs) == 20
    with env.connect() as conn:  # given back without counting the cancelled claim as an attempt
        assert conn.execute("SELECT count(*) FROM vectorfill.failures").fetchone()[0] == 0
    assert_vectors_match_texts(env)


def test_a_crash_while_collecting_stores_the_rest_next_time_and_nothing_twice(env, monkeypatch):
    import vectorfill.engine.collect as collect

    class Crash(BaseException):
        pass

    real_store, calls = collect.store_vectors, []

    async def store_then_die(work, embedded, db):
        calls.append(len(embedded.items))
        if len(calls) == 2:
            raise Crash()
        return await real_store(work, embedded, db)

    env.make_table(100)
    env.create_job(settings_kw={"max_inputs": 10, "retries": 1})
    env.backfill(batch=True)
    wait_for_fake(env)
    with monkeypatch.context() as m:
        m.setattr(collect, "STORE_ROWS", 30)
        m.setattr(collect, "store_vectors", store_then_die)
        with pytest.raises(Crash):
            env.backfill()
    assert env.status().embedded == 30 and batches(env)[0].state == "submitted"
    summary = env.backfill()
    assert summary.batch_rows == 70 and summary.stale == 30  # the 30 stored before the crash: not again
    assert env.provider.batch_api.billed_inputs == 100 and env.provider.requests == 0
    assert_vectors_match_texts(env)


def test_a_batch_api_outage_does_not_stop_online_runs(env, monkeypatch):
    from vectorfill.errors import TransientProviderError
    from vectorfill.provider.batches import BatchesClient

    env.make_table(30)
    env.create_job()
    env.provider.batch_api.hold_next()
    env.backfill(batch=True)
    with env.connect() as conn:
        conn.execute("INSERT INTO articles (id, title, body) VALUES (1001, 'New', 'written meanwhile')")

    async def down(self, batch_id):
        raise TransientProviderError("batches endpoint answered 503")

    with monkeypatch.context() as m:
        m.setattr(BatchesClient, "retrieve", down)
        summary = env.backfill(batch=False)
    assert summary.embedded == 1 and summary.batches_open == 1 and env.provider.inputs == ["New\n\nwritten meanwhile"]
    assert queue_state(env)[1] == 30, "the batch's rows stay claimed"
    env.provider.batch_api.release()
    wait_for_fake(env)
    assert env.backfill().batch_rows == 30
    assert_vectors_match_texts(env)


def test_no_secret_in_batch_records_metadata_or_files(env):
    env.make_table(20)
    env.create_job()
    env.backfill(batch=True, wait=True, poll_s=POLL)
    with env.connect() as conn:
        dumped = conn.execute(
            "SELECT (SELECT jsonb_agg(to_jsonb(b)) FROM vectorfill.batches b)::text || "
            "(SELECT jsonb_agg(to_jsonb(i)) FROM vectorfill.batch_items i)::text"
        ).fetchone()[0]
    assert API_KEY not in dumped and "Body of row" not in dumped, "no key, and no text kept in the database"
    api = env.provider.batch_api
    [batch] = api.batches.values()
    assert set(batch.metadata) == {"vectorfill_job", "vectorfill_version", "vectorfill_submission"}
    assert all(API_KEY.encode() not in f.content for f in api.files.values())
