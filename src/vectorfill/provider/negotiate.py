"""What an endpoint accepts: decided from evidence, negotiated where it varies, remembered.

Servers that speak the OpenAI embeddings contract differ in what they accept: TEI caps the
inputs of one request (``max_client_batch_size``, 32 by default) with a 413, older TEI and
Infinity refuse ``encoding_format: base64`` with a 422, most models refuse ``dimensions``,
and gateways answer with HTML. A 4xx can therefore belong to an **input** (too long, empty,
refused by a content filter) or to the **request** (a setting); only the former may be
bisected down to the rows at fault. Bisecting a refusal of the request sends ~2n requests
for n rows and fails them all, for nothing.

:meth:`Negotiator.judge` decides which it is, from evidence, in this order:

1. the refusal itself (:func:`classify`): a cap on inputs or tokens that it names (learnt,
   and the request is split to fit), ``encoding_format``/base64 (fall back to ``float``),
   ``dimensions`` (the run stops: dropping it would store other vectors than asked for);
2. a request that succeeded already in this run with the same settings: the request is
   fine, so the refusal is the inputs' (bisect);
3. otherwise a **probe**: one request with one short known-good input, sent once per run
   and shared by every lane. Refused too, it is the request: try ``float`` (if base64 was
   refused), then without ``dimensions``, then stop the run with the server's message;
   accepted, the refusal is the inputs' (bisect);
4. while bisecting, the same refusal for several different single inputs makes the
   negotiator probe again (the endpoint may have changed its mind mid-run);
5. a refused request whose halves were both accepted whole was refused for its size: its
   larger half becomes the endpoint's cap on inputs (gateways' 413 pages name no number).

What is learnt (caps, the encoding) is kept per endpoint in ``vectorfill.endpoint_caps``
(migration 0005), shared by every run like the rate budgets, and applied before a run's
first request (:meth:`Negotiator.apply`). The negotiator never sees the database: it is given
the caps remembered and a ``remember`` callable (:mod:`vectorfill.storage.caps`), and the
client as the small :class:`EndpointClient` protocol, not as the client's module.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from vectorfill.errors import RequestRejected, TerminalProviderError, TransientProviderError, stops_run
from vectorfill.provider.tokens import calibrate, counter_for
from vectorfill.records import Caps

if TYPE_CHECKING:
    from vectorfill.config import JobSettings

__all__ = [
    "PROBE_TEXT",
    "Caps",
    "EndpointClient",
    "Negotiator",
    "Refusal",
    "Verdict",
    "classify",
    "input_limit",
    "refused_count",
]

log = logging.getLogger("vectorfill")

#: The known-good input of a probe: short, plain, in every tokenizer's vocabulary.
PROBE_TEXT = "hello"

#: Distinct single inputs refused with the same message before the endpoint is probed again.
SAME_REFUSALS_BEFORE_PROBE = 3

Kind = Literal["inputs_cap", "tokens_cap", "size", "encoding", "dimensions", "too_long", "other"]
Verdict = Literal["retry", "bisect"]

# "batch size 64 > maximum allowed batch size 32" (TEI), "The max number of inputs is 16"
# (OpenAI, Azure), "Too many inputs: 40. The max number of inputs is 32" (vectorfill's own)
_INPUTS_CAP = [
    re.compile(r"maximum allowed batch size (\d+)", re.I),
    re.compile(r"max(?:imum)? number of inputs is (\d+)", re.I),
    re.compile(
        r"(?:batch size|number of inputs|inputs per request|input array)[^.\d]{0,40}(?:must be|should be|"
        r"cannot exceed|exceeds?|at most|less than or equal to|<=|maximum(?: of)?|limit(?: of| is)?)\s*(\d+)\b(?!\s*tokens)",
        re.I,
    ),
]
# "Requested 400000 tokens, max 300000 tokens per request" (OpenAI)
_TOKENS_CAP = [re.compile(r"max(?:imum)?\s+(\d+)\s+tokens per request", re.I)]
_SIZE = re.compile(r"too many inputs|batch size|payload too large|request entity too large|body too large", re.I)
_ENCODING = re.compile(r"encoding_format|base64", re.I)
_DIMENSIONS = re.compile(r"dimensions|matryoshka", re.I)
_TOO_LONG = re.compile(
    r"context.length|too long|maximum.*tokens|tokens.*maximum|less than \d+ tokens|input.*exceeds", re.I
)
# the model's limit on one input, as servers name it: "This model's maximum context length is
# 256 tokens, however input[0] has 3667 tokens" (OpenAI, vLLM, vectorfill's own, and LiteLLM
# wrapping them), "`inputs` must have less than 512 tokens. Given: 600" (TEI)
_INPUT_LIMIT = [
    re.compile(r"maximum context length is (\d+) tokens", re.I),
    re.compile(r"must have less than (\d+) tokens", re.I),
]


# the server's own count of the refused input: "input[3] has 3667 tokens" (vectorfill's own,
# and LiteLLM wrapping it), vLLM's "However, you requested 600 tokens in the input for
# embedding generation", OpenAI's "however you requested 9000 tokens (9000 in your prompt",
# TEI's "must have less than 512 tokens. Given: 600" (the last three name no input: taken only
# when the request held one)
_NAMED_COUNT = re.compile(r"input\[(\d+)\] has (\d+) tokens", re.I)
_COUNT = [
    re.compile(r"you requested (\d+) tokens", re.I),
    re.compile(r"less than \d+ tokens\.?\s*Given:? (\d+)", re.I),
]


def refused_count(message: str, n: int) -> tuple[int, int] | None:
    """(input index, the server's count of its tokens) where a refusal of a request of ``n``
    inputs says both, or says the count and the request held one input."""
    if m := _NAMED_COUNT.search(message):
        index = int(m.group(1))
        return (index, int(m.group(2))) if index < n else None
    if n == 1:
        for pattern in _COUNT:
            if m := pattern.search(message):
                return 0, int(m.group(1))
    return None


def input_limit(message: str) -> int | None:
    """The per-input token limit a refusal names, if it names one."""
    for pattern in _INPUT_LIMIT:
        if m := pattern.search(message):
            return int(m.group(1))
    return None


@dataclass(frozen=True)
class Refusal:
    """What a 4xx says it is about."""

    kind: Kind
    cap: int | None = None


def classify(exc: TerminalProviderError) -> Refusal:
    """Read a refusal: its ``param`` (OpenAI, Infinity's ``loc``), then its message."""
    message = str(exc)
    param = getattr(exc, "param", None) or ""
    for pattern in _INPUTS_CAP:
        if m := pattern.search(message):
            return Refusal("inputs_cap", int(m.group(1)))
    for pattern in _TOKENS_CAP:
        if m := pattern.search(message):
            return Refusal("tokens_cap", int(m.group(1)))
    if param == "encoding_format" or _ENCODING.search(message):
        return Refusal("encoding")
    if param == "dimensions" or _DIMENSIONS.search(message):
        return Refusal("dimensions")
    if exc.code == "context_length_exceeded" or _TOO_LONG.search(message):
        return Refusal("too_long")
    if exc.status == 413 or _SIZE.search(message):
        return Refusal("size")
    return Refusal("other")


class EndpointClient(Protocol):
    """What a :class:`Negotiator` uses of :class:`vectorfill.provider.client.EmbeddingsClient`:
    the request's settings it may change, and one request."""

    base_url: str
    model: str
    job: str | None
    dimensions: int | None
    encoding_format: str

    async def embed(self, texts: list[str]) -> Any:
        """One request; the client's :class:`~vectorfill.provider.client.Embeddings`."""
        ...


class Negotiator:
    """The run's view of what one endpoint accepts, shared by every lane on it.

    ``generation`` counts changes of the request's settings (the encoding, a cap): a
    refusal of a request sent under an older generation is retried under the new one
    without more evidence. ``remember`` (async, optional) keeps what is learnt for the
    endpoint, in Postgres (:func:`vectorfill.storage.caps.remembering`).
    """

    def __init__(
        self,
        client: EndpointClient,
        *,
        caps: Caps | None = None,
        remember: Callable[[Caps, str], Awaitable[None]] | None = None,
    ) -> None:
        self.client = client
        self.max_inputs: int | None = None
        self.max_request_tokens: int | None = None
        self.max_input_tokens: int | None = None
        """The model's limit on one input, as the server said it (learnt or remembered)."""
        self.input_token_ratio: float | None = None
        """The server's tokens per estimated token, from its count of a refused input
        (:func:`vectorfill.provider.tokens.calibrate`): what long inputs are cut by when the
        model's tokenizer is not known here."""
        self.proven = False
        """A request succeeded with the current settings in this run."""
        self.generation = 0
        self.probes = 0
        self.learnt: list[str] = []
        """What this run learnt, one line each (for logs and ``vectorfill check``)."""
        self.rejected: RequestRejected | None = None
        """Set once the request was found refused: every lane stops with it, none probes again."""
        self._remember = remember
        self._lock = asyncio.Lock()
        self._same: dict[str, set[str]] = {}
        if caps is not None:
            self._adopt(caps)

    def _adopt(self, caps: Caps) -> None:
        if caps.max_inputs:
            self.max_inputs = caps.max_inputs
        if caps.max_request_tokens:
            self.max_request_tokens = caps.max_request_tokens
        if caps.encoding_format:
            self.client.encoding_format = caps.encoding_format
        if caps.max_input_tokens:
            self.max_input_tokens = caps.max_input_tokens
        if caps.input_token_ratio:
            self.input_token_ratio = caps.input_token_ratio

    # ------------------------------------------------------------------ settings
    def apply(self, settings: JobSettings) -> JobSettings:
        """``settings`` with the endpoint's learnt caps (never raised above the job's), the
        model's input limit among them (what claims cut inputs to)."""
        update: dict[str, int] = {}
        if self.max_input_tokens and (settings.max_input_tokens or self.max_input_tokens + 1) > self.max_input_tokens:
            update["max_input_tokens"] = self.max_input_tokens
        if self.max_inputs and self.max_inputs < settings.max_inputs:
            update["max_inputs"] = self.max_inputs
        if self.max_request_tokens and self.max_request_tokens < settings.max_request_tokens:
            update["max_request_tokens"] = self.max_request_tokens
        return settings.model_copy(update=update) if update else settings

    async def announced(self, limit: int, where: str) -> None:
        """The server announced the model's input limit (``where``): kept as if learnt."""
        async with self._lock:
            if self.max_input_tokens is None or limit < self.max_input_tokens:
                await self._learn(max_input_tokens=limit, evidence=f"announced by {where}")

    def succeeded(self, generation: int) -> None:
        if generation == self.generation:
            self.proven = True

    # ------------------------------------------------------------------ evidence
    async def judge(
        self, exc: TerminalProviderError, n: int, generation: int, texts: list[str] | None = None
    ) -> Verdict:
        """Decide what the refusal ``exc`` of a request of ``n`` inputs (``texts``, when given:
        a count the server names for one of them calibrates the estimate), sent under
        ``generation``, is about: ``retry`` (the settings changed: send it again, split to
        the caps), ``bisect`` (an input's fault); or raise :class:`RequestRejected`."""
        if stops_run(exc):
            raise exc
        async with self._lock:
            if self.rejected is not None:
                raise self.rejected
            if generation != self.generation:
                return "retry"  # another lane changed the settings meanwhile
            try:
                return await self._judge(exc, n, texts)
            except RequestRejected as rejected:
                self.rejected = rejected
                raise

    async def _judge(self, exc: TerminalProviderError, n: int, texts: list[str] | None = None) -> Verdict:
        refusal = classify(exc)
        if refusal.kind == "inputs_cap" and refusal.cap and n > refusal.cap:
            # (refused at or under the cap it names: the cap is not the problem)
            await self._learn(max_inputs=refusal.cap, evidence=_line(exc))
            return "retry"
        if refusal.kind == "tokens_cap" and refusal.cap:
            if self.max_request_tokens is None or refusal.cap < self.max_request_tokens:
                await self._learn(max_request_tokens=refusal.cap, evidence=_line(exc))
                return "retry"
            if n > 1:  # packed to the cap by our counts, still over by the server's: halves
                return "bisect"
        if refusal.kind == "encoding" and self.client.encoding_format == "base64":
            await self._learn(encoding_format="float", evidence=_line(exc))
            return "retry"
        if refusal.kind == "dimensions" and self.client.dimensions:
            raise self._dimensions_refused(exc)
        limit = input_limit(str(exc)) if refusal.kind == "too_long" else None
        ratio = self._calibration(str(exc), texts) if limit else None
        if limit and (self.max_input_tokens is None or limit < self.max_input_tokens):
            # the model's limit: inputs are cut to it from now on, in this run and the next
            await self._learn(max_input_tokens=limit, input_token_ratio=ratio, evidence=_line(exc))
            return "retry"
        if ratio and ratio > (self.input_token_ratio or 0.0) * 1.01:
            # cut by the estimate, still over by the server's count: the estimate is raised
            await self._learn(input_token_ratio=ratio, evidence=_line(exc))
            return "retry"
        if refusal.kind in ("too_long", "size") and (n > 1 or refusal.kind == "too_long"):
            return "bisect"  # an input's length, or the request's size: halves will tell
        if self.proven:
            return "bisect"
        return await self._probe(exc)

    def _calibration(self, message: str, texts: list[str] | None) -> float | None:
        """The tokens per estimated token of the input whose count the refusal names (None
        when it names none, or the model's tokenizer is known here: no estimate to scale)."""
        if not texts or counter_for(self.client.model).exact:
            return None
        counted = refused_count(message, len(texts))
        return calibrate(texts[counted[0]], counted[1]) if counted else None

    async def single_refused(self, exc: TerminalProviderError, text: str, generation: int) -> None:
        """A single input was refused (bisecting ended on it). The same refusal for several
        different inputs is evidence against the request, not the inputs: probe again."""
        if classify(exc).kind == "too_long":
            return
        key = _normalized(exc)
        seen = self._same.setdefault(key, set())
        seen.add(text[:200])
        if len(seen) >= SAME_REFUSALS_BEFORE_PROBE:
            async with self._lock:
                if generation != self.generation or len(self._same.get(key, ())) < SAME_REFUSALS_BEFORE_PROBE:
                    return
                if self.rejected is not None:
                    raise self.rejected
                self._same.pop(key, None)
                self.proven = False
                try:
                    await self._probe(exc)
                except RequestRejected as rejected:
                    self.rejected = rejected
                    raise

    async def size_refused(self, accepted_half: int) -> None:
        """A request was refused and both its halves were then accepted whole: it was refused
        for its size. Its larger half is a cap the endpoint accepts."""
        async with self._lock:
            if self.max_inputs is None or accepted_half < self.max_inputs:
                await self._learn(
                    max_inputs=accepted_half,
                    evidence=f"a request of more than {accepted_half} inputs was refused and its halves accepted",
                )

    async def _probe(self, exc: TerminalProviderError) -> Verdict:
        """One known-good input with the current settings, then with the variants that may
        be at fault; raises :class:`RequestRejected` when every variant is refused."""
        client = self.client
        if await self._try():
            self.proven = True
            return "bisect"
        if client.encoding_format == "base64":
            client.encoding_format = "float"
            if await self._try():
                client.encoding_format = "base64"
                await self._learn(encoding_format="float", evidence=_line(exc))
                self.proven = True
                return "retry"
            client.encoding_format = "base64"
        if client.dimensions:
            dims, client.dimensions = client.dimensions, None
            try:
                accepted = await self._try()
            finally:
                client.dimensions = dims
            if accepted:
                raise self._dimensions_refused(exc)
        raise RequestRejected(
            f"the endpoint refuses every request, even one with a single one-word input, so no row "
            f"is at fault and none was marked failed ({exc.status}: {_message(exc)}). Check the "
            f"job's model ({client.model!r}), --base-url, --dimensions and --encoding-format, then "
            f"`vectorfill check {client.job or 'JOB'}`; every row stays queued",
            job=client.job,
            status=exc.status,
            code=exc.code,
        )

    async def _try(self) -> bool:
        """Send the probe; True when it was accepted. Errors that stop the run propagate.

        Sent without ``dimensions``, an accepted probe comes back with the model's own size,
        which the client refuses as a ``dimension_mismatch`` (it checks the job's size): the
        server accepted the request all the same, so that counts as accepted."""
        self.probes += 1
        try:
            await self.client.embed([PROBE_TEXT])
        except TerminalProviderError as exc:
            if stops_run(exc):
                raise
            return False
        except TransientProviderError as exc:
            if exc.code == "dimension_mismatch" and not self.client.dimensions:
                return True
            raise
        return True

    def _dimensions_refused(self, exc: TerminalProviderError) -> RequestRejected:
        client = self.client
        return RequestRejected(
            f"model {client.model!r} at this endpoint refuses the `dimensions` parameter "
            f"(dimensions={client.dimensions}; {exc.status}: {_message(exc)}). Use the model's own "
            f"size: start a version without it, `vectorfill job set-model {client.job or 'JOB'} "
            f"--model {client.model}` (no --dimensions), or pick a model that supports it; every row stays queued",
            setting="dimensions",
            job=client.job,
            status=exc.status,
            code=exc.code,
        )

    async def _learn(
        self,
        *,
        max_inputs: int | None = None,
        max_request_tokens: int | None = None,
        encoding_format: str | None = None,
        max_input_tokens: int | None = None,
        input_token_ratio: float | None = None,
        evidence: str,
    ) -> None:
        if max_inputs is not None:
            self.max_inputs = min(max_inputs, self.max_inputs or max_inputs)
            self.learnt.append(f"at most {self.max_inputs} inputs per request ({evidence})")
        if max_request_tokens is not None:
            self.max_request_tokens = min(max_request_tokens, self.max_request_tokens or max_request_tokens)
            self.learnt.append(f"at most {self.max_request_tokens} tokens per request ({evidence})")
        if encoding_format is not None:
            self.client.encoding_format = encoding_format
            self.learnt.append(f"encoding_format {encoding_format} ({evidence})")
        if max_input_tokens is not None:
            self.max_input_tokens = min(max_input_tokens, self.max_input_tokens or max_input_tokens)
            self.learnt.append(f"at most {self.max_input_tokens} tokens per input ({evidence})")
        if input_token_ratio is not None:
            self.input_token_ratio = max(input_token_ratio, self.input_token_ratio or input_token_ratio)
            self.learnt.append(f"{self.input_token_ratio:.3f} of the server's tokens per estimated token ({evidence})")
        self.generation += 1
        self.proven = False
        log.warning("endpoint %s: learnt %s", self.client.base_url, self.learnt[-1])
        if self._remember is not None:
            try:
                await self._remember(
                    Caps(
                        max_inputs=max_inputs,
                        max_request_tokens=max_request_tokens,
                        encoding_format=encoding_format,
                        max_input_tokens=max_input_tokens,
                        input_token_ratio=input_token_ratio,
                    ),
                    evidence,
                )
            except Exception as exc:  # remembering is an optimisation: the run goes on
                log.warning("could not remember what endpoint %s accepts: %s", self.client.base_url, exc)

    # ------------------------------------------------------------------ sending
    async def embed(self, texts: list[str]) -> Any:
        """One negotiated request for ``texts`` (no bisecting): split to the caps, retried
        after a setting changed; a refusal left is raised. For ``vectorfill check``."""
        import numpy as np

        while True:
            generation = self.generation
            cap = self.max_inputs or len(texts)
            parts, start = [], 0
            try:
                for start in range(0, len(texts), cap):
                    parts.append(await self.client.embed(texts[start : start + cap]))
            except TerminalProviderError as exc:
                sent = texts[start : start + cap]
                if await self.judge(exc, len(sent), generation, sent) == "retry":
                    continue
                raise
            self.succeeded(generation)
            if len(parts) == 1:
                return parts[0]
            tokens = [p.prompt_tokens for p in parts]
            return dataclasses.replace(
                parts[0],
                vectors=np.vstack([p.vectors for p in parts]),
                prompt_tokens=None if None in tokens else sum(t for t in tokens if t is not None),
            )


def _message(exc: BaseException) -> str:
    """The server's words, without the client's prefix ("... rejected the request (422): ")."""
    text = str(exc)
    m = re.search(r"\(\d{3}\): (.*)$", text, re.S)
    return (m.group(1) if m else text).strip()[:300]


def _line(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    return f"{status}: {_message(exc)}"[:300]


def _normalized(exc: BaseException) -> str:
    """A refusal's message with numbers and quoted text blanked, to compare refusals."""
    text = _message(exc)
    text = re.sub(r"input\[\d+\]", "input[]", text)
    text = re.sub(r"'[^']*'|\"[^\"]*\"|`[^`]*`", "''", text)
    return f"{getattr(exc, 'status', None)} " + re.sub(r"\d+", "#", text)
