"""The embeddings client against scripted responses (httpx.MockTransport, no sockets)."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import orjson
import pytest

from client_helpers import KEY, ok, run
from vectorfill.errors import (
    AuthenticationError,
    ModelNotFound,
    QuotaExceeded,
    TerminalProviderError,
    TransientProviderError,
    is_transient,
    stops_run,
)
from vectorfill.provider.client import EmbeddingsClient, parse_retry_after


def test_request_carries_bearer_model_input_array_base64_and_dimensions():
    seen = {}

    def handler(request):
        seen["auth"] = request.headers["authorization"]
        seen["body"] = orjson.loads(request.content)
        seen["url"] = str(request.url)
        return ok([[1, 0], [0, 1]])

    run(handler, dimensions=2)
    assert seen["url"] == "http://p/v1/embeddings"
    assert seen["auth"] == f"Bearer {KEY}"
    assert seen["body"] == {"model": "m", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 2}


def test_shuffled_items_are_sorted_by_index():
    result = run(lambda r: ok([[1, 1], [2, 2], [3, 3]], order=[2, 0, 1]), texts=["a", "b", "c"])
    assert result.vectors[:, 0].tolist() == [1, 2, 3]
    assert result.prompt_tokens == 7


def test_float_lists_are_accepted_when_base64_was_asked():
    assert run(lambda r: ok([[1, 2], [3, 4]], b64=False)).vectors.tolist() == [[1, 2], [3, 4]]


def test_items_without_index_are_taken_in_order_and_usage_may_be_missing():
    body = {"data": [{"embedding": [1.0]}, {"embedding": [2.0]}]}
    result = run(lambda r: httpx.Response(200, json=body))
    assert result.vectors.ravel().tolist() == [1.0, 2.0] and result.prompt_tokens is None


@pytest.mark.parametrize(
    "body, code",
    [
        ({"data": [{"index": 0, "embedding": [1.0]}]}, "count_mismatch"),
        ({"data": [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [2.0]}]}, "bad_index"),
        ({"data": [{"index": 0, "embedding": [1.0]}, {"embedding": [2.0]}]}, "bad_index"),
        ({"data": [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [2.0, 3.0]}]}, "dimension_mismatch"),
        (
            {
                "data": [
                    {"index": 0, "embedding": [1.0]},
                    {"index": 1, "embedding": base64.b64encode(np.array([np.nan], "<f4").tobytes()).decode()},
                ]
            },
            "non_finite",
        ),
        ({"data": [{"index": 0, "embedding": "!!"}, {"index": 1, "embedding": [1.0]}]}, "bad_base64"),
        ({"data": [{"index": 0, "embedding": None}, {"index": 1, "embedding": [1.0]}]}, "bad_embedding"),
        ({"nope": 1}, "bad_response"),
    ],
)
def test_violations_reject_the_whole_request(body, code):
    with pytest.raises(TransientProviderError) as info:
        run(lambda r: httpx.Response(200, json=body))
    assert info.value.code == code


@pytest.mark.parametrize("dims", [1, 2, 3, 5, 384, 1536])  # 4*d % 3 != 0: padded strings
@pytest.mark.parametrize("decoder", ["pybase64", "stdlib"])
def test_base64_rows_land_at_their_index_with_either_decoder(dims, decoder, monkeypatch):
    if decoder == "stdlib":  # the fallback when pybase64 is not installed
        import vectorfill.provider.client

        monkeypatch.setattr(vectorfill.provider.client, "_b64decode", base64.b64decode)
    rng = np.random.default_rng(dims)
    vectors = rng.standard_normal((7, dims)).astype("<f4")
    result = run(lambda r: ok(vectors, order=[3, 0, 6, 1, 5, 2, 4]), texts=[str(i) for i in range(7)])
    assert result.vectors.dtype == np.float32 and result.vectors.shape == (7, dims)
    assert np.array_equal(result.vectors, vectors)
    result.vectors[0, 0] = 1.0  # an array of its own, writable like the float path's


@pytest.mark.parametrize(
    "embeddings, code",
    [
        (["AACAPw==", "AACAPwAAAEA="], "dimension_mismatch"),  # 1 and 2 floats
        (["AACAPw==", "AACAPw"], "bad_base64"),  # missing padding
        (["AACAPw==", "AACAPw==\n"], "bad_base64"),  # a character outside the alphabet
        (["AACAPw==", "AACA"], "bad_base64"),  # 3 bytes: not whole float32 values
        (["AACAPw==", ""], "dimension_mismatch"),  # an empty vector
        (["AACAPw==", "AACAPw==AACAPw=="], "bad_base64"),  # data after padding
    ],
)
def test_malformed_base64_rejects_the_request_whichever_path_sees_it(embeddings, code):
    body = {"data": [{"index": i, "embedding": e} for i, e in enumerate(embeddings)]}
    with pytest.raises(TransientProviderError) as info:
        run(lambda r: httpx.Response(200, json=body))
    assert info.value.code == code


def test_expected_dimensions_are_enforced():
    with pytest.raises(TransientProviderError, match="returned 2-dimensional vectors but 3"):
        run(lambda r: ok([[1, 2], [3, 4]]), expected_dims=3)


def test_html_page_from_a_proxy_is_transient():
    with pytest.raises(TransientProviderError, match="not JSON"):
        run(lambda r: httpx.Response(200, html="<html>Bad gateway</html>"))


def err(status, code=None, type_=None, message="nope", headers=None):
    return lambda r: httpx.Response(
        status, headers=headers or {}, json={"error": {"message": message, "type": type_, "param": None, "code": code}}
    )


@pytest.mark.parametrize(
    "status, code, cls, transient, stops",
    [
        (401, "invalid_api_key", AuthenticationError, False, True),
        (403, None, AuthenticationError, False, True),
        (404, "model_not_found", ModelNotFound, False, True),
        (429, "insufficient_quota", QuotaExceeded, False, True),
        (429, "rate_limit_exceeded", TransientProviderError, True, False),
        (408, None, TransientProviderError, True, False),
        (409, None, TransientProviderError, True, False),
        (500, None, TransientProviderError, True, False),
        (503, None, TransientProviderError, True, False),
        (400, "invalid_request_error", TerminalProviderError, False, False),
        (422, None, TerminalProviderError, False, False),
    ],
)
def test_errors_are_classified(status, code, cls, transient, stops):
    with pytest.raises(cls) as info:
        run(err(status, code))
    assert is_transient(info.value) is transient
    assert stops_run(info.value) is stops
    assert info.value.status == status


def test_retry_after_is_read_from_the_response():
    with pytest.raises(TransientProviderError) as info:
        run(err(429, "rate_limit_exceeded", headers={"retry-after-ms": "1500", "retry-after": "9"}))
    assert info.value.retry_after == 1.5


def test_parse_retry_after_forms():
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({}) is None


def test_a_key_echoed_by_the_server_is_scrubbed_from_the_error():
    with pytest.raises(AuthenticationError) as info:
        run(err(401, message=f"Incorrect API key provided: {KEY}"))
    assert KEY not in str(info.value) and "***" in str(info.value)


def test_connection_errors_and_timeouts_are_transient_and_name_the_url():
    def refuse(request):
        raise httpx.ConnectError("refused")

    with pytest.raises(TransientProviderError, match="cannot reach http://p/v1/embeddings"):
        run(refuse)

    def slow(request):
        raise httpx.ReadTimeout("slow")

    with pytest.raises(TransientProviderError, match="no answer"):
        run(slow)


def test_base_url_must_be_http():
    from vectorfill.errors import ConfigError

    with pytest.raises(ConfigError, match="must start with http"):
        EmbeddingsClient(base_url="api.openai.com/v1", model="m")


def test_read_responses_are_freed_without_waiting_for_the_cyclic_gc():
    """A response body (megabytes for a big request) must not wait for a full GC to be freed."""
    import gc
    import weakref

    refs = []

    def handler(request):
        response = ok([[1.0] * 8, [2.0] * 8])
        refs.append(weakref.ref(response))
        return response

    gc.collect()
    gc.disable()
    try:
        run(handler)
        assert refs and refs[0]() is None, "the response is still alive: a reference cycle keeps it"
    finally:
        gc.enable()


def test_a_plain_http_endpoint_loads_no_ca_bundle_and_could_never_pass_tls_unverified():
    import ssl

    from vectorfill.provider.client import _tls_for

    local = _tls_for("http://127.0.0.1:8000/v1")
    assert isinstance(local, ssl.SSLContext)
    assert local.verify_mode == ssl.CERT_REQUIRED and local.check_hostname
    assert local.get_ca_certs() == [], "trusts no CA: a TLS handshake through it fails"
    assert _tls_for("https://api.openai.com/v1") is True, "https keeps httpx's verified defaults"
