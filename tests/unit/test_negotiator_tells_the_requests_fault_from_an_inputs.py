"""The negotiator's judgements, with the client on a scripted endpoint: a refusal that names a
cap or a setting is learnt or stops the run; one that names nothing is settled by a probe;
only an input's fault is bisected. (Through the real flow: tests/integration/test_negotiate.py.)"""

from __future__ import annotations

import httpx
import pytest

from fake_provider import VARIANTS
from mock_endpoint import answer, body, client, from_fake, openai_error, run
from vectorfill.config import JobSettings
from vectorfill.errors import AuthenticationError, RequestRejected, TerminalProviderError
from vectorfill.provider.negotiate import PROBE_TEXT, Caps, Negotiator


class Endpoint:
    """Answers each request with ``respond(request)``; keeps every request's body."""

    def __init__(self, respond):
        self.respond = respond
        self.bodies: list[dict] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(body(request))
        return self.respond(request)

    @property
    def probes(self) -> list[dict]:
        return [b for b in self.bodies if b["input"] == [PROBE_TEXT]]


def negotiator(respond, **kw) -> tuple[Negotiator, Endpoint, list]:
    endpoint = Endpoint(respond)
    remembered: list = []

    async def remember(caps: Caps, evidence: str) -> None:
        remembered.append((caps, evidence))

    return Negotiator(client(endpoint, **kw), remember=remember), endpoint, remembered


def refusal(response: httpx.Response, **kw) -> TerminalProviderError:
    """The error the client raises for ``response``."""
    c = client(lambda request: response, **kw)
    with pytest.raises(TerminalProviderError) as info:
        run(c.embed(["x"]))
    return info.value


def judge(neg: Negotiator, exc: TerminalProviderError, n: int, generation: int | None = None):
    return run(neg.judge(exc, n, neg.generation if generation is None else generation))


def test_a_cap_on_inputs_the_server_names_is_learnt_without_a_probe_and_remembered():
    neg, endpoint, remembered = negotiator(answer)
    exc = refusal(from_fake(VARIANTS["tei"](max_client_batch_size=32).refuse_batch(64, 32)))
    assert judge(neg, exc, 64) == "retry"
    assert neg.max_inputs == 32 and neg.generation == 1 and endpoint.bodies == []
    assert remembered[0][0] == Caps(max_inputs=32) and "maximum allowed batch size 32" in remembered[0][1]
    assert neg.apply(JobSettings(max_inputs=2048)).max_inputs == 32
    assert neg.apply(JobSettings(max_inputs=8)).max_inputs == 8, "a learnt cap never raises the job's own"


def test_a_refusal_at_or_under_the_cap_it_names_is_not_the_caps_fault():
    neg, endpoint, _ = negotiator(answer)
    exc = refusal(from_fake(VARIANTS["tei"](max_client_batch_size=32).refuse_batch(64, 32)))
    assert judge(neg, exc, 32) == "bisect"
    assert neg.max_inputs is None and len(endpoint.probes) == 1, "decided by a probe, which was accepted"


def test_a_cap_on_tokens_per_request_is_learnt_and_only_lowered():
    neg, _, _ = negotiator(answer)
    exc = refusal(openai_error(400, "Requested 400000 tokens, max 300000 tokens per request"))
    assert judge(neg, exc, 10) == "retry" and neg.max_request_tokens == 300_000
    assert judge(neg, exc, 10) == "bisect", "already packed to it: the server counts more, so halves"
    assert neg.max_request_tokens == 300_000 and neg.generation == 1


@pytest.mark.parametrize("server", ["tei", "infinity"])
def test_a_refusal_of_base64_switches_the_client_to_float(server):
    neg, endpoint, remembered = negotiator(answer)
    fake = VARIANTS[server](base64=False).refuse_base64({"model": "m", "input": ["a"], "encoding_format": "base64"})
    assert judge(neg, refusal(from_fake(fake)), 100) == "retry"
    assert neg.client.encoding_format == "float" and endpoint.bodies == []
    assert remembered[0][0] == Caps(encoding_format="float")


@pytest.mark.parametrize("server", ["openai", "vllm", "litellm"])
def test_a_refusal_of_dimensions_stops_the_run_naming_the_setting_and_every_lane_after_it(server):
    neg, endpoint, _ = negotiator(answer, dimensions=16)
    fake = VARIANTS[server]().refuse_dimensions({"model": "m", "dimensions": 16})
    with pytest.raises(RequestRejected, match="refuses the `dimensions` parameter") as info:
        judge(neg, refusal(from_fake(fake), dimensions=16), 100)
    assert info.value.setting == "dimensions" and endpoint.bodies == []
    other = refusal(openai_error(400, "anything else"))
    with pytest.raises(RequestRejected) as again:
        judge(neg, other, 3)
    assert again.value is info.value and endpoint.bodies == [], "another lane stops with it, without a probe"


def test_a_refusal_that_names_nothing_is_an_inputs_when_a_probe_is_accepted():
    neg, endpoint, _ = negotiator(answer)
    exc = refusal(openai_error(400, "input[3] was refused", param="input[3]"))
    assert judge(neg, exc, 10) == "bisect"
    assert len(endpoint.probes) == 1 and neg.proven
    assert judge(neg, exc, 5) == "bisect" and len(endpoint.probes) == 1, "proven: no second probe"


def test_a_refusal_of_every_request_stops_the_run_after_probing_both_encodings():
    neg, endpoint, _ = negotiator(lambda request: httpx.Response(400, text="Bad Request"))
    exc = refusal(httpx.Response(400, text="Bad Request"))
    with pytest.raises(RequestRejected, match="refuses every request") as info:
        judge(neg, exc, 10)
    assert [b["encoding_format"] for b in endpoint.probes] == ["base64", "float"]
    assert endpoint.bodies == endpoint.probes and info.value.setting is None
    assert neg.client.encoding_format == "base64", "the client is left as it was"


def test_a_probe_accepted_only_in_float_learns_float():
    def respond(request):
        if body(request)["encoding_format"] == "base64":
            return httpx.Response(400, text="Bad Request")
        return answer(request)

    neg, endpoint, _ = negotiator(respond)
    assert judge(neg, refusal(httpx.Response(400, text="Bad Request")), 10) == "retry"
    assert neg.client.encoding_format == "float" and len(endpoint.probes) == 2


def test_a_probe_accepted_only_without_dimensions_blames_dimensions():
    def respond(request):
        return httpx.Response(400, text="Bad Request") if "dimensions" in body(request) else answer(request)

    neg, endpoint, _ = negotiator(respond, dimensions=16)
    with pytest.raises(RequestRejected) as info:
        judge(neg, refusal(httpx.Response(400, text="Bad Request")), 10)
    assert info.value.setting == "dimensions"
    assert ["dimensions" in b for b in endpoint.probes] == [True, True, False]
    assert neg.client.dimensions == 16, "the client keeps the job's setting"


@pytest.mark.parametrize(
    "response, n",
    [
        (openai_error(400, "This model's maximum context length is 8192 tokens", code="context_length_exceeded"), 1),
        (httpx.Response(413, html="<html>413 Request Entity Too Large</html>"), 8),
    ],
    ids=["too-long", "too-large"],
)
def test_a_too_long_input_or_a_too_large_request_is_bisected_without_a_probe(response, n):
    neg, endpoint, _ = negotiator(answer)
    neg.max_input_tokens = 8192  # the limit the refusal names is known already: nothing to learn
    assert judge(neg, refusal(response), n) == "bisect" and endpoint.bodies == []


def test_the_limit_a_too_long_refusal_names_is_learnt_and_the_request_sent_again_cut_to_it():
    neg, endpoint, _ = negotiator(answer)
    # LiteLLM's proxy wraps the upstream's words and drops `param`
    wrapped = openai_error(
        400,
        "litellm.ContextWindowExceededError: litellm.BadRequestError: ContextWindowExceededError: OpenAIException - "
        "Error code: 400 - This model's maximum context length is 256 tokens, however input[60] has 3667 tokens.",
    )
    generation = neg.generation
    assert judge(neg, refusal(wrapped), 64) == "retry" and endpoint.bodies == []
    assert neg.max_input_tokens == 256 and neg.generation == generation + 1
    assert "at most 256 tokens per input" in neg.learnt[-1]
    # an input still refused under the limit learnt is bisected, not learnt again
    assert judge(neg, refusal(wrapped), 64) == "bisect"
    # and a job's settings get the limit (lowered, never raised)
    from vectorfill.config import JobSettings

    assert neg.apply(JobSettings()).max_input_tokens == 256
    assert neg.apply(JobSettings(max_input_tokens=100)).max_input_tokens == 100


def test_errors_that_stop_the_run_are_raised_as_they_are():
    neg, endpoint, _ = negotiator(answer)
    exc = refusal(openai_error(401, "Incorrect API key provided"))
    with pytest.raises(AuthenticationError) as info:
        judge(neg, exc, 10)
    assert info.value is exc and endpoint.bodies == [] and neg.rejected is None


def test_a_refusal_sent_under_older_settings_is_retried_under_the_new_ones():
    neg, endpoint, _ = negotiator(answer)
    neg.generation = 2
    assert judge(neg, refusal(openai_error(400, "whatever")), 10, generation=1) == "retry"
    assert endpoint.bodies == []


def test_halves_accepted_whole_teach_a_cap_that_is_only_ever_lowered():
    neg, _, remembered = negotiator(answer)
    run(neg.size_refused(20))
    run(neg.size_refused(30))
    assert neg.max_inputs == 20 and len(remembered) == 1
    run(neg.size_refused(10))
    assert neg.max_inputs == 10


def test_the_same_refusal_for_three_different_inputs_makes_it_probe_again():
    refuse_all = False

    def respond(request):
        return httpx.Response(400, text="Bad Request") if refuse_all else answer(request)

    neg, endpoint, _ = negotiator(respond)
    neg.proven = True
    exc = refusal(openai_error(400, "input 'x' refused"))
    run(neg.single_refused(exc, "first text", neg.generation))
    run(neg.single_refused(exc, "second text", neg.generation))
    assert endpoint.probes == [] and neg.proven
    refuse_all = True
    with pytest.raises(RequestRejected, match="refuses every request"):
        run(neg.single_refused(exc, "third text", neg.generation))
    assert len(endpoint.probes) == 2 and neg.rejected is not None


def test_negotiated_embed_splits_to_the_learnt_cap_and_keeps_input_order():
    def respond(request):
        n = len(body(request)["input"])
        return from_fake(VARIANTS["tei"]().refuse_batch(n, 2)) if n > 2 else answer(request)

    neg, endpoint, _ = negotiator(respond)
    texts = ["t0", "t1", "t2", "t3", "t4"]
    result = run(neg.embed(texts))
    assert [b["input"] for b in endpoint.bodies] == [texts, ["t0", "t1"], ["t2", "t3"], ["t4"]]
    assert result.vectors[:, 0].tolist() == [1.0, 2.0, 1.0, 2.0, 1.0], "each part's vectors in place"
    assert result.prompt_tokens == 9 and neg.max_inputs == 2
