"""Token counts: the cheap estimate never hides a text over the limit, and stays close to
exact where it is used (packing); exact counts where a rate budget is in force."""

from __future__ import annotations

import random

import pytest

from token_helpers import COUNTER, tricky_text, tricky_texts
from vectorfill.provider.ratelimit import Concurrency, RateLimiter, Throttle
from vectorfill.provider.tokens import ByteEstimate, Cl100k


def test_a_cl100k_token_is_never_shorter_than_one_utf8_byte():
    """The bound the estimate rests on, over texts built to break it."""
    texts = tricky_texts(1, 2000) + ["\ud800 lone surrogate", "x\udfff"]
    for text, n in zip(texts, COUNTER.count(texts), strict=False):
        assert n <= len(text.encode("utf-8", "surrogatepass")), repr(text)


@pytest.mark.parametrize("seed", range(8))
def test_estimate_never_lets_a_text_over_the_limit_pass_as_within_it(seed):
    rng = random.Random(seed)
    texts = tricky_texts(seed, 300)
    exact = COUNTER.count(texts)
    # limits around the texts' own counts, where a wrong bound would show
    for limit in sorted({1, 2, 5, 16, 64, 255, *rng.sample(exact, 20)}):
        estimated = COUNTER.estimate(texts, limit)
        for text, e, x in zip(texts, estimated, exact, strict=False):
            assert (e > limit) == (x > limit), (limit, text)
            if x > limit:
                assert e == x, "a text over the limit is counted exactly (claim truncates to it)"
            assert e >= 1


def test_estimate_counts_non_ascii_and_long_texts_exactly_and_small_claims_entirely():
    texts = tricky_texts(9, 200)
    exact = COUNTER.count(texts)
    estimated = COUNTER.estimate(texts, 50)
    for text, e, x in zip(texts, estimated, exact, strict=False):
        if not text.isascii() or len(text) > 50:
            assert e == x
    few = texts[: Cl100k.SAMPLE]
    assert COUNTER.estimate(few, None) == COUNTER.count(few)


def test_estimated_request_totals_stay_within_a_few_percent_of_exact():
    """Measured on English-like paragraphs and a mix with CJK, emoji and code (the bench
    texts: within 1.3% per 1,024-text request; stdlib docstrings: within 7%)."""
    rng = random.Random(5)
    words = [
        "the",
        "committee",
        "reviewed",
        "annual",
        "budget",
        "report",
        "harbour",
        "weather",
        "transport",
        "schools",
        "announced",
        "described",
        "improved",
        "recorded",
        "planned",
        "delayed",
        "explained",
        "measured",
    ]
    english = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 120))) + "." for _ in range(2048)]
    mixed = [t if rng.random() < 0.7 else tricky_text(rng) for t in english]
    for texts in (english, mixed):
        for start in range(0, len(texts), 512):
            chunk = texts[start : start + 512]
            exact, estimated = sum(COUNTER.count(chunk)), sum(COUNTER.estimate(chunk, 8191))
            assert abs(estimated - exact) <= 0.05 * exact, (estimated, exact)


def test_byte_estimate_is_its_own_estimate():
    texts = tricky_texts(3, 50)
    assert ByteEstimate().estimate(texts, 10) == ByteEstimate().count(texts)


# --------------------------------------------------------------------------- claim and embed


def test_claim_counts_exactly_when_the_estimate_nears_the_request_limit():
    from vectorfill.engine.claim import ESTIMATE_HEADROOM, count_tokens

    texts = [f"note {i}: the committee reviewed the annual budget " * (1 + i % 7) for i in range(100)]
    exact = COUNTER.count(texts)
    roomy = count_tokens(COUNTER, texts, 8191, request_tokens=10 * sum(exact))
    assert roomy == COUNTER.estimate(texts, 8191) != exact
    tight = count_tokens(COUNTER, texts, 8191, request_tokens=int(sum(exact) / ESTIMATE_HEADROOM) - 1)
    assert tight == exact
    # a job with a tokens-per-minute budget packs by exact counts, however roomy
    assert count_tokens(COUNTER, texts, 8191, request_tokens=10 * sum(exact), exact=True) == exact


def test_a_claim_of_several_requests_counts_exactly_only_when_one_request_nears_the_limit():
    """A slice's claim may fill several requests (max_inputs texts each, in claim
    order): what decides is each request's estimate, not the whole claim's."""
    from vectorfill.engine.claim import ESTIMATE_HEADROOM, count_tokens

    texts = [f"note {i}: the committee reviewed the annual budget " * 3 for i in range(100)]
    exact = COUNTER.count(texts)
    estimate = COUNTER.estimate(texts, 8191)
    per_request = max(sum(estimate[i : i + 10]) for i in range(0, 100, 10))
    roomy = int(per_request / ESTIMATE_HEADROOM) + 1  # every request fits with room; the claim would not
    assert sum(estimate) > ESTIMATE_HEADROOM * roomy
    assert count_tokens(COUNTER, texts, 8191, request_tokens=roomy, max_inputs=10) == estimate != exact
    tight = int(per_request / ESTIMATE_HEADROOM) - 1  # one request nears the limit: count them all
    assert count_tokens(COUNTER, texts, 8191, request_tokens=tight, max_inputs=10) == exact


def _throttle(tpm: int | None) -> Throttle:
    return Throttle(RateLimiter(None, tpm, learn_limits=False), Concurrency(1, max_limit=1))


@pytest.mark.parametrize("tpm", [None, 10_000_000])
def test_the_rate_budget_is_charged_exact_counts_when_it_has_a_token_limit(tpm):
    from vectorfill.engine.claim import Item
    from vectorfill.engine.embed import _budget_tokens

    texts = tricky_texts(11, 40)
    items = tuple(Item((i,), 0, t, b"", 1) for i, t in enumerate(texts))  # claim's counts: 1 each
    charged = _budget_tokens("text-embedding-3-small", items, _throttle(tpm))
    assert charged == (len(items) if tpm is None else sum(COUNTER.count(texts)))
    # a model whose tokenizer is unknown: the claim's (byte) estimates, budget or not
    assert _budget_tokens("some-local-model", items, _throttle(tpm)) == len(items)


def test_texts_the_claim_counted_are_not_counted_again_for_the_rate_budget():
    from vectorfill.engine.claim import Item
    from vectorfill.engine.embed import _budget_tokens

    texts = tricky_texts(12, 10)
    counted = tuple(Item((i,), 0, t, b"", 5, counted=True) for i, t in enumerate(texts))
    assert _budget_tokens("text-embedding-3-small", counted, _throttle(10_000_000)) == 5 * len(texts)
    mixed = counted[:4] + tuple(Item((i,), 0, t, b"", 5) for i, t in enumerate(texts[4:]))
    assert _budget_tokens("text-embedding-3-small", mixed, _throttle(10_000_000)) == 5 * 4 + sum(
        COUNTER.count(texts[4:])
    )
