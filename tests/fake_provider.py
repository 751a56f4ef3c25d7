"""A fake OpenAI embeddings provider for tests and benchmarks, with scripted faults.

It is the real server (``vectorfill.local.embeddings_server.create_app`` with a ``HashEncoder``) plus an
interceptor that counts what it was sent, answers with scripted faults, and enforces
OpenAI-style rate limits. Vectors are ``expected_vector(text, dimensions)``.

In a test::

    with FakeProvider(dimensions=384, api_key="sk-test") as provider:
        client = httpx.Client(base_url=provider.base_url)        # .../v1
        provider.fail_next(2, status=503)                          # two 503s, then normal
        ...
        assert provider.requests == 3 and provider.tokens_billed == 42

As a process (for benchmarks; ``GET /_fake/stats`` returns the counters)::

    python tests/fake_provider.py --port 8081 --dimensions 1536 --latency-ms 0 \\
        --rpm 3000 --tpm 1000000 --api-key-env FAKE_KEY

Scripted faults, each for the next ``n`` requests:

* ``fail_next(n, status, body, headers)``: answer with that response (JSON or an HTML page);
* ``hang_next(n, seconds)``: wait that long before answering normally (client timeouts),
  or until ``release_hangs()``;
* ``corrupt_next(n, mode)``: damage the next ``n`` successful responses, ``mode`` one of
  ``CORRUPT_MODES``;
* ``fail_when(predicate, status=400)``: every request with an input matching the
  predicate is refused, until ``clear_faults()``.

Server variants (``behave_like(name, **options)``; ``VARIANTS``): the fake answers the way
another real server does, with that server's status codes and error bodies: TEI's 413 for
more inputs than ``max_client_batch_size`` and its 422 for ``base64`` before it supported
it, vLLM's and OpenAI's refusals of ``dimensions``, Infinity's FastAPI 422, LiteLLM's
wrapped errors, Ollama's float-only answers, Azure OpenAI's ``api-key`` header,
``api-version`` query and deployment path, a gateway's HTML 413 page; answers without
``usage`` or ``index``, with extra fields. See each ``_variant_*`` for the source.

``fail_next`` and ``hang_next`` share one queue consumed in request arrival order, so
``fail_next(1); hang_next(1)`` fails the first request and delays the second.

As a real provider does, the fake checks the API key first: a request without the right
key gets its 401 before any scripted fault, variant or rate limit is applied, and consumes
none of them (OpenAI answers 401 before anything else).

Rate limits (``rpm``, ``tpm``) are token buckets the way OpenAI describes them: the
capacity is the per-minute limit and it refills continuously at limit/60 per second. A
request is admitted when one request and its prompt tokens are available, and is then
charged; otherwise it gets a 429 with ``retry-after``/``retry-after-ms``. Every
embeddings response carries the ``x-ratelimit-*`` headers.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hmac
import json
import math
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import uvicorn
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fake_batch_api import FakeBatches
from vectorfill.local.embeddings_server import HashEncoder, ServerThread, create_app, expected_vector
from vectorfill.local.embeddings_server.app import (
    EmbeddingCall,
    EmbeddingResult,
    JSONResponse,
    openai_error,
    render_embeddings,
)

__all__ = [
    "CORRUPT_MODES",
    "VARIANTS",
    "FakeProvider",
    "RateLimiter",
    "Variant",
    "format_duration",
    "wait_until_healthy",
]

CORRUPT_MODES = ("shuffle", "short", "wrong_dims", "nan", "no_index", "floats_when_base64")


# --------------------------------------------------------------------------- serving


# --------------------------------------------------------------------------- processes


def wait_until_healthy(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait until ``GET {url}/health`` answers 200 from a server started as ``proc``.

    Raises RuntimeError when the process ends first or ``timeout`` seconds pass.
    """
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(f"{url}/health", timeout=1).raise_for_status()
            return
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise RuntimeError(f"the server at {url} exited with code {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server at {url} did not answer /health within {timeout:.0f} s") from None
            time.sleep(0.1)


# --------------------------------------------------------------------------- rate limits


def format_duration(seconds: float) -> str:
    """A duration the way OpenAI's ``x-ratelimit-reset-*`` headers write it: 6m0s, 1s, 20ms."""
    ms = max(0, math.ceil(seconds * 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "") + f"{secs}s"


class _Bucket:
    def __init__(self, per_minute: int, now: float) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = self.capacity
        self.updated = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        return 0.0 if self.level >= amount else (amount - self.level) / self.rate

    def reset_after(self) -> float:
        return (self.capacity - self.level) / self.rate


@dataclass
class Admission:
    """What the rate limiter decided for one request."""

    refused: str | None  # None, "requests" or "tokens"
    headers: dict[str, str]
    retry_after: float | None = None  # None when retrying cannot help (request too large)
    message: str = ""


class RateLimiter:
    """OpenAI-style per-minute request and token budgets as token buckets.

    ``clock`` is injectable so tests can move time without sleeping::

        now = [0.0]
        limiter = RateLimiter(rpm=60, tpm=None, model="m", clock=lambda: now[0])
    """

    def __init__(
        self, *, rpm: int | None, tpm: int | None, model: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        start = clock()
        self._requests = _Bucket(rpm, start) if rpm else None
        self._tokens = _Bucket(tpm, start) if tpm else None
        self._model = model
        self._lock = threading.Lock()

    def admit(self, tokens: int) -> Admission:
        with self._lock:
            now = self._clock()
            for bucket in (self._requests, self._tokens):
                if bucket is not None:
                    bucket.refill(now)
            refused: str | None = None
            wait = 0.0
            message = ""
            req, tok = self._requests, self._tokens
            if tok is not None and tokens > tok.capacity:
                return Admission(
                    "tokens",
                    self._headers(),
                    None,
                    f"Request too large for {self._model} on tokens per min (TPM): Limit "
                    f"{int(tok.capacity)}, Requested {tokens}. The input must be reduced in order "
                    "to run successfully.",
                )
            if req is not None and req.level < 1:
                refused, wait = "requests", req.wait_for(1)
                message = self._message("requests per min (RPM)", req, 1, wait)
            elif tok is not None and tok.level < tokens:
                refused, wait = "tokens", tok.wait_for(tokens)
                message = self._message("tokens per min (TPM)", tok, tokens, wait)
            else:
                if req is not None:
                    req.level -= 1
                if tok is not None:
                    tok.level -= tokens
            return Admission(refused, self._headers(), wait if refused else None, message)

    def _message(self, what: str, bucket: _Bucket, requested: int, wait: float) -> str:
        used = int(bucket.capacity - math.floor(bucket.level))
        return (
            f"Rate limit reached for {self._model} on {what}: Limit {int(bucket.capacity)}, "
            f"Used {used}, Requested {requested}. Please try again in {format_duration(wait)}."
        )

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for kind, bucket in (("requests", self._requests), ("tokens", self._tokens)):
            if bucket is not None:
                headers[f"x-ratelimit-limit-{kind}"] = str(int(bucket.capacity))
                headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(bucket.level)))
                headers[f"x-ratelimit-reset-{kind}"] = format_duration(bucket.reset_after())
        return headers


# --------------------------------------------------------------------------- the fake


@dataclass
class _Scripted:
    kind: str  # "fail" or "hang"
    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class _Rule:
    predicate: Callable[[str], bool]
    status: int
    body: Any


def _default_body(status: int) -> dict[str, Any]:
    if status == 429:
        kind, code, message = "requests", "rate_limit_exceeded", "Rate limit reached (scripted by the fake provider)."
    elif status == 401:
        kind, code, message = "invalid_request_error", "invalid_api_key", "Incorrect API key provided."
    elif status >= 500:
        kind, code, message = "server_error", None, "The server had an error while processing your request."
    else:
        kind, code, message = "invalid_request_error", None, f"Scripted {status} from the fake provider."
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _response(status: int, body: Any, headers: dict[str, str]) -> Response:
    if body is None:
        body = _default_body(status)
    if isinstance(body, (dict, list)):
        return JSONResponse(body, status_code=status, headers=headers)
    content = body.encode() if isinstance(body, str) else bytes(body)
    media = "text/html" if content.lstrip().startswith(b"<") else "text/plain"
    return Response(content, status_code=status, headers=headers, media_type=media)


# --------------------------------------------------------------------------- server variants


@dataclass
class Variant:
    """How another server answers; applied by ``FakeProvider.before`` / ``around``.

    Each ``refuse_*`` is None (accepted) or a function of the parsed body giving the
    response that server sends.
    """

    name: str
    refuse_base64: Callable[[dict], Response] | None = None
    refuse_dimensions: Callable[[dict], Response] | None = None
    max_batch: int | None = None
    refuse_batch: Callable[[int, int], Response] | None = None
    floats_only: bool = False
    no_usage: bool = False
    no_index: bool = False
    extra_fields: bool = False
    azure_key: str | None = None
    """Azure OpenAI: the ``api-key`` header required, with ``api-version`` in the query."""
    refuse_too_long: Callable[[int, int, int], Response] | None = None
    """Given (input index, its tokens, the limit): the refusal of an input over ``input_limit``."""
    input_limit: int | None = None
    truncate_at: int | None = None
    """Inputs cut silently to this many tokens before they are embedded (Infinity)."""
    usage_chars: bool = False
    """``usage.prompt_tokens`` counts characters, not tokens (Infinity)."""


def _column(raw: bytes, field_name: str) -> int:
    at = raw.find(f'"{field_name}"'.encode())
    return (raw.find(b":", at) + 2) if at >= 0 else 1


def _tei(max_client_batch_size: int = 32, base64: bool = True, **_: Any) -> Variant:
    """Hugging Face TEI's OpenAI route (router/src/http/server.rs, types.rs): errors are
    ``{"message", "code", "error_type"}``; more inputs than ``--max-client-batch-size`` is
    413 ``validation``; before base64 support, axum's JSON extractor refused the unknown
    enum variant with a 422 in plain text."""

    def batch(n: int, cap: int) -> Response:
        message = f"batch size {n} > maximum allowed batch size {cap}"
        return JSONResponse({"message": message, "code": 413, "error_type": "validation"}, status_code=413)

    def no_base64(body: dict) -> Response:
        raw = orjson.dumps(body)
        return Response(
            "Failed to deserialize the JSON body into the target type: encoding_format: unknown variant "
            f"`base64`, expected `float` at line 1 column {_column(raw, 'encoding_format') + 7}",
            status_code=422,
            media_type="text/plain; charset=utf-8",
        )

    return Variant(
        "tei", refuse_base64=None if base64 else no_base64, max_batch=max_client_batch_size, refuse_batch=batch
    )


def _openai_error(status: int, message: str, type_: str | None = "invalid_request_error", code: Any = None) -> Response:
    return JSONResponse({"error": {"message": message, "type": type_, "param": None, "code": code}}, status_code=status)


def _openai(**_: Any) -> Variant:
    """OpenAI with a model that has no ``dimensions`` (text-embedding-ada-002): 400."""
    return Variant(
        "openai",
        refuse_dimensions=lambda body: _openai_error(400, "This model does not support specifying dimensions."),
    )


def _vllm(max_input_tokens: int | None = None, **_: Any) -> Variant:
    """vLLM's OpenAI server (entrypoints/openai): ``{"error": {"message", "type":
    "BadRequestError", "param", "code": 400}}``; a model without Matryoshka support refuses
    ``dimensions``. With ``max_input_tokens`` (its ``max_model_len``) an input over it is
    refused in vLLM's words, which name the count but not the input."""

    def too_long(i: int, n: int, limit: int) -> Response:
        return _openai_error(
            400,
            f"This model's maximum context length is {limit} tokens. However, you requested {n} tokens in the "
            "input for embedding generation. Please reduce the length of the input.",
            "BadRequestError",
            400,
        )

    return Variant(
        "vllm",
        refuse_too_long=too_long,
        input_limit=max_input_tokens,
        refuse_dimensions=lambda body: _openai_error(
            400,
            f'Model "{body.get("model")}" does not support matryoshka representation, changing output '
            "dimensions will lead to poor results.",
            "BadRequestError",
            400,
        ),
    )


def _infinity(truncate_at: int | None = None, usage_chars: bool = False, base64: bool = False, **_: Any) -> Variant:
    """Infinity (michaelfeil/infinity) before base64 support: FastAPI's 422 for a literal
    that does not match, ``{"detail": [{"type", "loc", "msg", "input", "ctx"}]}``. As 0.0.78
    serves MiniLM (``base64=True``): inputs over the model's 256 tokens cut silently
    (``truncate_at``) and ``usage.prompt_tokens`` the inputs' characters (``usage_chars``)."""
    return Variant(
        "infinity",
        truncate_at=truncate_at,
        usage_chars=usage_chars,
        refuse_base64=None
        if base64
        else lambda body: JSONResponse(
            {
                "detail": [
                    {
                        "type": "literal_error",
                        "loc": ["body", "encoding_format"],
                        "msg": "Input should be 'float'",
                        "input": "base64",
                        "ctx": {"expected": "'float'"},
                    }
                ]
            },
            status_code=422,
        ),
    )


def _litellm(max_input_tokens: int | None = None, **_: Any) -> Variant:
    """LiteLLM proxy in front of a model without ``dimensions``: the upstream message
    wrapped, ``type`` null and ``code`` a string. With ``max_input_tokens``, in front of a
    server that refuses longer inputs: 1.108.7's body, the upstream's words wrapped and its
    ``param`` dropped (so the refused input is named only in the message)."""

    def too_long(i: int, n: int, limit: int) -> Response:
        message = (
            "litellm.ContextWindowExceededError: litellm.BadRequestError: ContextWindowExceededError: "
            f"OpenAIException - Error code: 400 - This model's maximum context length is {limit} tokens, however "
            f"input[{i}] has {n} tokens. Shorten that input; this server never truncates.\nmodel=minilm. "
            "context_window_fallbacks=None. fallbacks=None.\n\nSet 'context_window_fallback' - "
            "https://docs.litellm.ai/docs/routing#fallbacks\n\nLiteLLM: model group 'minilm' failed with the "
            "error above. No fallback was attempted."
        )
        return _openai_error(400, message, "invalid_request_error", "400")

    return Variant(
        "litellm",
        refuse_too_long=too_long,
        input_limit=max_input_tokens,
        refuse_dimensions=lambda body: _openai_error(
            400,
            "litellm.BadRequestError: OpenAIException - This model does not support specifying dimensions.",
            None,
            "400",
        ),
    )


def _ollama(**_: Any) -> Variant:
    """Ollama's OpenAI-compatible endpoint (before it honoured ``encoding_format``): float
    lists whatever was asked, extra fields."""
    return Variant("ollama", floats_only=True, extra_fields=True)


def _minimal(**_: Any) -> Variant:
    """A relay that answers with the bare minimum: no ``usage``, no ``index``, extra fields."""
    return Variant("minimal", no_usage=True, no_index=True, extra_fields=True)


def _azure(api_key: str = "azure-key", max_inputs: int = 16, **_: Any) -> Variant:
    """Azure OpenAI: ``POST /openai/deployments/{deployment}/embeddings?api-version=...``
    with an ``api-key`` header; older API versions took 16 inputs per request."""

    def batch(n: int, cap: int) -> Response:
        return _openai_error(
            400,
            f"Too many inputs. The max number of inputs is {cap}.  We hope to increase the number of inputs per "
            "request soon. Please contact us through an Azure support request at: "
            "https://go.microsoft.com/fwlink/?linkid=2213926 for further questions.",
        )

    return Variant("azure", max_batch=max_inputs, refuse_batch=batch, azure_key=api_key)


_NGINX_413 = (
    "<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n"
    "<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


def _gateway(max_inputs: int = 20, **_: Any) -> Variant:
    """A reverse proxy (nginx ``client_max_body_size``) refusing big bodies with its HTML
    413 page, which names no limit; here: more than ``max_inputs`` inputs."""
    return Variant(
        "gateway",
        max_batch=max_inputs,
        refuse_batch=lambda n, cap: Response(_NGINX_413, status_code=413, media_type="text/html"),
    )


VARIANTS: dict[str, Callable[..., Variant]] = {
    "openai": _openai,
    "tei": _tei,
    "vllm": _vllm,
    "infinity": _infinity,
    "litellm": _litellm,
    "ollama": _ollama,
    "minimal": _minimal,
    "azure": _azure,
    "gateway": _gateway,
}


class FakeProvider:
    """The fake provider: a real server, plus accounting, scripted faults and rate limits.

    All controls and counters are thread-safe; read and set them from the test thread
    while the server runs on its own.
    """

    def __init__(
        self,
        dimensions: int = 1536,
        *,
        api_key: str | None = None,
        latency_s: float = 0.0,
        rpm: int | None = None,
        tpm: int | None = None,
        model: str = "fake-embed",
        max_tokens: int = 8191,
        max_inputs: int = 2048,
        max_request_tokens: int = 300_000,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
        seed: int = 0,
    ) -> None:
        self.encoder = HashEncoder(model, dimensions, max_tokens)
        self.latency_s = latency_s
        self.limiter = RateLimiter(rpm=rpm, tpm=tpm, model=model, clock=clock) if (rpm or tpm) else None
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._scripted: collections.deque[_Scripted] = collections.deque()
        self._corrupt: collections.deque[str] = collections.deque()
        self._rules: list[_Rule] = []
        self._released = threading.Event()  # ends the hangs under way (``release_hangs``)
        self.variant: Variant | None = None
        self.tokenize: str | None = None
        """Serve ``POST /tokenize`` as ``"vllm"`` or ``"tei"`` does (None: a 404, as most servers)."""
        self.max_model_len = max_tokens
        self._api_key = api_key
        self._zero()
        # the Files and Batches endpoints (OpenAI's Batch API), in their own module
        self.batch_api = FakeBatches(self.encoder, api_key=api_key)
        self.app = create_app(
            self.encoder,
            api_key=api_key,
            max_inputs=max_inputs,
            max_request_tokens=max_request_tokens,
            max_wait_ms=0,
            interceptor=self,
            routes=[
                Route("/_fake/stats", self._stats_route, methods=["GET"]),
                Route("/tokenize", self._tokenize_route, methods=["POST"]),
                Route("/openai/deployments/{deployment}/embeddings", self._azure_route, methods=["POST"]),
                *self.batch_api.routes(),
            ],
        )
        self._server = ServerThread(self.app, host, port)

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL, ending in ``/v1``."""
        return f"{self._server.url}/v1"

    @property
    def dimensions(self) -> int:
        return self.encoder.dimensions

    @property
    def model(self) -> str:
        return self.encoder.name

    def expected_vector(self, text: str, dimensions: int | None = None) -> np.ndarray:
        """The vector this provider returns for ``text`` (at ``dimensions`` if requested)."""
        return expected_vector(text, dimensions or self.dimensions, native_dimensions=self.dimensions)

    def start(self) -> FakeProvider:
        self._server.start()
        return self

    def stop(self, *, wait: bool = True) -> None:
        """Stop serving; by default wait until the port is closed (a test of an outage)."""
        self._server.stop(wait=wait)

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(wait=False)  # at the end of a test nobody waits for the port: saves ~0.2 s a test

    # ------------------------------------------------------------------ accounting

    def _zero(self) -> None:
        self._requests = 0
        self._request_inputs: list[list[str]] = []
        self._embedded: list[str] = []
        self._tokens_billed = 0
        self._rate_limited = 0
        self._answered = 0
        self._tokenize_requests = 0

    @property
    def requests(self) -> int:
        """Embeddings requests received, whatever they were answered with."""
        with self._lock:
            return self._requests

    @property
    def refused(self) -> int:
        """Embeddings requests not answered with vectors (refused, rate-limited, failed)."""
        with self._lock:
            return self._requests - self._answered

    @property
    def request_inputs(self) -> list[list[str]]:
        """The inputs of each request received, in arrival order (unparseable ones as [])."""
        with self._lock:
            return [list(b) for b in self._request_inputs]

    @property
    def inputs(self) -> list[str]:
        """Every input text received, in order, including those of refused requests."""
        with self._lock:
            return [text for inputs in self._request_inputs for text in inputs]

    @property
    def embedded(self) -> list[str]:
        """Every input answered with a 200 (corrupted responses included), in order."""
        with self._lock:
            return list(self._embedded)

    @property
    def tokens_billed(self) -> int:
        """Sum of ``usage.prompt_tokens`` over 200 responses."""
        with self._lock:
            return self._tokens_billed

    @property
    def tokenize_requests(self) -> int:
        """Requests to ``/tokenize`` answered (with :attr:`tokenize` set)."""
        with self._lock:
            return self._tokenize_requests

    @property
    def rate_limited(self) -> int:
        """Number of 429 responses sent (rate limits and scripted 429s)."""
        with self._lock:
            return self._rate_limited

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "requests": self._requests,
                "inputs": sum(map(len, self._request_inputs)),
                "embedded": len(self._embedded),
                "tokens_billed": self._tokens_billed,
                "rate_limited": self._rate_limited,
            }

    def reset(self) -> None:
        """Zero the counters, drop every scripted fault, answer as itself again (no
        ``behave_like`` variant) and empty the Batch API's files and batches."""
        with self._lock:
            self._zero()
            self.variant = None
        self.clear_faults()
        self.batch_api.reset()

    # ------------------------------------------------------------------ faults

    def fail_next(self, n: int = 1, status: int = 500, body: Any = None, headers: dict[str, str] | None = None) -> None:
        """Answer the next ``n`` requests with ``status`` and ``body``.

        ``body``: a dict (sent as JSON), a str or bytes (an HTML page if it starts with
        ``<``), or None for an OpenAI-shaped error that fits the status.
        """
        with self._lock:
            for _ in range(n):
                self._scripted.append(_Scripted("fail", status, body, dict(headers or {})))

    def hang_next(self, n: int = 1, seconds: float = 30.0) -> None:
        """Wait ``seconds`` before answering each of the next ``n`` requests, or until
        ``release_hangs()`` is called, whichever comes first."""
        with self._lock:
            self._released.clear()
            for _ in range(n):
                self._scripted.append(_Scripted("hang", seconds=seconds))

    def release_hangs(self) -> None:
        """End the hangs under way now: their requests are answered normally at once."""
        self._released.set()

    def corrupt_next(self, n: int = 1, mode: str = "shuffle") -> None:
        """Damage the next ``n`` successful responses; ``mode`` is one of ``CORRUPT_MODES``.

        ``shuffle`` is still a valid response (items out of order, correct ``index``);
        ``short`` drops the last item; ``wrong_dims`` drops the last dimension; ``nan``
        puts a NaN in the first vector (a bare ``NaN`` in JSON, or in the base64 floats);
        ``no_index`` removes the ``index`` fields; ``floats_when_base64`` sends float
        lists whatever ``encoding_format`` asked for.
        """
        if mode not in CORRUPT_MODES:
            raise ValueError(f"unknown corruption mode {mode!r}; use one of {', '.join(CORRUPT_MODES)}")
        with self._lock:
            self._corrupt.extend([mode] * n)

    def fail_when(self, predicate: Callable[[str], bool], status: int = 400, body: Any = None) -> None:
        """Refuse every request with an input for which ``predicate`` is true."""
        with self._lock:
            self._rules.append(_Rule(predicate, status, body))

    def behave_like(self, name: str, **options: Any) -> Variant:
        """Answer from now on as the server ``name`` does (one of ``VARIANTS``); options
        such as ``max_client_batch_size=32`` or ``base64=False`` (TEI) tune it."""
        if name not in VARIANTS:
            raise ValueError(f"unknown variant {name!r}; use one of {', '.join(VARIANTS)}")
        self.variant = VARIANTS[name](**options)
        return self.variant

    def pending_faults(self) -> int:
        """Scripted faults (fail, hang, corrupt) not yet met by a request."""
        with self._lock:
            return len(self._scripted) + len(self._corrupt)

    def clear_faults(self) -> None:
        with self._lock:
            self._scripted.clear()
            self._corrupt.clear()
            self._rules.clear()

    # ------------------------------------------------------------------ interceptor

    def _authorized(self, request: Request) -> bool:
        """The same test as the server's own (``Authorization: Bearer <key>``), made first."""
        if self._api_key is None:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._api_key.encode())

    async def before(self, request: Request, body: bytes) -> Response | None:
        texts: list[str] = []
        parsed: dict = {}
        try:
            parsed = orjson.loads(body)
            value = parsed.get("input")
            texts = [value] if isinstance(value, str) else [t for t in value if isinstance(t, str)]
        except Exception:  # unparseable bodies are the server's business
            pass
        with self._lock:
            self._requests += 1
            self._request_inputs.append(texts)
            if not self._authorized(request):
                return None  # the server's 401, before any fault: none is used up
            action = self._scripted.popleft() if self._scripted else None
            if action is not None and action.kind == "fail" and action.status == 429:
                self._rate_limited += 1
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        if action is None:
            return self._variant_refusal(parsed, len(texts))
        if action.kind == "hang":
            await asyncio.to_thread(self._released.wait, action.seconds)  # the time, or a release
            return None
        return _response(action.status, action.body, action.headers)

    def _variant_refusal(self, body: dict, n: int) -> Response | None:
        variant = self.variant
        if variant is None or not isinstance(body, dict):
            return None
        if variant.refuse_base64 is not None and body.get("encoding_format") == "base64":
            return variant.refuse_base64(body)
        if variant.refuse_dimensions is not None and body.get("dimensions") is not None:
            return variant.refuse_dimensions(body)
        if variant.max_batch is not None and variant.refuse_batch is not None and n > variant.max_batch:
            return variant.refuse_batch(n, variant.max_batch)
        if variant.refuse_too_long is not None and variant.input_limit is not None:
            texts = body.get("input")
            texts = [texts] if isinstance(texts, str) else [t for t in texts or [] if isinstance(t, str)]
            for i, count in enumerate(self.encoder.count_tokens(texts)):
                if count > variant.input_limit:
                    return variant.refuse_too_long(i, count, variant.input_limit)
        return None

    async def _azure_route(self, request: Request) -> Response:
        """Azure OpenAI's path: the ``api-key`` header and ``api-version`` query checked
        the way Azure answers, then the embeddings endpoint itself."""
        variant = self.variant
        if variant is None or variant.azure_key is None:
            return JSONResponse({"error": {"code": "404", "message": "Resource not found"}}, status_code=404)
        if "api-version" not in request.query_params:
            return JSONResponse({"error": {"code": "404", "message": "Resource not found"}}, status_code=404)
        if request.headers.get("api-key") != variant.azure_key:
            return JSONResponse(
                {
                    "error": {
                        "code": "401",
                        "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure "
                        "to provide a valid key for an active subscription and use a correct regional API endpoint "
                        "for your resource.",
                    }
                },
                status_code=401,
            )
        route = next(r for r in self.app.routes if getattr(r, "path", None) == "/v1/embeddings")
        if self._api_key:  # past Azure's check: the fake's own Bearer check is satisfied
            scope = dict(request.scope)
            scope["headers"] = [(k, v) for k, v in request.scope["headers"] if k != b"authorization"] + [
                (b"authorization", f"Bearer {self._api_key}".encode())
            ]
            request = Request(scope, request.receive)
        return await route.endpoint(request)

    async def around(self, call: EmbeddingCall, proceed: Any) -> EmbeddingResult | Response:
        headers: dict[str, str] = {}
        if self.limiter is not None:
            admission = self.limiter.admit(call.prompt_tokens)
            headers = admission.headers
            if admission.refused:
                with self._lock:
                    self._rate_limited += 1
                if admission.retry_after is not None:
                    headers = {
                        **headers,
                        "retry-after": str(max(1, math.ceil(admission.retry_after))),
                        "retry-after-ms": str(max(1, math.ceil(admission.retry_after * 1000))),
                    }
                return openai_error(
                    429, admission.message, type=admission.refused, code="rate_limit_exceeded", headers=headers
                )
        with self._lock:
            rules = list(self._rules)
        for rule in rules:
            for i, text in enumerate(call.texts):
                if rule.predicate(text):
                    body = rule.body
                    if body is None:
                        body = {
                            "error": {
                                "message": f"input[{i}] was refused by the fake provider's fail_when rule.",
                                "type": "invalid_request_error",
                                "param": f"input[{i}]",
                                "code": None,
                            }
                        }
                    return _response(rule.status, body, headers)
        variant = self.variant
        if variant is not None and variant.usage_chars:  # usage counts the inputs' characters
            call.token_counts = [len(t) for t in call.texts]
        if variant is not None and variant.truncate_at is not None:  # cut silently, as Infinity does
            counts = self.encoder.count_tokens(call.texts)
            call.texts = [
                _cl100k_truncate(t, variant.truncate_at) if n > variant.truncate_at else t
                for t, n in zip(call.texts, counts, strict=True)
            ]
        result: EmbeddingResult = await proceed(call)
        result.headers.update(headers)
        with self._lock:
            self._answered += 1
            self._tokens_billed += call.prompt_tokens
            self._embedded.extend(call.texts)
            mode = self._corrupt.popleft() if self._corrupt else None
        if mode is None:
            return self._variant_shape(result)
        return self._corrupted(result, mode)

    def _variant_shape(self, result: EmbeddingResult) -> EmbeddingResult | Response:
        variant = self.variant
        if variant is None or not (variant.floats_only or variant.no_usage or variant.no_index or variant.extra_fields):
            return result
        payload = render_embeddings(result, encoding_format="float" if variant.floats_only else None)
        if variant.no_usage:
            payload.pop("usage", None)
        for item in payload["data"]:
            if variant.no_index:
                item.pop("index", None)
            if variant.extra_fields:
                item["extra_field"] = {"served_by": variant.name}
        if variant.extra_fields:
            payload["id"] = "embd-fake"
            payload["created"] = 0
            payload["system_fingerprint"] = None
        return JSONResponse(payload, headers=result.headers)

    def _corrupted(self, result: EmbeddingResult, mode: str) -> Response:
        headers = result.headers
        if mode == "wrong_dims":
            vectors = result.vectors
            if vectors.shape[1] > 1:
                vectors = vectors[:, :-1]
            else:
                vectors = np.concatenate([vectors, vectors], axis=1)
            return JSONResponse(render_embeddings(EmbeddingResult(result.call, vectors)), headers=headers)
        if mode == "nan":
            vectors = result.vectors.copy()
            vectors[0, 0] = np.nan
            payload = render_embeddings(EmbeddingResult(result.call, vectors))
            if result.call.encoding_format == "base64":
                return JSONResponse(payload, headers=headers)
            for item in payload["data"]:
                item["embedding"] = item["embedding"].tolist()
            # orjson would write null; a broken server writes the bare NaN token.
            return Response(json.dumps(payload), headers=headers, media_type="application/json")
        if mode == "floats_when_base64":
            return JSONResponse(render_embeddings(result, encoding_format="float"), headers=headers)
        payload = render_embeddings(result)
        data = payload["data"]
        if mode == "shuffle":
            order = list(range(len(data)))
            with self._lock:
                self._random.shuffle(order)
            if len(order) > 1 and order == sorted(order):
                order = order[1:] + order[:1]
            payload["data"] = [data[i] for i in order]
        elif mode == "short":
            payload["data"] = data[:-1]
        elif mode == "no_index":
            for item in data:
                del item["index"]
        return JSONResponse(payload, headers=headers)

    async def _tokenize_route(self, request: Request) -> Response:
        """The model's own tokenizer (cl100k here), in vLLM's shape (``{"model", "prompt"}`` ->
        ``{"count", "max_model_len", "tokens"}``) or TEI's (``{"inputs": str | [str]}`` -> one
        list of ``{"id", "text", "special", "start", "stop"}`` per input)."""
        if self.tokenize is None:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        if not self._authorized(request):
            return JSONResponse({"error": {"message": "Incorrect API key", "type": "invalid_request_error"}}, 401)
        body = orjson.loads(await request.body())
        from vectorfill.provider.tokens import Cl100k

        encoding = Cl100k()._enc
        if self.tokenize == "vllm":
            if not isinstance(body, dict) or not isinstance(body.get("prompt"), str) or "model" not in body:
                return _openai_error(400, "prompt: field required", "BadRequestError", 400)
            with self._lock:
                self._tokenize_requests += 1
            ids = encoding.encode_ordinary(body["prompt"])
            return JSONResponse({"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids})
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list):
            return JSONResponse({"error": "missing field `inputs`", "error_type": "Validation"}, status_code=422)
        with self._lock:
            self._tokenize_requests += 1
        answer = []
        for text in inputs:
            tokens, at = [], 0
            for token in encoding.encode_ordinary(text):
                piece = encoding.decode([token])
                tokens.append({"id": token, "text": piece, "special": False, "start": at, "stop": at + len(piece)})
                at += len(piece)
            answer.append(tokens)
        return JSONResponse(answer)

    async def _stats_route(self, request: Request) -> Response:
        return JSONResponse(self.stats())


# --------------------------------------------------------------------------- process


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the fake embeddings provider.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--dimensions", type=int, default=1536)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--rpm", type=int, default=None)
    parser.add_argument("--tpm", type=int, default=None)
    parser.add_argument("--model", default="fake-embed")
    parser.add_argument("--api-key-env", default=None, help="environment variable holding the key to require")
    args = parser.parse_args(argv)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            print(f"fake provider: ${args.api_key_env} is not set", file=sys.stderr)
            return 2
    provider = FakeProvider(
        args.dimensions,
        api_key=api_key,
        latency_s=args.latency_ms / 1000,
        rpm=args.rpm,
        tpm=args.tpm,
        model=args.model,
    )
    print(f"fake provider: http://{args.host}:{args.port}/v1 ({args.model}, {args.dimensions} dims)", flush=True)
    uvicorn.run(provider.app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _cl100k_truncate(text: str, tokens: int) -> str:
    """The first ``tokens`` cl100k tokens of ``text`` (what the fake model counts in)."""
    from vectorfill.provider.tokens import Cl100k

    return Cl100k().truncate(text, tokens)
