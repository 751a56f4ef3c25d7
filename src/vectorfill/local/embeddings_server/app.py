"""The ASGI app: OpenAI's embeddings contract in front of one or more encoders.

Routes::

    POST /v1/embeddings      OpenAI's request and response shapes, float or base64
    GET  /v1/models          the served models, in OpenAI's list shape
    GET  /v1/models/{id}     one model
    GET  /health             liveness, no auth

Every error is answered in OpenAI's shape, ``{"error": {"message", "type", "param",
"code"}}``, with the status OpenAI uses (400 bad request, 401 auth, 404 unknown model or
URL, 500 model failure). Inputs over the model's token limit are refused, never
truncated; the message names the input's index and its token count, and ``param`` is
``input[i]``.

A request goes through these stages, in order: read body → ``Interceptor.before`` →
auth → parse and validate → count tokens → ``Interceptor.around`` (wrapping encode) →
render. The interceptor is how the test-suite's fake provider adds faults, rate limits
and accounting without a second copy of the contract::

    app = create_app(HashEncoder(dimensions=384), api_key="sk-test")
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from vectorfill.local.embeddings_server.batcher import MicroBatcher
from vectorfill.local.embeddings_server.encoders import Encoder, truncate_vectors

__all__ = [
    "EmbeddingCall",
    "EmbeddingResult",
    "Interceptor",
    "JSONResponse",
    "create_app",
    "openai_error",
    "render_embeddings",
]

log = logging.getLogger("vectorfill.embeddings_server")

#: Requests whose texts add up to more characters than this count tokens in a thread.
_INLINE_COUNT_CHARS = 20_000
_KNOWN_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})


class JSONResponse(Response):
    """JSON rendered by orjson; numpy arrays are serialised natively."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def openai_error(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """An error response in OpenAI's shape."""
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


@dataclass
class EmbeddingCall:
    """One parsed and validated ``POST /v1/embeddings`` request."""

    encoder: Encoder
    texts: list[str]
    token_counts: list[int]
    encoding_format: str  # "float" or "base64"
    dimensions: int | None  # as requested; None means the model's own

    @property
    def model(self) -> str:
        return self.encoder.name

    @property
    def prompt_tokens(self) -> int:
        return sum(self.token_counts)


@dataclass
class EmbeddingResult:
    """The vectors for a call (already truncated to the requested dimensions)."""

    call: EmbeddingCall
    vectors: np.ndarray
    headers: dict[str, str] = field(default_factory=dict)


class Interceptor(Protocol):
    """Hooks around the contract, for fakes and instrumentation."""

    async def before(self, request: Request, body: bytes) -> Response | None:
        """Called first for every embeddings request; a response returned here is sent as is."""
        ...

    async def around(
        self,
        call: EmbeddingCall,
        proceed: Callable[[EmbeddingCall], Awaitable[EmbeddingResult]],
    ) -> EmbeddingResult | Response:
        """Wraps the encode step of a valid request; may answer with any response instead."""
        ...


def render_embeddings(result: EmbeddingResult, *, encoding_format: str | None = None) -> dict[str, Any]:
    """The response body for a result, in OpenAI's shape (numpy rows for orjson)."""
    fmt = encoding_format or result.call.encoding_format
    vectors = result.vectors
    if fmt == "base64":
        raw = vectors.astype("<f4", copy=False)
        b64 = base64.b64encode
        data = [
            {"object": "embedding", "index": i, "embedding": b64(row.tobytes()).decode("ascii")}
            for i, row in enumerate(raw)
        ]
    else:
        data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(vectors)]
    tokens = result.call.prompt_tokens
    return {
        "object": "list",
        "data": data,
        "model": result.call.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _is_token_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


class _EmbeddingsEndpoint:
    def __init__(
        self,
        encoders: dict[str, Encoder],
        *,
        api_key: str | None,
        max_inputs: int,
        max_request_tokens: int,
        max_batch: int,
        max_wait_s: float,
        interceptor: Interceptor | None,
    ) -> None:
        self.encoders = encoders
        self._api_key = api_key.encode() if api_key else None
        self.max_inputs = max_inputs
        self.max_request_tokens = max_request_tokens
        self.interceptor = interceptor
        self.batchers = {
            name: MicroBatcher(enc.encode, max_batch=max_batch, max_wait_s=max_wait_s, name=name)
            for name, enc in encoders.items()
        }

    # ------------------------------------------------------------------ auth

    def check_auth(self, request: Request) -> Response | None:
        if self._api_key is None:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return openai_error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        if not hmac.compare_digest(token.strip().encode(), self._api_key):
            return openai_error(
                401,
                "Incorrect API key provided. Check the key this server was started with.",
                code="invalid_api_key",
            )
        return None

    # ------------------------------------------------------------------ parsing

    def parse(self, raw: bytes) -> EmbeddingCall | Response:
        """Validate the body, short of counting tokens."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return openai_error(
                400,
                "We could not parse the JSON body of your request. The embeddings endpoint "
                'expects a JSON object such as {"model": ..., "input": ...}.',
            )
        if not isinstance(body, dict):
            return openai_error(400, f"The request body must be a JSON object, got {_type_name(body)}.")
        unknown = sorted(set(body) - _KNOWN_FIELDS)
        if unknown:
            return openai_error(400, f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
        model = body.get("model")
        if model is None:
            return openai_error(
                400, "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
            )
        if not isinstance(model, str):
            return openai_error(400, f"'model' must be a string, got {_type_name(model)}.", param="model")
        encoder = self.encoders.get(model)
        if encoder is None:
            return openai_error(
                404,
                f"The model `{model}` does not exist or you do not have access to it. "
                f"This server serves: {', '.join(sorted(self.encoders))}.",
                param="model",
                code="model_not_found",
            )
        if "input" not in body:
            return openai_error(
                400, "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
            )
        texts = self._parse_input(body["input"])
        if isinstance(texts, Response):
            return texts
        fmt = body.get("encoding_format")
        if fmt is None:
            fmt = "float"
        if fmt not in ("float", "base64"):
            return openai_error(
                400,
                f"Invalid value for 'encoding_format': {fmt!r}. Supported values are: 'float' and 'base64'.",
                param="encoding_format",
            )
        dims = body.get("dimensions")
        if dims is not None:
            if isinstance(dims, bool) or not isinstance(dims, int):
                return openai_error(
                    400, f"'dimensions' must be an integer, got {_type_name(dims)}.", param="dimensions"
                )
            if dims < 1:
                return openai_error(
                    400, f"Invalid value for 'dimensions' = {dims}. Must be at least 1.", param="dimensions"
                )
            if dims > encoder.dimensions:
                return openai_error(
                    400,
                    f"Invalid value for 'dimensions' = {dims}. Must be less than or equal to "
                    f"{encoder.dimensions} for model {encoder.name}.",
                    param="dimensions",
                )
        return EmbeddingCall(encoder, texts, [], fmt, dims)

    def _parse_input(self, value: object) -> list[str] | Response:
        texts: list[object]
        if isinstance(value, str):
            texts = [value]
        elif isinstance(value, int) and not isinstance(value, bool):
            texts = [value]  # a lone token id: refused below with the token-array message
        elif isinstance(value, list):
            if not value:
                return openai_error(400, "'input' must not be an empty array.", param="input")
            texts = value
        else:
            return openai_error(
                400, f"'input' must be a string or an array of strings, got {_type_name(value)}.", param="input"
            )
        if len(texts) > self.max_inputs:
            return openai_error(
                400,
                f"Too many inputs: {len(texts)}. The max number of inputs is {self.max_inputs}. "
                "Split them into smaller requests.",
                param="input",
            )
        for i, text in enumerate(texts):
            if isinstance(text, str):
                if not text:
                    return openai_error(
                        400,
                        f"input[{i}] is an empty string; every input must contain at least one token.",
                        param=f"input[{i}]",
                    )
                continue
            if _is_token_id(text) or (isinstance(text, list) and all(map(_is_token_id, text))):
                return openai_error(
                    400,
                    "Token arrays are not supported by this server: send 'input' as a string or an "
                    f"array of strings (input[{i}] is {'a token id' if isinstance(text, int) else 'a list of token ids'}).",
                    param="input",
                    code="token_input_unsupported",
                )
            return openai_error(400, f"input[{i}] must be a string, got {_type_name(text)}.", param=f"input[{i}]")
        return cast("list[str]", texts)  # every item was checked to be a string above

    async def count_tokens(self, call: EmbeddingCall) -> Response | None:
        encoder = call.encoder
        if sum(map(len, call.texts)) > _INLINE_COUNT_CHARS:
            counts = await run_in_threadpool(encoder.count_tokens, call.texts)
        else:
            counts = encoder.count_tokens(call.texts)
        call.token_counts = counts
        for i, n in enumerate(counts):
            if n > encoder.max_tokens:
                return openai_error(
                    400,
                    f"This model's maximum context length is {encoder.max_tokens} tokens, however "
                    f"input[{i}] has {n} tokens. Shorten that input; this server never truncates.",
                    param=f"input[{i}]",
                    code="context_length_exceeded",
                )
        total = sum(counts)
        if total > self.max_request_tokens:
            return openai_error(
                400,
                f"Requested {total} tokens, max {self.max_request_tokens} tokens per request. "
                "Send fewer inputs per request.",
                param="input",
                code="max_tokens_per_request",
            )
        return None

    # ------------------------------------------------------------------ handling

    async def proceed(self, call: EmbeddingCall) -> EmbeddingResult:
        vectors = await self.batchers[call.encoder.name].embed(call.texts)
        if call.dimensions is not None and call.dimensions < vectors.shape[1]:
            vectors = truncate_vectors(vectors, call.dimensions)
        return EmbeddingResult(call, vectors)

    async def embeddings(self, request: Request) -> Response:
        started = time.perf_counter()
        raw = await request.body()
        if self.interceptor is not None:
            early = await self.interceptor.before(request, raw)
            if early is not None:
                return early
        denied = self.check_auth(request)
        if denied is not None:
            return denied
        call = self.parse(raw)
        if isinstance(call, Response):
            return call
        refused = await self.count_tokens(call)
        if refused is not None:
            return refused
        if self.interceptor is not None:
            outcome = await self.interceptor.around(call, self.proceed)
            if isinstance(outcome, Response):
                return outcome
        else:
            outcome = await self.proceed(call)
        headers = {
            "openai-model": call.model,
            "openai-processing-ms": str(int((time.perf_counter() - started) * 1000)),
            "x-request-id": uuid.uuid4().hex,
            **outcome.headers,
        }
        return JSONResponse(render_embeddings(outcome), headers=headers)

    async def models(self, request: Request) -> Response:
        denied = self.check_auth(request)
        if denied is not None:
            return denied
        return JSONResponse({"object": "list", "data": [_model_card(e) for e in self.encoders.values()]})

    async def model(self, request: Request) -> Response:
        denied = self.check_auth(request)
        if denied is not None:
            return denied
        name = request.path_params["model"]
        encoder = self.encoders.get(name)
        if encoder is None:
            return openai_error(
                404,
                f"The model `{name}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return JSONResponse(_model_card(encoder))

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": sorted(self.encoders)})

    async def aclose(self) -> None:
        for batcher in self.batchers.values():
            await batcher.aclose()


def _model_card(encoder: Encoder) -> dict[str, Any]:
    return {
        "id": encoder.name,
        "object": "model",
        "created": 0,
        "owned_by": "vectorfill",
        "dimensions": encoder.dimensions,
        "max_tokens": encoder.max_tokens,
    }


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return openai_error(exc.status_code, message, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("embeddings request failed", exc_info=exc)
    return openai_error(
        500,
        "The server had an error while processing your request.",
        type="server_error",
    )


def create_app(
    encoders: Encoder | Sequence[Encoder],
    *,
    api_key: str | None = None,
    max_inputs: int = 2048,
    max_request_tokens: int = 300_000,
    max_batch: int = 128,
    max_wait_ms: float = 2.0,
    interceptor: Interceptor | None = None,
    routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """An ASGI app serving ``encoders`` under OpenAI's embeddings contract.

    ``api_key``: when set, every ``/v1`` request needs ``Authorization: Bearer <key>``.
    ``max_inputs`` / ``max_request_tokens``: per-request limits (OpenAI's are 2048 / 300k).
    ``max_batch`` / ``max_wait_ms``: how the micro-batcher packs concurrent requests.
    ``interceptor``: hooks for fakes (see ``Interceptor``). ``routes``: extra routes.
    """
    listed = [encoders] if isinstance(encoders, Encoder) else list(encoders)
    if not listed:
        raise ValueError("create_app needs at least one encoder")
    by_name = {e.name: e for e in listed}
    if len(by_name) != len(listed):
        raise ValueError("two encoders share a name")
    endpoint = _EmbeddingsEndpoint(
        by_name,
        api_key=api_key,
        max_inputs=max_inputs,
        max_request_tokens=max_request_tokens,
        max_batch=max_batch,
        max_wait_s=max_wait_ms / 1000,
        interceptor=interceptor,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await endpoint.aclose()

    return Starlette(
        routes=[
            Route("/v1/embeddings", endpoint.embeddings, methods=["POST"]),
            Route("/v1/models", endpoint.models, methods=["GET"]),
            Route("/v1/models/{model:path}", endpoint.model, methods=["GET"]),
            Route("/health", endpoint.health, methods=["GET"]),
            *routes,
        ],
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
        lifespan=lifespan,
    )
