"""The client sends what the job asks for and takes a response only when it holds exactly one
vector per input, each at its index: what tests/unit/test_client.py does not already cover."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from mock_endpoint import KEY, answer, body, embed
from vectorfill.errors import TransientProviderError


def violation(payload: dict, texts=("a", "b"), **kw) -> TransientProviderError:
    with pytest.raises(TransientProviderError) as info:
        embed(lambda request: httpx.Response(200, json=payload), texts, **kw)
    return info.value


@pytest.mark.parametrize(
    "indices",
    [[1, 2], [-1, 0], [0, "1"], [0, 1.0], [False, True], [0, None]],
    ids=["shifted", "negative", "string", "float", "booleans", "one-missing"],
)
def test_indices_must_be_exactly_a_permutation_of_the_inputs(indices):
    data = [{"index": i, "embedding": [float(j)]} for j, i in enumerate(indices)]
    exc = violation({"object": "list", "data": data})
    assert exc.code == "bad_index" and exc.status == 200
    assert "no vector of this request is stored" in str(exc)


def test_more_vectors_than_inputs_is_a_count_mismatch():
    data = [{"index": i, "embedding": [1.0]} for i in range(3)]
    assert violation({"data": data}).code == "count_mismatch"


@pytest.mark.parametrize("payload", [[], {"data": {"0": [1.0]}}, {"object": "list"}, "vectors"])
def test_a_body_without_a_data_list_is_a_bad_response(payload):
    assert violation(payload).code == "bad_response"


def test_the_dimensions_asked_for_are_the_dimensions_expected():
    exc = violation(
        {"data": [{"index": 0, "embedding": [1.0, 2.0]}, {"index": 1, "embedding": [3.0, 4.0]}]}, dimensions=3
    )
    assert exc.code == "dimension_mismatch" and "returned 2-dimensional vectors but 3" in str(exc)


def test_an_infinite_float_is_refused_like_a_nan():
    one, inf = (base64.b64encode(np.array([v], "<f4").tobytes()).decode() for v in (1.0, np.inf))
    exc = violation({"data": [{"index": 0, "embedding": one}, {"index": 1, "embedding": inf}]})
    assert exc.code == "non_finite" and "input 1" in str(exc)


def test_base64_is_read_as_little_endian_float32_at_each_index():
    wanted = np.array([[0.5, -2.25, 3e-5], [1.0, 2.0, 4.0]], dtype="<f4")
    data = [
        {"index": 1, "embedding": base64.b64encode(wanted[1].tobytes()).decode()},
        {"index": 0, "embedding": base64.b64encode(wanted[0].tobytes()).decode()},
    ]
    result = embed(lambda request: httpx.Response(200, json={"data": data}))
    assert np.array_equal(result.vectors, wanted)
    big_endian = [
        {"index": i, "embedding": base64.b64encode(v.astype(">f4").tobytes()).decode()} for i, v in enumerate(wanted)
    ]
    assert not np.array_equal(embed(lambda request: httpx.Response(200, json={"data": big_endian})).vectors, wanted)


def test_float_answers_to_a_float_request_are_sorted_by_index():
    seen = []

    def handler(request):
        seen.append(body(request))
        data = [{"index": i, "embedding": [float(i)] * 2} for i in (2, 0, 1)]
        return httpx.Response(200, json={"data": data})

    result = embed(handler, ["x", "y", "z"], encoding_format="float")
    assert seen[0]["encoding_format"] == "float" and "dimensions" not in seen[0]
    assert result.vectors[:, 0].tolist() == [0.0, 1.0, 2.0]


def test_usage_model_and_rate_limit_headers_are_kept_and_other_headers_dropped():
    def handler(request):
        response = answer(request)
        payload = response.json()
        payload["usage"] = {"total_tokens": 11}
        payload["model"] = "m-2024"
        return httpx.Response(
            200,
            json=payload,
            headers={"x-ratelimit-remaining-tokens": "99", "retry-after": "1", "set-cookie": "s=1", "server": "x"},
        )

    result = embed(handler)
    assert result.prompt_tokens == 11, "total_tokens when prompt_tokens is missing"
    assert result.model == "m-2024"
    assert result.headers == {"x-ratelimit-remaining-tokens": "99", "retry-after": "1"}


def test_azure_gets_the_key_in_api_key_and_the_api_version_in_the_query():
    seen = []

    def handler(request):
        seen.append(request)
        return answer(request)

    embed(handler, api_key_header="api-key", api_version="2024-02-01")
    (request,) = seen
    assert request.headers["api-key"] == KEY and "authorization" not in request.headers
    assert request.url.params["api-version"] == "2024-02-01"


def test_a_request_without_a_key_sends_no_authorization():
    seen = []
    embed(lambda request: seen.append(request) or answer(request), api_key=None)
    assert "authorization" not in seen[0].headers and "api-key" not in seen[0].headers


def test_an_unknown_encoding_format_is_a_config_error():
    from vectorfill.errors import ConfigError

    with pytest.raises(ConfigError, match="encoding_format must be base64 or float"):
        embed(answer, encoding_format="binary")
