"""The embeddings client refuses a text with a lone surrogate as an input error, not a crash;
the text comes from a real Postgres row."""

from __future__ import annotations

import asyncio
import base64

import httpx
import numpy as np
import pytest
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


def test_a_lone_surrogate_is_a_clear_input_error_not_a_crash(fresh_db):
    from vectorfill.errors import InputError

    sent = []
    with pytest.raises(InputError, match=r"input #1 contains a lone UTF-16 surrogate") as info:
        run(lambda request: sent.append(request) or ok([[1.0], [1.0]]), texts=("fine", "bad \ud800 text"))
    assert info.value.row == 1 and not sent, "nothing is sent"
    # and the source can never hold one: Postgres refuses it (here through psycopg, which
    # cannot even encode it, and as an escape in SQL)
    import psycopg

    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, body text)")
        with pytest.raises(UnicodeEncodeError):
            conn.execute("INSERT INTO t VALUES (1, %s)", ("bad \ud800",))
        with pytest.raises(psycopg.errors.SyntaxError, match="invalid Unicode surrogate pair"):
            conn.execute("INSERT INTO t VALUES (1, U&'bad \\D800')")
