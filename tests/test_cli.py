"""The `vectorfill` command as a user runs it: separate processes, real Prefect, real Postgres."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import API_KEY
from vectorfill.storage.db import connect


def vf(*args, env=None, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "vectorfill.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"vectorfill {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def user_env(db_url: str, tmp_path) -> dict:
    """The environment of a user's shell: the database, the key in VF_KEY, state in tmp_path."""
    env = dict(os.environ)
    env.update(
        VECTORFILL_DATABASE_URL=db_url,
        VF_KEY=API_KEY,
        PREFECT_HOME=str(tmp_path / "prefect"),
        VECTORFILL_HOME=str(tmp_path / "home"),
    )
    env.pop("PREFECT_API_URL", None)
    return env


@pytest.fixture
def cli_env(fresh_db, provider, tmp_path):
    env = user_env(fresh_db, tmp_path)
    with connect(fresh_db) as conn:
        conn.execute("CREATE TABLE articles (id int PRIMARY KEY, title text, body text)")
        conn.execute("INSERT INTO articles SELECT g, 'T' || g, 'B' || g FROM generate_series(1, 300) g")
    return env


def test_migrate_create_backfill_status_through_the_cli(cli_env, provider):
    vf("migrate", env=cli_env)
    out = vf(
        "job",
        "create",
        "docs",
        "--table",
        "public.articles",
        "--template",
        "{title}\\n\\n{body}",
        "--model",
        "fake-embed",
        "--base-url",
        provider.base_url,
        "--api-key-env",
        "VF_KEY",
        "--max-inputs",
        "50",
        env=cli_env,
    ).stdout
    assert "300 rows of public.articles queued" in out
    summary = json.loads(vf("backfill", "docs", "--json", env=cli_env).stdout)
    assert summary["embedded"] == 300 and summary["pending"] == 0 and summary["requests"] == 6
    status = json.loads(vf("status", "docs", "--json", env=cli_env).stdout)
    assert status["total"] == status["embedded"] == 300
    assert status["target"] == "vectorfill.docs"
    assert "T1\n\nB1" in provider.inputs, "the \\n in --template is a newline"
    again = json.loads(vf("backfill", "docs", "--json", env=cli_env).stdout)
    assert again["embedded"] == 0 and provider.requests == 6


def test_errors_are_one_clear_line_and_exit_1(cli_env, provider):
    vf("migrate", env=cli_env)
    proc = vf(
        "job",
        "create",
        "docs",
        "--table",
        "public.nope",
        "--text",
        "body",
        "--model",
        "m",
        "--base-url",
        provider.base_url,
        env=cli_env,
        check=False,
    )
    assert proc.returncode == 1
    assert "job 'docs': source table public.nope does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = vf("status", "ghost", env=cli_env, check=False)
    assert proc.returncode == 1 and "no job named 'ghost'" in proc.stderr


def test_a_missing_api_key_variable_is_named(cli_env, provider):
    vf("migrate", env=cli_env)
    vf(
        "job",
        "create",
        "docs",
        "--table",
        "articles",
        "--text",
        "body",
        "--model",
        "fake-embed",
        "--base-url",
        provider.base_url,
        "--api-key-env",
        "NOT_SET_ANYWHERE",
        env=cli_env,
    )
    proc = vf("backfill", "docs", env=cli_env, check=False)
    assert proc.returncode == 1
    assert "NOT_SET_ANYWHERE is not set" in proc.stderr
    assert provider.requests == 0


def test_model_change_commands_through_the_cli(cli_env, provider):
    vf("migrate", env=cli_env)
    vf(
        "job",
        "create",
        "docs",
        "--table",
        "articles",
        "--text",
        "body",
        "--model",
        "fake-embed",
        "--base-url",
        provider.base_url,
        "--api-key-env",
        "VF_KEY",
        "--price",
        "fake-embed=2.5",
        env=cli_env,
    )
    est = json.loads(vf("estimate", "docs", "--json", env=cli_env).stdout)
    assert est[0]["rows"] == 300 and est[0]["price_per_million"] == 2.5 and provider.requests == 0
    summary = json.loads(vf("backfill", "docs", "--json", env=cli_env).stdout)
    assert summary["tokens"] == est[0]["tokens"] == provider.tokens_billed
    assert summary["cost_usd"] == pytest.approx(summary["tokens"] * 2.5 / 1e6)

    reembed = json.loads(vf("estimate", "docs", "--model", "text-embedding-3-large", "--json", env=cli_env).stdout)
    assert reembed[0]["rows"] == 300 and reembed[0]["version"] is None

    out = vf("job", "set-model", "docs", "--model", "text-embedding-3-large", env=cli_env).stdout
    assert "version 2 (text-embedding-3-large) is filling, 300 rows queued" in out
    assert "vectorfill estimate docs" in out, "no Prefect server here: the next step is spelled out"
    assert "re-embed: v2 (text-embedding-3-large) filling, 0 of 300 done" in vf("status", "docs", env=cli_env).stdout
    vf("job", "pause", "docs", env=cli_env)
    listed = json.loads(vf("job", "versions", "docs", "--json", env=cli_env).stdout)
    assert [(v["version"], v["state"], v["dimensions"]) for v in listed] == [(1, "active", 32), (2, "paused", 3072)]
    proc = vf("job", "switch", "docs", env=cli_env, check=False)
    assert proc.returncode == 1 and "not complete: 300 rows still queued" in proc.stderr
    vf("job", "abandon", "docs", env=cli_env)
    listed = json.loads(vf("job", "versions", "docs", "--json", env=cli_env).stdout)
    assert [v["state"] for v in listed] == ["active"]
    proc = vf(
        "job",
        "create",
        "x",
        "--table",
        "articles",
        "--text",
        "body",
        "--model",
        "m",
        "--base-url",
        provider.base_url,
        "--price",
        "m:1",
        env=cli_env,
        check=False,
    )
    assert proc.returncode == 1 and "write MODEL=USD_PER_MILLION_TOKENS" in proc.stderr


def test_chunked_job_search_per_row_and_index_refusal_through_the_cli(cli_env, provider):
    vf("migrate", env=cli_env)
    with connect(cli_env["VECTORFILL_DATABASE_URL"]) as conn:
        conn.execute("UPDATE articles SET body = repeat('Some words of a paragraph. ', 40) || E'\\n\\n' || body")
    common = ["--table", "public.articles", "--text", "body", "--base-url", provider.base_url, "--api-key-env"]
    vf("job", "create", "docs", *common, "VF_KEY", "--model", "fake-embed", "--chunker", "recursive",
       "--chunk-size", "64", env=cli_env)  # fmt: skip
    vf("backfill", "docs", env=cli_env)
    with connect(cli_env["VECTORFILL_DATABASE_URL"]) as conn:
        per_row = conn.execute("SELECT count(*) / count(DISTINCT id)::float FROM vectorfill.docs").fetchone()[0]
        target = conn.execute("SELECT chunk FROM vectorfill.docs WHERE id = 5 ORDER BY chunk_seq DESC").fetchone()[0]
    assert per_row > 1
    out = vf("search", "docs", target, "-k", "3", "--per-row", env=cli_env).stdout
    assert "chunk" in out  # the table has the chunk column
    assert " 5 " in out.splitlines()[3] or "│ 5 " in out
    # 2,500 dims stored as float32 vector: refused before it starts, in one line, exit 1
    vf("job", "create", "wide", *common, "VF_KEY", "--model", "fake-embed", "--dimensions", "2500",
       "--storage", "vector", env=cli_env)  # fmt: skip
    proc = vf("index", "wide", env=cli_env, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "at most 2,000 dimensions; store them as halfvec" in proc.stderr
