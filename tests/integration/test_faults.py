"""Faults and awkward input through the real flow: each has a defined, tested outcome."""

from __future__ import annotations

import numpy as np
import pytest

from assertions import assert_vectors_match_texts
from vectorfill.errors import QuotaExceeded, TransientProviderError


@pytest.mark.slow
def test_a_hang_past_the_timeout_is_retried(env):
    env.make_table(20)
    env.create_job(settings_kw={"timeout_s": 1, "retries": 2, "concurrency": 1})
    env.provider.hang_next(1, seconds=5)
    summary = env.backfill()
    assert summary.embedded == 20
    assert_vectors_match_texts(env)


@pytest.mark.slow
@pytest.mark.parametrize(
    "status, body",
    [
        (500, None),
        (502, "<html><body>Bad gateway</body></html>"),
        (429, None),
        (408, None),
    ],
)
def test_transient_statuses_and_proxy_pages_are_retried(env, status, body):
    env.make_table(20)
    env.create_job(settings_kw={"retries": 2, "concurrency": 1})
    env.provider.fail_next(1, status=status, body=body, headers={"retry-after-ms": "10"})
    assert env.backfill().embedded == 20
    assert env.provider.requests == 2
    assert_vectors_match_texts(env)


def test_insufficient_quota_stops_the_run_without_retrying(env):
    env.make_table(20)
    env.create_job(settings_kw={"retries": 3, "concurrency": 1})
    env.provider.fail_next(
        5,
        status=429,
        body={
            "error": {
                "message": "You exceeded your current quota",
                "type": "insufficient_quota",
                "param": None,
                "code": "insufficient_quota",
            }
        },
    )
    with pytest.raises(QuotaExceeded, match="not a rate limit"):
        env.backfill()
    assert env.provider.requests == 1
    assert env.status().pending == 20


def test_a_model_whose_dimensions_differ_from_the_stored_ones_stops_with_a_clear_error(env):
    env.make_table(10)
    env.create_job(model="fake-embed", dimensions=None, settings_kw={"retries": 0})
    env.backfill()  # stores 32-dim vectors
    env.provider.encoder.dimensions = 16  # the endpoint now serves another size
    with env.connect() as conn:
        conn.execute("UPDATE articles SET body = 'changed' WHERE id = 1")
    with pytest.raises(TransientProviderError, match="16-dimensional vectors but 32 were expected"):
        env.backfill()
    assert env.status().pending == 1


def test_rows_that_keep_failing_move_to_the_failures_table_after_max_attempts(env):
    env.make_table(3)
    env.create_job(settings_kw={"retries": 0, "max_attempts": 2, "concurrency": 1})
    for _ in range(2):
        env.provider.fail_next(1, status=503)
        with pytest.raises(TransientProviderError):
            env.backfill()
    summary = env.backfill()  # third claim: over max_attempts
    assert summary.failed == 3 and env.provider.requests == 2
    with env.connect() as conn:
        reasons = {r[0] for r in conn.execute("SELECT reason FROM vectorfill.failures")}
    assert reasons == {"max_attempts"}
    from vectorfill.jobs.registry import retry_failures

    with env.connect() as conn:
        assert retry_failures(conn, "docs", ["2", "99"]) == 1
        assert retry_failures(conn, "docs", ["[3]"]) == 1
        assert retry_failures(conn, "docs") == 1
    assert env.backfill().embedded == 3


def test_unusual_text_is_embedded_as_it_is(env):
    env.make_table(6)
    odd = {
        1: "control\x01chars\x07and\ttabs\r\n",
        2: "emoji 🙂🚀 and combining é",
        3: "עברית ومرحبا بالعالم right-to-left",
        4: "中文文本和日本語のテキスト",
        5: "x" * 1_000_000,  # 1 MB: truncated token-exactly to the model's limit
    }
    with env.connect() as conn:
        for key, body in odd.items():
            conn.execute("UPDATE articles SET body = %s WHERE id = %s", (body, key))
    env.create_job(settings_kw={"retries": 1})
    summary = env.backfill()
    assert summary.embedded == 6 and summary.failed == 0 and summary.truncated == 1
    texts = env.texts()
    vectors = env.vectors()
    for key in (1, 2, 3, 4, 6):
        np.testing.assert_allclose(vectors[key], env.provider.expected_vector(texts[key]), atol=1e-6)
    sent = [t for t in env.provider.inputs if t.startswith("Title 5")]
    from vectorfill.provider.tokens import Cl100k

    assert len(sent) == 1 and Cl100k().count(sent)[0] == 8191


@pytest.mark.slow
def test_a_tpm_budget_is_used_without_meeting_429s(env):
    """The provider enforces 1,500 tokens/minute; the job knows its budget, so its requests
    wait for budget instead of being refused (the run needs a little more than the budget)."""
    import time

    from fake_provider import RateLimiter as ProviderLimits

    env.make_table(54)  # ~1,620 tokens in all: the last request waits ~5 s for the minute's budget to refill
    env.provider.limiter = ProviderLimits(rpm=None, tpm=1500, model="fake-embed", clock=time.monotonic)
    env.create_job(settings_kw={"max_inputs": 5, "tpm": 1500, "retries": 2})
    started = time.monotonic()
    summary = env.backfill()
    assert summary.embedded == 54
    assert env.provider.rate_limited == 0
    assert summary.tokens > 1500 and time.monotonic() - started > 3, "over budget, so the run had to wait"
    assert_vectors_match_texts(env)


@pytest.mark.slow
def test_without_a_configured_budget_the_limit_is_learnt_from_headers_and_the_run_completes(env):
    import time

    from fake_provider import RateLimiter as ProviderLimits

    env.make_table(54)  # over the provider's minute budget (~1,620 tokens)
    env.provider.limiter = ProviderLimits(rpm=None, tpm=1500, model="fake-embed", clock=time.monotonic)
    env.create_job(settings_kw={"max_inputs": 5, "retries": 2})
    summary = env.backfill()
    assert summary.embedded == 54 and summary.tokens > 1500
    assert env.provider.rate_limited <= 2, "the announced limit is followed after the first 429 at most"
    assert_vectors_match_texts(env)
