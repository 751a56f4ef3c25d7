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
* ``hang_next(n, seconds)``: wait that long before answering normally (client timeouts);
* ``corrupt_next(n, mode)``: damage the next ``n`` successful responses, ``mode`` one of
  ``CORRUPT_MODES``;
* ``fail_when(predicate, status=400)``: every request with an input matching the
  predicate is refused, until ``clear_faults()``.

``fail_next`` and ``hang_next`` share one queue consumed in request arrival order, so
``fail_next(1); hang_next(1)`` fails the first request and delays the second.

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

from fake_batches import FakeBatches
from vectorfill.local.embeddings_server import HashEncoder, ServerThread, create_app, expected_vector
from vectorfill.local.embeddings_server.app import (
    EmbeddingCall,
    EmbeddingResult,
    JSONResponse,
    openai_error,
    render_embeddings,
)

__all__ = ["CORRUPT_MODES", "FakeProvider", "RateLimiter", "format_duration", "wait_until_healthy"]

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
            routes=[Route("/_fake/stats", self._stats_route, methods=["GET"]), *self.batch_api.routes()],
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

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ accounting

    def _zero(self) -> None:
        self._requests = 0
        self._batches: list[list[str]] = []
        self._embedded: list[str] = []
        self._tokens_billed = 0
        self._rate_limited = 0

    @property
    def requests(self) -> int:
        """Embeddings requests received, whatever they were answered with."""
        with self._lock:
            return self._requests

    @property
    def batches(self) -> list[list[str]]:
        """The inputs of each request received, in arrival order (unparseable ones as [])."""
        with self._lock:
            return [list(b) for b in self._batches]

    @property
    def inputs(self) -> list[str]:
        """Every input text received, in order, including those of refused requests."""
        with self._lock:
            return [text for batch in self._batches for text in batch]

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
    def rate_limited(self) -> int:
        """Number of 429 responses sent (rate limits and scripted 429s)."""
        with self._lock:
            return self._rate_limited

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "requests": self._requests,
                "inputs": sum(map(len, self._batches)),
                "embedded": len(self._embedded),
                "tokens_billed": self._tokens_billed,
                "rate_limited": self._rate_limited,
            }

    def reset(self) -> None:
        """Zero the counters and drop every scripted fault."""
        with self._lock:
            self._zero()
        self.clear_faults()

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
        """Wait ``seconds`` before answering each of the next ``n`` requests."""
        with self._lock:
            for _ in range(n):
                self._scripted.append(_Scripted("hang", seconds=seconds))

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

    async def before(self, request: Request, body: bytes) -> Response | None:
        texts: list[str] = []
        try:
            value = orjson.loads(body).get("input")
            texts = [value] if isinstance(value, str) else [t for t in value if isinstance(t, str)]
        except Exception:  # unparseable bodies are the server's business
            pass
        with self._lock:
            self._requests += 1
            self._batches.append(texts)
            action = self._scripted.popleft() if self._scripted else None
            if action is not None and action.kind == "fail" and action.status == 429:
                self._rate_limited += 1
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        if action is None:
            return None
        if action.kind == "hang":
            await asyncio.sleep(action.seconds)
            return None
        return _response(action.status, action.body, action.headers)

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
        result: EmbeddingResult = await proceed(call)
        result.headers.update(headers)
        with self._lock:
            self._tokens_billed += call.prompt_tokens
            self._embedded.extend(call.texts)
            mode = self._corrupt.popleft() if self._corrupt else None
        if mode is None:
            return result
        return self._corrupted(result, mode)

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
