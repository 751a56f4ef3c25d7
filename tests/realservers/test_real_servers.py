"""vectorfill against real servers, installed from PyPI into their own virtualenvs
(``real_servers.py``): LiteLLM's proxy in front of ``vectorfill serve-embeddings``, and
Infinity serving MiniLM. Each is driven end to end through the ``vectorfill`` command, as a
user would: ``job create`` (with its check), backfill, edits, rows longer than the model's
256-token limit, ``search``, and an independent check of stored vectors against the server's
own answer for the stored text."""

from __future__ import annotations

import json
import os
import random
import re

import httpx
import numpy as np
import pytest
from psycopg import sql

from cli_helpers import user_env, vf
from real_servers import INFINITY_MODEL, LITELLM_MODEL, minilm_dir, start_infinity, start_litellm, start_local_minilm
from vectorfill.storage.db import connect, migrate

pytestmark = [pytest.mark.realservers, pytest.mark.slow, pytest.mark.xdist_group("realservers")]

MASTER_KEY = "sk-proxy-master-" + "m4st" * 6
UPSTREAM_KEY = "sk-upstream-" + "up" * 10
FIGURES = os.environ.get("VECTORFILL_REALSERVERS_FIGURES")  # where to append what was measured, if set

SHORT = [
    "The quick brown fox jumps over the lazy dog.",
    "日本語のテキストも埋め込みます。東京は日本の首都です。",
    "مرحبا بالعالم، هذا نص عربي قصير.",
    "emoji 🎉🚀 and a family 👨‍👩‍👧 in one line",
    "windows\r\nline endings\r\nin three lines",
    "Postgres keeps the text; pgvector keeps the vectors.",
]
LONG_ROWS = (901, 902, 903)


def minilm_tokenizer():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def long_text(seed: int) -> str:
    """About 3,650 MiniLM tokens of plain English (20 KB)."""
    rng = random.Random(seed)
    words = [
        "vector",
        "database",
        "embedding",
        "model",
        "token",
        "server",
        "request",
        "batch",
        "limit",
        "queue",
        "postgres",
        "text",
    ]
    sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))).capitalize() + "." for _ in range(250)]
    return " ".join(sentences)


def make_table(db_url: str) -> None:
    with connect(db_url) as conn:
        conn.execute("CREATE TABLE articles (id int PRIMARY KEY, body text)")
        rows = [(i, f"article {i}: {SHORT[i % len(SHORT)]} (number {i})") for i in range(1, 61)]
        rows += [(61, None), (62, ""), (63, "   ")]
        rows += [(i, long_text(i)) for i in LONG_ROWS]
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO articles VALUES (%s, %s)", rows)


def failed_rows(db_url: str) -> list[int]:
    with connect(db_url) as conn:
        return [int(r[0]) for r in conn.execute("SELECT row_key->>0 FROM vectorfill.failures").fetchall()]


def stored(db_url: str) -> dict[int, tuple[str, np.ndarray]]:
    with connect(db_url) as conn:
        rows = conn.execute(
            sql.SQL("SELECT id, chunk, embedding FROM {}").format(sql.Identifier("vectorfill", "docs"))
        ).fetchall()
    return {r[0]: (r[1], np.asarray(r[2].to_numpy(), dtype=np.float64)) for r in rows}


def server_vectors(url: str, model: str, key: str | None, texts: list[str]) -> np.ndarray:
    """The server's own answer for ``texts`` (floats, one request per text)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    out = []
    for text in texts:
        r = httpx.post(
            f"{url}/embeddings",
            json={"model": model, "input": [text], "encoding_format": "float"},
            headers=headers,
            timeout=120,
        )
        r.raise_for_status()
        out.append(r.json()["data"][0]["embedding"])
    return np.asarray(out, dtype=np.float64)


def assert_vectors_match(db_url: str, url: str, model: str, key: str | None, ids: list[int]) -> float:
    """Each stored vector of ``ids`` equals the server's embedding of the stored text
    (cosine >= 0.99999); returns the lowest cosine."""
    rows = stored(db_url)
    texts = [rows[i][0] for i in ids]
    mine = np.stack([rows[i][1] for i in ids])
    theirs = server_vectors(url, model, key, texts)
    cos = (mine * theirs).sum(1) / np.linalg.norm(mine, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cos.min() >= 0.99999, dict(zip(ids, cos.round(6).tolist(), strict=True))
    return float(cos.min())


def record(name: str, figures: dict) -> None:
    if FIGURES:
        with open(FIGURES, "a") as f:
            f.write(json.dumps({"server": name, **figures}) + "\n")


def run_scenario(name: str, env: dict, db_url: str, url: str, model: str, key: str | None, server) -> dict:
    """The user's session: create, backfill, verify, edit, backfill, verify, search."""
    figures: dict = {}
    before = len(server.statuses())
    migrate(db_url)
    make_table(db_url)
    created = vf("job", "create", "docs", "--table", "articles", "--text", "body", "--model", model,
                 "--base-url", url, *(["--api-key-env", "VF_KEY"] if key else []), env=env)  # fmt: skip
    figures["create"] = created.stdout + created.stderr
    first = vf("backfill", "docs", env=env, check=False)
    figures["backfill"] = first.stdout + first.stderr
    # exit 3: the run went through its queue but rows failed: the NULL, empty and blank ones
    assert first.returncode == 3, figures["backfill"]
    assert sorted(failed_rows(db_url)) == [61, 62, 63], failed_rows(db_url)
    statuses = server.statuses()[before:]
    for figure in ("tokens", "tokens estimated", "truncated", "maybe truncated"):
        found = re.search(rf"│ {figure}\s*│\s*([\d,]+)", figures["backfill"])
        figures[figure.replace(" ", "_")] = int(found.group(1).replace(",", "")) if found else None
    figures["requests"] = len(statuses)
    figures["not_found"] = statuses.count(404)  # a base URL's other form tried at create
    figures["refused"] = sum(1 for s in statuses if s not in (200, 404))
    rows = stored(db_url)
    assert set(rows) == set(range(1, 61)) | set(LONG_ROWS), sorted(set(rows) ^ (set(range(1, 61)) | set(LONG_ROWS)))
    tok = minilm_tokenizer()
    long_tokens = {i: len(tok.encode(long_text(i)).ids) for i in LONG_ROWS}
    assert all(3400 <= n <= 3900 for n in long_tokens.values()), long_tokens
    figures["long_tokens"] = long_tokens
    figures["long_stored_tokens"] = {i: len(tok.encode(rows[i][0]).ids) for i in LONG_ROWS}
    url = url.removesuffix("/v1") if server.url == url.removesuffix("/v1") and "infinity" in name else url
    sample = random.Random(7).sample(range(1, 61), 17) + list(LONG_ROWS)
    figures["min_cosine"] = assert_vectors_match(db_url, url, model, key, sample)

    # edits, and two more long rows: what was learnt about the endpoint holds in the next run
    before = len(server.statuses())
    with connect(db_url) as conn:
        conn.execute("UPDATE articles SET body = body || ' (edited)' WHERE id IN (2, 3, 5, 8, 13)")
        conn.execute("UPDATE articles SET body = 'now it has text' WHERE id = 61")
        conn.execute("INSERT INTO articles VALUES (904, %s), (905, %s)", (long_text(904), long_text(905)))
    second = vf("backfill", "docs", env=env)  # rows 62 and 63 stay failed (not queued again): exit 0
    figures["second_backfill"] = second.stdout + second.stderr
    statuses = server.statuses()[before:]
    figures["second_requests"], figures["second_refused"] = len(statuses), sum(1 for s in statuses if s != 200)
    rows = stored(db_url)
    assert rows[61][0] == "now it has text" and rows[13][0].endswith("(edited)")
    figures["long_stored_tokens"].update({i: len(tok.encode(rows[i][0]).ids) for i in (904, 905)})
    assert_vectors_match(db_url, url, model, key, [2, 3, 5, 8, 13, 61, 904, 905])

    found = vf("search", "docs", "日本の首都は東京です", "-k", "3", env=env)
    assert "東京" in found.stdout, found.stdout  # the nearest rows are the Japanese ones
    record(name, {k: v for k, v in figures.items() if k not in ("create", "backfill", "second_backfill")})
    # every long row is cut to the model's 256 tokens by vectorfill (the stored text is what
    # was embedded: checked above against the server's own vectors)
    assert all(n <= 256 for n in figures["long_stored_tokens"].values()), figures["long_stored_tokens"]
    return figures


@pytest.fixture
def minilm_upstream(tmp_path):
    env = dict(os.environ, UPSTREAM_KEY=UPSTREAM_KEY)
    server = start_local_minilm(tmp_path, "UPSTREAM_KEY", env)
    yield server
    server.stop()


@pytest.fixture
def litellm(minilm_upstream, tmp_path):
    proxy = start_litellm(tmp_path, minilm_upstream.url, UPSTREAM_KEY, MASTER_KEY)
    yield proxy
    proxy.stop()


@pytest.fixture
def infinity(tmp_path):
    server = start_infinity(tmp_path)
    yield server
    server.stop()


def test_litellm_proxy_end_to_end(litellm, fresh_db, tmp_path, local_prefect_home):
    env = user_env(fresh_db, tmp_path, local_prefect_home) | {"VF_KEY": MASTER_KEY}
    figures = run_scenario("litellm", env, fresh_db, f"{litellm.url}/v1", LITELLM_MODEL, MASTER_KEY, litellm)
    assert "endpoint check passed" in figures["create"], figures["create"]
    # no tokenizer is known for the alias `minilm`: the first long input is refused, the limit
    # it names (256) is learnt, and the long inputs are cut to it; none is refused after
    assert figures["refused"] == 1, figures
    assert figures["second_refused"] == 0, figures
    # the refusal named the server's count of the long input: the estimate is calibrated by it,
    # so the long rows keep most of the 256 tokens (by bytes/3 alone: 146-164); one English text's
    # tokens per byte differ from another's by up to ~6% here, hence the margin
    assert all(n >= 0.85 * 256 for n in figures["long_stored_tokens"].values()), figures["long_stored_tokens"]
    with connect(fresh_db) as conn:
        assert conn.execute("SELECT max_input_tokens FROM vectorfill.endpoint_caps").fetchone() == (256,)


def test_litellm_proxy_wrong_key_and_model(litellm, fresh_db, tmp_path, local_prefect_home):
    env = user_env(fresh_db, tmp_path, local_prefect_home) | {"VF_KEY": "sk-not-the-master-key"}
    migrate(fresh_db)
    make_table(fresh_db)
    url = f"{litellm.url}/v1"
    create = ["job", "create", "docs", "--table", "articles", "--text", "body", "--model", LITELLM_MODEL]
    wrong = vf(*create, "--base-url", url, "--api-key-env", "VF_KEY", env=env, check=False)
    said = wrong.stdout + wrong.stderr
    assert wrong.returncode != 0
    # LiteLLM without a database answers a wrong key with 400 "No connected db.": vectorfill
    # says it is the key, names the job and the setting
    assert "No connected db" in said and "API key" in said and "$VF_KEY" in said and "docs" in said, said

    missing = vf(*create, "--base-url", url, env=env, check=False)  # no key at all: LiteLLM answers 500
    said = missing.stdout + missing.stderr
    assert missing.returncode != 0
    assert "API key" in said and "--api-key-env" in said and "docs" in said, said

    env["VF_KEY"] = MASTER_KEY
    model = vf(*create[:-1], "no-such-model", "--base-url", url, "--api-key-env", "VF_KEY", env=env, check=False)
    said = model.stdout + model.stderr
    assert model.returncode != 0
    assert "no-such-model" in said and "--model" in said, said


def test_infinity_end_to_end(infinity, fresh_db, tmp_path, local_prefect_home):
    env = user_env(fresh_db, tmp_path, local_prefect_home)
    # given with /v1 as for most servers: Infinity serves /embeddings at its root, and the
    # check finds it there and says so
    figures = run_scenario("infinity", env, fresh_db, f"{infinity.url}/v1", INFINITY_MODEL, None, infinity)
    assert f"{infinity.url}/embeddings answers: {infinity.url} is used" in figures["create"], figures["create"]
    assert "base64 asked, floats answered" not in figures["create"]  # 0.0.78 answers base64 as asked
    # its usage counts characters: not believed, tokens counted here and marked estimated
    assert "not tokens" in figures["create"], figures["create"]
    assert re.search(r"tokens estimated\s*│\s*[1-9]", figures["backfill"]), figures["backfill"]
    # the model's tokenizer and limit are known here (the bundled MiniLM under its HF id): the
    # long rows are cut to 256 tokens by vectorfill, none is left to the server to cut silently
    assert re.search(r"truncated\s*│\s*3\b", figures["backfill"]), figures["backfill"]
    assert figures["refused"] == 0 and figures["second_refused"] == 0 and figures["not_found"] == 1
