"""The embeddings client on ``httpx.MockTransport`` with a handler of the test's own, and a
scripted successful answer, shared by the client's unit and integration modules."""

from __future__ import annotations

import asyncio
import base64

import httpx
import numpy as np
from pydantic import SecretStr

from vectorfill.provider.client import EmbeddingsClient

KEY = "sk-unit-" + "x" * 20


def run(handler, texts=("a", "b"), **kw):
    async def go():
        async with EmbeddingsClient(
            base_url="http://p/v1", model="m", api_key=SecretStr(KEY), transport=httpx.MockTransport(handler), **kw
        ) as c:
            return await c.embed(list(texts))

    return asyncio.run(go())


def ok(vectors, *, b64=True, order=None, **extra):
    order = order or range(len(vectors))
    data = []
    for i in order:
        v = np.asarray(vectors[i], dtype="<f4")
        emb = base64.b64encode(v.tobytes()).decode() if b64 else v.tolist()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return httpx.Response(
        200,
        json={"object": "list", "data": data, "model": "m", "usage": {"prompt_tokens": 7, "total_tokens": 7}, **extra},
    )
