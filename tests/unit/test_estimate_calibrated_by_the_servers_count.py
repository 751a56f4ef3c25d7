"""A model whose tokenizer is not known here: the count a server names for an input it refused
("... maximum context length is 256 tokens, however input[3] has 3667 tokens") calibrates the
byte estimate, so long inputs are cut close under the limit instead of far under it."""

from __future__ import annotations

import random

import pytest

from mock_endpoint import answer, client, openai_error, run
from vectorfill.errors import TerminalProviderError
from vectorfill.provider.negotiate import Caps, Negotiator, refused_count
from vectorfill.provider.tokens import ByteEstimate, Calibrated, Cl100k, calibrate, counter_for, fit_limit

LITELLM = (
    "litellm.ContextWindowExceededError: litellm.BadRequestError: ContextWindowExceededError: OpenAIException - "
    "Error code: 400 - This model's maximum context length is {limit} tokens, however input[{i}] has {n} tokens."
)


def english(seed: int, words: int = 1500) -> str:
    rng = random.Random(seed)
    vocabulary = ["vector", "database", "embedding", "token", "server", "request", "postgres", "queue"]
    return " ".join(rng.choice(vocabulary) for _ in range(words))


@pytest.mark.parametrize(
    ("message", "n", "expected"),
    [
        (LITELLM.format(limit=256, i=60, n=3667), 64, (60, 3667)),
        (LITELLM.format(limit=256, i=70, n=3667), 64, None),  # names an input the request did not hold
        (
            "This model's maximum context length is 512 tokens. However, you requested 600 tokens in the input "
            "for embedding generation. Please reduce the length of the input.",
            1,
            (0, 600),
        ),  # vLLM
        (
            "This model's maximum context length is 8192 tokens, however you requested 9000 tokens "
            "(9000 in your prompt; 0 for the completion). Please reduce your prompt; or completion length.",
            1,
            (0, 9000),
        ),  # OpenAI
        ("Input validation error: `inputs` must have less than 512 tokens. Given: 600", 1, (0, 600)),  # TEI
        ("Input validation error: `inputs` must have less than 512 tokens. Given: 600", 8, None),  # which one?
        ("This model's maximum context length is 512 tokens", 1, None),
    ],
)
def test_the_servers_count_of_the_refused_input_is_read_from_its_words(message, n, expected):
    assert refused_count(message, n) == expected


def test_a_calibrated_estimate_cuts_english_close_under_the_limit_and_cjk_as_cautiously_as_before():
    server = Cl100k()  # stands for the server's tokenizer, unknown to the estimate
    ratio = calibrate(english(1), server.count([english(1)])[0])
    assert ratio is not None and 0.3 < ratio < 0.45
    calibrated = Calibrated(ratio)
    budget = fit_limit(calibrated, 256)
    for seed in range(2, 12):  # other texts of the same kind: close under the limit, never over
        cut = calibrated.truncate(english(seed), budget)
        assert english(seed).startswith(cut)
        assert 0.9 * 256 <= server.count([cut])[0] <= 256
        # the plain byte estimate keeps well under half of it
        assert server.count([ByteEstimate().truncate(english(seed), fit_limit(ByteEstimate(), 256))])[0] < 128
    # non-ASCII text is estimated at bytes/3 as before: an English calibration does not lengthen it
    cjk = "向量数据库嵌入模型" * 200
    assert calibrated.truncate(cjk, budget) == ByteEstimate().truncate(cjk, budget)
    # too little text, or too little of it ASCII, says nothing
    assert calibrate("short text", 4) is None and calibrate(cjk, 1800) is None


def test_a_refusal_naming_the_count_calibrates_and_a_later_one_only_raises_it():
    remembered: list = []

    async def remember(caps: Caps, evidence: str) -> None:
        remembered.append(caps)

    neg = Negotiator(client(answer), remember=remember)
    texts = ["short"] * 3 + [english(1)]
    n = Cl100k().count([english(1)])[0]

    def refused(message: str) -> TerminalProviderError:
        return TerminalProviderError(message, status=400)

    assert run(neg.judge(refused(LITELLM.format(limit=256, i=3, n=n)), 4, neg.generation, texts)) == "retry"
    first = neg.input_token_ratio
    assert neg.max_input_tokens == 256 and first is not None and 0.3 < first < 0.45
    assert remembered[-1] == Caps(max_input_tokens=256, input_token_ratio=first)
    assert counter_for("m", first).name.startswith("bytes/3 x")

    # an input cut by the calibration and still over: the server's count raises the ratio, and
    # the request is sent again (cut shorter); a lower ratio is never taken
    assert run(neg.judge(refused(LITELLM.format(limit=256, i=3, n=2 * n)), 4, neg.generation, texts)) == "retry"
    assert neg.input_token_ratio is not None and neg.input_token_ratio > 1.9 * first
    assert run(neg.judge(refused(LITELLM.format(limit=256, i=3, n=n)), 4, neg.generation, texts)) == "bisect"
    assert neg.input_token_ratio > 1.9 * first

    # remembered for the next run's negotiator
    again = Negotiator(client(answer), caps=Caps(max_input_tokens=256, input_token_ratio=first))
    assert again.input_token_ratio == first


def test_a_model_whose_tokenizer_is_known_is_not_calibrated():
    c = client(lambda request: openai_error(400, "x"))
    c.model = "text-embedding-3-small"
    neg = Negotiator(c)
    message = LITELLM.format(limit=8191, i=0, n=9000)
    exc = TerminalProviderError(message, status=400)
    assert run(neg.judge(exc, 1, neg.generation, [english(1)])) == "retry"
    assert neg.max_input_tokens == 8191 and neg.input_token_ratio is None
