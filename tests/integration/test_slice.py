"""The slice task: one Prefect task per slice of the queue, resumed at the stage that failed.

A retry must never pay twice: a store that fails is retried with the vectors in hand (the
texts are not sent again), and each stage keeps its own retry budget and backoff.
"""

from __future__ import annotations

import pytest

import vectorfill.engine.slice as slice_mod
from assertions import assert_vectors_match_texts
from vectorfill.engine.slice import Attempts
from vectorfill.errors import DatabaseError, TerminalProviderError, TransientProviderError


def fail_stores(env, times: int) -> None:
    """The next ``times`` stores fail as if Postgres had been restarted under them: a
    statement trigger on the vector table raises SQLSTATE 57P01 (admin_shutdown, which
    psycopg reports as an OperationalError). The count is a sequence, so that it survives
    the rollback of the store it fails."""
    with env.connect() as conn:
        conn.execute("CREATE SEQUENCE public.stores")
        conn.execute(f"""
            CREATE FUNCTION public.fail_store() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF nextval('public.stores') <= {times} THEN
                    RAISE EXCEPTION 'injected: the server is shutting down' USING ERRCODE = '57P01';
                END IF;
                RETURN NULL;
            END $$""")
        conn.execute(
            "CREATE TRIGGER fail_store AFTER INSERT ON vectorfill._v_1_1 "
            "FOR EACH STATEMENT EXECUTE FUNCTION public.fail_store()"
        )


def stores_tried(env) -> int:
    """COPYs into the vector table so far, failed ones included."""
    with env.connect() as conn:
        last, called = conn.execute("SELECT last_value, is_called FROM public.stores").fetchone()
    return last if called else 0


@pytest.fixture
def quick_db_retries(monkeypatch):
    monkeypatch.setattr(slice_mod, "STAGE_DELAYS", {"claim": (0.05,), "store": (0.05,)})


def test_a_failed_store_is_retried_with_the_vectors_in_hand_so_nothing_is_sent_twice(env, quick_db_retries):
    env.make_table(30)
    # no provider retries at all: the store's retries are its own budget, not the request's
    env.create_job(settings_kw={"max_inputs": 10, "concurrency": 1, "retries": 0})
    fail_stores(env, 2)
    summary = env.backfill()
    assert stores_tried(env) == 3 + 2, "a store per request, and the two injected failures"
    assert summary.embedded == 30 and env.status().pending == 0
    assert env.provider.requests == 3, "one request each: no store retry re-sent its texts"
    assert sorted(env.provider.inputs) == sorted(env.texts().values()), "each text sent exactly once"
    assert summary.tokens == env.provider.tokens_billed
    assert_vectors_match_texts(env)


def test_a_store_failing_past_its_retries_fails_the_run_and_gives_the_rows_back(env, quick_db_retries):
    env.make_table(10)
    env.create_job(settings_kw={"max_inputs": 10, "concurrency": 1, "retries": 0})
    fail_stores(env, 1 + slice_mod.STAGE_RETRIES["store"])
    with pytest.raises(DatabaseError, match="job 'docs': storing vectors failed"):
        env.backfill()
    assert env.provider.requests == 1, "the store's retries did not send the texts again"
    with env.connect() as conn:
        held = conn.execute("SELECT count(*) FROM vectorfill._q_1_1 WHERE lease_until > now()").fetchone()[0]
    assert held == 0 and env.status().pending == 10, "nothing lost: the rows are queued and free"
    assert env.backfill().embedded == 10
    assert_vectors_match_texts(env)


@pytest.mark.slow
def test_of_a_slice_s_requests_only_the_one_that_failed_is_sent_again(env):
    """A slice task claims at least MIN_SLICE_ROWS rows; with max_inputs 10 its 30 rows go in
    three requests side by side. One fails: the retry sends that one alone."""
    from collections import Counter

    env.make_table(30)
    env.create_job(settings_kw={"max_inputs": 10, "concurrency": 1, "retries": 1})
    env.provider.fail_next(1, status=503, headers={"retry-after-ms": "10"})
    summary = env.backfill()
    assert summary.embedded == 30 and env.provider.requests == 4 and summary.requests == 3
    failed = env.provider.request_inputs[0]  # the first to arrive got the 503
    sent = Counter(env.provider.inputs)
    assert {t for t, n in sent.items() if n == 2} == set(failed) and len(failed) == 10
    assert set(sent) == set(env.texts().values()) and max(sent.values()) == 2
    assert_vectors_match_texts(env)


def test_many_slice_tasks_over_several_lanes_embed_every_row_once(env, monkeypatch):
    """With a task per request (MIN_SLICE_ROWS lowered to 1), four lanes run 25 slice tasks
    side by side: their claims take turns, so every slice is full, and the lanes stop once
    the queue is drained."""
    monkeypatch.setattr(slice_mod, "MIN_SLICE_ROWS", 1)
    env.make_table(500)
    env.create_job(settings_kw={"max_inputs": 20, "concurrency": 4, "retries": 1})
    summary = env.backfill()
    assert summary.embedded == 500 and summary.requests == 25 == env.provider.requests
    assert sorted(env.provider.inputs) == sorted(env.texts().values()), "each text sent exactly once"
    assert env.status().pending == 0
    assert_vectors_match_texts(env)


@pytest.mark.slow
def test_a_failed_request_is_retried_without_claiming_again(env):
    env.make_table(10)
    env.create_job(settings_kw={"max_inputs": 10, "concurrency": 1, "retries": 1})
    env.provider.fail_next(1, status=503, headers={"retry-after-ms": "10"})
    summary = env.backfill()
    assert summary.embedded == 10 and env.provider.requests == 2
    assert env.provider.request_inputs[0] == env.provider.request_inputs[1], "the same claimed rows, sent again"
    with env.connect() as conn:  # a second claim of the slice would have counted a second attempt
        assert conn.execute("SELECT count(*) FROM vectorfill._q_1_1").fetchone()[0] == 0
    assert_vectors_match_texts(env)


# --- the retry policy, without a flow ---------------------------------------------------------


def attempts_for(env, retries: int) -> Attempts:
    from vectorfill.jobs.registry import load_job
    from vectorfill.tasks import Work

    env.make_table(1)
    env.create_job(settings_kw={"retries": retries})
    with env.connect() as conn:
        job = load_job(conn, "docs")
    return Attempts(Work(job, job.active))


def test_each_stage_has_its_own_retry_budget(env):
    attempts = attempts_for(env, retries=1)
    transient = TransientProviderError("503", status=503)
    attempts.stage = "embed"
    assert attempts.failed(transient)  # retry 1 of the job's 1
    assert not attempts.failed(transient)
    attempts.stage = "store"
    db_error = DatabaseError("down")
    assert all(attempts.failed(db_error) for _ in range(slice_mod.STAGE_RETRIES["store"]))
    assert not attempts.failed(db_error)
    assert attempts.total_retries == 1 + sum(slice_mod.STAGE_RETRIES.values())
    attempts.stage = "claim"
    assert not attempts.failed(TerminalProviderError("bad input", status=400)), "terminal errors are not retried"


def test_backoff_is_the_stage_s_own_and_honours_retry_after(env):
    attempts = attempts_for(env, retries=5)
    attempts.stage = "embed"
    plain = TransientProviderError("502", status=502)
    delays = []
    for _ in range(4):
        attempts.failed(plain)
        delays.append(attempts.delay(plain))
    for n, d in enumerate(delays):  # 2, 4, 8, 16 s, jittered within +-50%
        assert 0.5 * 2 ** (n + 1) <= d <= 1.5 * 2 ** (n + 1), delays
    attempts.failures.clear()
    attempts.failed(slow := TransientProviderError("503", status=503, retry_after=30))
    assert 15 <= attempts.delay(slow) <= 45, "at least about the provider's Retry-After"
    attempts.failures.clear()
    attempts.failed(rate_limited := TransientProviderError("429", status=429, retry_after=30))
    assert attempts.delay(rate_limited, throttle=object()) <= 3, "a throttled 429 paused every lane already"
    attempts.failures.clear()
    attempts.failed(huge := TransientProviderError("503", status=503, retry_after=3600))
    assert attempts.delay(huge) <= slice_mod.MAX_DELAY_S
    attempts.stage = "store"
    attempts.failed(db_error := DatabaseError("down"))
    assert 0.5 <= attempts.delay(db_error) <= 1.5


def test_an_input_the_client_cannot_send_fails_its_row_and_the_others_are_embedded(provider):
    """InputError (here a lone surrogate, which cannot be encoded as UTF-8) singles out one
    input before anything is sent: that row is rejected with the reason, the rest go in one
    request, and nothing is sent for the bad one."""
    import asyncio

    import numpy as np
    from pydantic import SecretStr

    from conftest import API_KEY
    from fake_provider import expected_vector
    from vectorfill.engine.claim import Item
    from vectorfill.engine.embed import _embed
    from vectorfill.provider.client import EmbeddingsClient

    texts = ["first text", "bad \ud800 text", "third text"]
    items = tuple(Item((i,), i, t, b"", 3) for i, t in enumerate(texts))

    async def go():
        async with EmbeddingsClient(
            base_url=provider.base_url, model="fake-embed", api_key=SecretStr(API_KEY)
        ) as client:
            return await _embed(client, items, truncate=True)

    embedded = asyncio.run(go())
    assert [i.text for i in embedded.items] == ["first text", "third text"]
    for item, vector in zip(embedded.items, embedded.vectors, strict=True):
        np.testing.assert_allclose(vector, expected_vector(item.text, 32), rtol=1e-6)
    assert [(r[0].text, r[1]) for r in embedded.rejected] == [("bad \ud800 text", None)]
    assert "lone UTF-16 surrogate" in embedded.rejected[0][2]
    assert provider.requests == 1 and sorted(provider.inputs) == ["first text", "third text"]


def test_a_job_dropped_under_a_run_stops_it_with_one_job_error(env, monkeypatch):
    """The queue table vanishing mid-run (a `job drop` from another shell) is a JobError that
    says what happened, not a raw psycopg ProgrammingError, and it is not retried."""
    from vectorfill.errors import JobError

    env.make_table(20)
    env.create_job()
    claim_rows = slice_mod.claim_rows

    async def drop_then_claim(*args, **kwargs):
        with env.connect() as conn:
            conn.execute("DROP TABLE vectorfill._q_1_1")
        return await claim_rows(*args, **kwargs)

    monkeypatch.setattr(slice_mod, "claim_rows", drop_then_claim)
    with pytest.raises(JobError, match=r"claiming rows failed: .*was the job dropped"):
        env.backfill()
    assert env.provider.requests == 0


def test_database_errors_are_translated_in_one_place(pg_url):
    import psycopg

    from vectorfill.errors import DatabaseError, JobError
    from vectorfill.storage.db import translate_error

    with psycopg.connect(pg_url, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as gone:
            conn.execute("SELECT * FROM vectorfill_no_such_table")
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("SELECT 1/0")
    with pytest.raises(psycopg.Error) as down:
        psycopg.connect("postgresql://u:secret@127.0.0.1:9/x", connect_timeout=2)

    job_error = translate_error(gone.value, "claiming rows", job="docs")
    assert isinstance(job_error, JobError) and not job_error.transient
    unreachable = translate_error(down.value, "connecting", url="postgresql://u:secret@127.0.0.1:9/x")
    assert isinstance(unreachable, DatabaseError) and unreachable.transient
    assert "secret" not in str(unreachable) and "u:***@127.0.0.1:9" in str(unreachable)
    refusal = translate_error(refused.value, "storing vectors", job="docs")
    assert isinstance(refusal, DatabaseError) and not refusal.transient and "division by zero" in str(refusal)
