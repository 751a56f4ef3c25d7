"""An embeddings endpoint in this process: the client on ``httpx.MockTransport``, answering
with scripted responses, or with the very bodies the fake provider sends as another server
(``fake_provider.VARIANTS``), so that unit tests and the fake agree on what servers say."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import orjson
from pydantic import SecretStr

from vectorfill.provider.client import EmbeddingsClient

KEY = "sk-unit-" + "q" * 24

Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler, **kw: Any) -> EmbeddingsClient:
    kw.setdefault("api_key", SecretStr(KEY))
    return EmbeddingsClient(base_url="http://endpoint.test/v1", model="m", transport=httpx.MockTransport(handler), **kw)


def run(coro):
    return asyncio.run(coro)


def embed(handler: Handler, texts: list[str] | tuple[str, ...] = ("a", "b"), **kw: Any):
    async def go():
        async with client(handler, **kw) as c:
            return await c.embed(list(texts))

    return run(go())


def body(request: httpx.Request) -> dict:
    return orjson.loads(request.content)


def vectors_for(request: httpx.Request, dims: int = 4) -> np.ndarray:
    """One distinct vector per input of ``request``: input i's vector is all i+1."""
    n = len(body(request)["input"])
    return np.repeat(np.arange(1, n + 1, dtype="<f4")[:, None], dims, axis=1)


def answer(request: httpx.Request, dims: int = 4) -> httpx.Response:
    """What OpenAI answers: every input's vector, in the encoding and of the dimensions the
    request asked for (``dims``, the model's own size, when it asked for none)."""
    as_base64 = body(request).get("encoding_format") == "base64"
    dims = body(request).get("dimensions") or dims
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(v.tobytes()).decode() if as_base64 else v.tolist(),
        }
        for i, v in enumerate(vectors_for(request, dims))
    ]
    return httpx.Response(200, json={"object": "list", "data": data, "model": "m", "usage": {"prompt_tokens": 3}})


def from_fake(response: Any) -> httpx.Response:
    """A Starlette response built by the fake provider, as httpx would receive it."""
    return httpx.Response(response.status_code, content=response.body, headers=dict(response.headers))


def openai_error(
    status: int, message: str, *, type_: str | None = "invalid_request_error", code=None, param=None, headers=None
):
    return httpx.Response(
        status,
        headers=headers or {},
        json={"error": {"message": message, "type": type_, "param": param, "code": code}},
    )
