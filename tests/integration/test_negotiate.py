"""Real servers and wrong settings, through the real flow: a refusal of the *request* stops
the run (or is negotiated) in a handful of requests, with every row still queued; only a
refusal of an *input* is bisected. The fake provider answers as each server does
(``FakeProvider.behave_like``), with that server's status codes and error bodies."""

from __future__ import annotations

import math

import pytest

from assertions import assert_vectors_match_texts
from vectorfill.errors import RequestRejected
from vectorfill.provider.budgets import endpoint_key

ROWS = 1000


def caps(env) -> tuple | None:
    key = endpoint_key(env.provider.base_url, "fake-embed")
    with env.connect() as conn:
        return conn.execute(
            "SELECT max_inputs, max_request_tokens, encoding_format FROM vectorfill.endpoint_caps WHERE endpoint = %s",
            (key,),
        ).fetchone()


def failed_rows(env) -> int:
    with env.connect() as conn:
        return conn.execute("SELECT count(*) FROM vectorfill.failures").fetchone()[0]


@pytest.mark.parametrize("server", ["tei", "infinity"])
def test_a_server_refusing_base64_gets_float_and_it_is_remembered(env, server):
    env.make_table(ROWS)
    env.create_job(settings_kw={"retries": 1, "concurrency": 1})
    env.provider.behave_like(server, base64=False, max_client_batch_size=4096)
    summary = env.backfill()
    assert summary.embedded == ROWS and summary.failed == 0
    assert env.provider.requests <= 3, f"{env.provider.requests} requests (1,999 before)"
    assert caps(env) == (None, None, "float")
    assert_vectors_match_texts(env)
    # the next run (another process, say) asks for float at once: no refused request
    env.make_table(10, start=ROWS + 1)
    before = env.provider.requests
    assert env.backfill().embedded == 10
    assert env.provider.requests == before + 1


@pytest.mark.parametrize("server", ["openai", "vllm", "litellm"])
def test_a_model_refusing_dimensions_stops_the_run_with_every_row_queued(env, server):
    env.make_table(ROWS)
    env.create_job(dimensions=16, settings_kw={"retries": 1})
    env.provider.behave_like(server)
    with pytest.raises(RequestRejected, match="refuses the `dimensions` parameter") as info:
        env.backfill()
    assert info.value.setting == "dimensions"
    assert "set-model docs --model fake-embed` (no --dimensions)" in str(info.value)
    assert env.provider.requests <= 10, f"{env.provider.requests} requests (thousands before)"
    st = env.status()
    assert st.pending == ROWS and st.failed == 0 and failed_rows(env) == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "server, options, cap",
    [
        ("tei", {"max_client_batch_size": 32}, 32),  # 413 {"message": "batch size 1000 > ... 32"}
        ("azure_like", {"max_inputs": 16}, 16),  # 400 "The max number of inputs is 16"
    ],
)
def test_a_cap_on_inputs_named_by_the_server_is_learnt_once_and_remembered(env, server, options, cap):
    env.make_table(ROWS)
    env.create_job(settings_kw={"retries": 1, "concurrency": 2})
    if server == "azure_like":  # Azure's refusal, on the plain /v1 path
        variant = env.provider.behave_like("azure", **options)
        variant.azure_key = None
    else:
        env.provider.behave_like(server, **options)
    summary = env.backfill()
    assert summary.embedded == ROWS and summary.failed == 0
    assert env.provider.requests <= 1 + math.ceil(ROWS / cap) + 2, env.provider.requests
    assert caps(env)[0] == cap
    assert_vectors_match_texts(env)
    env.make_table(ROWS, start=ROWS + 1)
    before = env.provider.requests
    assert env.backfill().embedded == ROWS
    assert env.provider.requests - before == math.ceil(ROWS / cap), "packed to the remembered cap: no refusal"


@pytest.mark.slow
def test_a_gateway_413_page_that_names_no_limit_is_learnt_from_the_halves(env):
    env.make_table(ROWS)
    env.create_job(settings_kw={"retries": 1, "concurrency": 1})
    env.provider.behave_like("gateway", max_inputs=20)
    summary = env.backfill()
    assert summary.embedded == ROWS and summary.failed == 0
    learnt = caps(env)[0]
    assert learnt is not None and learnt <= 20
    # bisecting every request would cost ~2x; once learnt, each request is accepted
    assert env.provider.requests <= 20 + math.ceil(ROWS / learnt), env.provider.requests
    assert_vectors_match_texts(env)


def test_a_refusal_of_every_request_stops_after_a_probe(env):
    """A gateway answering every request with a plain-text 400: the probe with a one-word
    input is refused too, so it is the request, whatever the inputs."""
    env.make_table(ROWS)
    env.create_job(settings_kw={"retries": 1})
    env.provider.fail_when(lambda text: True, status=400, body="Bad Request")
    with pytest.raises(RequestRejected, match="refuses every request") as info:
        env.backfill()
    assert "Bad Request" in str(info.value) and "vectorfill check docs" in str(info.value)
    assert env.provider.requests <= 10, env.provider.requests
    st = env.status()
    assert st.pending == ROWS and st.failed == 0 and failed_rows(env) == 0


@pytest.mark.slow
def test_a_refusal_of_one_input_is_still_bisected_down_to_that_row(env):
    env.make_table(100)
    env.create_job(settings_kw={"retries": 1, "concurrency": 1})
    env.provider.fail_when(lambda text: text.startswith("Title 37\n"))
    summary = env.backfill()
    assert summary.embedded == 99 and summary.failed == 1
    with env.connect() as conn:
        assert conn.execute("SELECT row_key FROM vectorfill.failures").fetchone()[0] == [37]


def test_the_same_refusal_for_many_inputs_after_a_success_is_the_requests(env):
    """The endpoint worked, then refuses everything (a key downgraded, a gateway changed):
    the same message for different single inputs makes the run probe again and stop."""
    env.make_table(100)
    env.create_job(settings_kw={"retries": 1, "concurrency": 1, "max_inputs": 10})
    env.provider.hang_next(1, seconds=0)  # the first request is answered
    env.provider.fail_next(200, status=400)  # then everything is refused, probes included
    with pytest.raises(RequestRejected):
        env.backfill()
    assert env.provider.requests <= 20, env.provider.requests
    st = env.status()
    assert st.embedded == 10 and st.pending == 90 and failed_rows(env) == 0


def test_answers_without_usage_or_index_and_with_extra_fields_are_accepted(env):
    env.make_table(50)
    env.create_job(settings_kw={"retries": 1})
    env.provider.behave_like("minimal")
    summary = env.backfill()
    assert summary.embedded == 50 and summary.tokens_estimated == summary.tokens > 0
    assert_vectors_match_texts(env)


def test_ollama_float_answers_to_base64_requests(env):
    env.make_table(30)
    env.create_job(settings_kw={"retries": 1})
    env.provider.behave_like("ollama")
    summary = env.backfill()
    assert summary.embedded == 30 and summary.tokens_estimated == 0
    assert_vectors_match_texts(env)


def test_azure_openai_api_key_header_api_version_and_deployment_path(env, monkeypatch):
    from vectorfill.config import JobSettings

    env.make_table(40)
    env.provider.behave_like("azure", api_key="azure-secret", max_inputs=16)
    monkeypatch.setenv("VF_AZURE_KEY", "azure-secret")
    base = env.provider.base_url.removesuffix("/v1") + "/openai/deployments/fake-embed"
    env.create_job(
        base_url=base,
        api_key_env="VF_AZURE_KEY",
        settings=JobSettings(retries=1, api_key_header="api-key", api_version="2024-02-01"),
    )
    summary = env.backfill()
    assert summary.embedded == 40 and env.provider.requests == 1 + 3  # 40 refused, then 16+16+8
    assert_vectors_match_texts(env)


def test_a_cap_on_tokens_per_request_is_learnt(env):
    env.make_table(200)
    env.create_job(settings_kw={"retries": 1, "concurrency": 1})
    route = next(r for r in env.provider.app.routes if getattr(r, "path", None) == "/v1/embeddings")
    route.endpoint.__self__.max_request_tokens = 1000  # "Requested N tokens, max 1000 tokens per request"
    summary = env.backfill()
    assert summary.embedded == 200 and summary.failed == 0
    assert caps(env)[1] == 1000
    assert env.provider.requests <= 1 + 2 * math.ceil(summary.tokens / 1000) + 4, env.provider.requests
    assert_vectors_match_texts(env)


# ------------------------------------------------------------------ reading refusals (no server)


def test_runs_stopped_by_a_refused_setting_never_use_up_the_rows_attempts(env):
    """Each run claims the rows (counting an attempt) and stops on the refused setting; the
    attempt is given back, so however often it is tried, no row reaches max_attempts."""
    env.make_table(20)
    env.create_job(dimensions=16, settings_kw={"retries": 0, "max_attempts": 2})
    env.provider.behave_like("openai")
    for _ in range(3):
        with pytest.raises(RequestRejected):
            env.backfill()
    st = env.status()
    assert st.pending == 20 and st.failed == 0 and failed_rows(env) == 0


# ------------------------------------------------------------------ vectorfill check (the library)


def _check(env, **kw):
    import asyncio

    from conftest import API_KEY
    from vectorfill.config import JobSettings
    from vectorfill.jobs.check import check_endpoint

    args = dict(
        job="docs",
        base_url=env.provider.base_url,
        model="fake-embed",
        api_key_env="VF_TEST_API_KEY",
        dimensions=None,
        settings=JobSettings(),
        db_url=env.url,
    )
    args.update(kw)
    assert API_KEY
    return asyncio.run(check_endpoint(**args))


def _line(report, what):
    return next(line for line in report.lines if line.what == what)


def test_check_passes_and_says_what_works(env):
    report = _check(env)
    assert report.ok and env.provider.requests == 1
    from vectorfill.jobs.check import CHECK_TEXTS

    assert env.provider.request_inputs[-1] == list(CHECK_TEXTS)
    assert "32-dimensional" in _line(report, "dimensions").detail
    assert "base64 asked and answered" in _line(report, "encoding").detail
    assert "usage reported" in _line(report, "usage").detail


def test_check_negotiates_base64_and_remembers_it(env):
    env.provider.behave_like("tei", base64=False, max_client_batch_size=1)
    report = _check(env)
    assert report.ok, report
    assert "float is used instead" in _line(report, "encoding").detail
    assert "at most 1 inputs per request" in _line(report, "inputs").detail
    assert caps(env) == (1, None, "float")


@pytest.mark.parametrize(
    "kw, what, words",
    [
        ({"api_key_env": "VF_NOT_SET_HERE"}, "API key", "VF_NOT_SET_HERE is not set"),
        ({"model": "no-such-model"}, "model", "answered 404"),
        ({"dimensions": 16, "settings_variant": "openai"}, "dimensions", "refuses the `dimensions` parameter"),
        ({"dimensions": 16, "expected_dims": 32}, "dimensions", "16-dimensional vectors but 32 were expected"),
    ],
)
def test_check_fails_naming_what_to_change(env, monkeypatch, kw, what, words):
    monkeypatch.setenv("VF_WRONG", "sk-wrong")
    variant = kw.pop("settings_variant", None)
    if variant:
        env.provider.behave_like(variant)
    report = _check(env, **kw)
    assert not report.ok
    failed = [line for line in report.lines if not line.ok]
    assert failed[0].what == what and words in failed[0].detail, failed


def test_check_fails_on_a_wrong_key(env, monkeypatch):
    monkeypatch.setenv("VF_WRONG", "sk-wrong")
    report = _check(env, api_key_env="VF_WRONG")
    assert not report.ok and "sk-wrong" not in str(report.as_dict())
    assert _line(report, "API key").ok is False


@pytest.mark.slow
def test_prefect_states_tell_failed_rows_and_refused_requests_from_a_clean_run(env):
    import asyncio

    from vectorfill.errors import RowsFailed
    from vectorfill.flows.backfill import backfill

    env.make_table(20)
    env.create_job(settings_kw={"retries": 0, "concurrency": 1})
    env.provider.fail_when(lambda text: text.startswith("Title 5\n"))
    state = asyncio.run(backfill("docs", return_state=True))
    assert state.is_failed() and "1 rows failed" in state.message
    error = state.result(raise_on_failure=False)
    assert isinstance(error, RowsFailed) and error.summary.failed == 1
    env.provider.clear_faults()
    with env.connect() as conn:
        conn.execute("UPDATE articles SET body = 'changed' WHERE id = 2")
    clean = asyncio.run(backfill("docs", return_state=True))
    assert clean.is_completed() and clean.name == "Completed"
    with env.connect() as conn:
        conn.execute("UPDATE articles SET body = 'changed again' WHERE id = 3")
    env.provider.fail_when(lambda text: True, status=400, body="Bad Request")
    refused = asyncio.run(backfill("docs", return_state=True))
    assert refused.is_failed() and "refuses every request" in refused.message


def test_check_forget_starts_over(env):
    from vectorfill.jobs.check import check_job

    env.make_table(5)
    env.create_job()
    env.provider.behave_like("tei", base64=False)
    assert check_job(env.url, "docs")[0].ok and caps(env)[2] == "float"
    env.provider.behave_like("tei", base64=True, max_client_batch_size=4096)  # the server was upgraded
    (report,) = check_job(env.url, "docs", forget=True)
    assert report.ok and caps(env) is None
    assert "base64 asked and answered" in _line(report, "encoding").detail


def test_check_says_floats_came_back_when_base64_was_asked(env):
    env.provider.behave_like("ollama")  # answers float lists whatever encoding_format says
    report = _check(env)
    assert report.ok
    detail = _line(report, "encoding").detail
    assert "base64 asked, floats answered" in detail and "accepted" not in detail


def test_check_finds_the_endpoint_without_v1_and_job_create_uses_it(env):
    at_root = env.provider.base_url.removesuffix("/v1")  # /embeddings there answers 404
    adopted = _check(env, base_url=at_root, adopt_base_url=True)
    assert adopted.ok and adopted.base_url == env.provider.base_url
    assert f"{at_root}/embeddings answered 404 but {env.provider.base_url}/embeddings answers" in (
        _line(adopted, "base URL").detail
    )
    named = _check(env, base_url=at_root)  # an existing job's check names the URL, changes nothing
    assert not named.ok and f"the base URL should be {env.provider.base_url}" in _line(named, "base URL").detail


def test_check_names_no_other_url_when_neither_answers(env):
    report = _check(env, base_url=env.provider.base_url + "/nowhere")
    assert not report.ok and report.base_url.endswith("/nowhere")
    assert "answered 404" in _line(report, "model").detail
    assert all(line.what != "base URL" for line in report.lines)
