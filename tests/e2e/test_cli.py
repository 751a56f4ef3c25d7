"""The `vectorfill` command as a user runs it: separate processes, real Prefect, real Postgres."""

from __future__ import annotations

import json
import time

import pytest

from cli_helpers import create_docs_job, user_env, vf
from vectorfill.storage.db import connect


@pytest.fixture
def cli_env(fresh_db, provider, tmp_path, local_prefect_home):
    """A user's shell on a fresh database; the session's local Prefect server (started once,
    stopped at the end of the session: see conftest) serves its runs."""
    env = user_env(fresh_db, tmp_path, local_prefect_home)
    with connect(fresh_db) as conn:
        conn.execute("CREATE TABLE articles (id int PRIMARY KEY, title text, body text)")
        conn.execute("INSERT INTO articles SELECT g, 'T' || g, 'B' || g FROM generate_series(1, 300) g")
    return env


@pytest.mark.slow
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
    checked = provider.requests
    assert checked == 1, "job create checked the endpoint with one request"
    summary = json.loads(vf("backfill", "docs", "--json", env=cli_env).stdout)
    assert summary["embedded"] == 300 and summary["pending"] == 0 and summary["requests"] == 6
    status = json.loads(vf("status", "docs", "--json", env=cli_env).stdout)
    assert status["total"] == status["embedded"] == 300
    assert status["target"] == "vectorfill.docs"
    assert "T1\n\nB1" in provider.inputs, "the \\n in --template is a newline"
    again = json.loads(vf("backfill", "docs", "--json", env=cli_env).stdout)
    assert again["embedded"] == 0 and provider.requests == 6 + checked


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


@pytest.mark.slow
def test_a_missing_api_key_variable_is_named(cli_env, provider):
    vf("migrate", env=cli_env)
    create_docs_job(cli_env, provider.base_url, key_env="NOT_SET_ANYWHERE")
    proc = vf("backfill", "docs", env=cli_env, check=False)
    assert proc.returncode == 1
    assert "NOT_SET_ANYWHERE is not set" in proc.stderr
    assert provider.requests == 0


@pytest.mark.slow
def test_model_change_commands_through_the_cli(cli_env, provider):
    vf("migrate", env=cli_env)
    create_docs_job(cli_env, provider.base_url, "--price", "fake-embed=2.5")
    est = json.loads(vf("estimate", "docs", "--json", env=cli_env).stdout)
    assert est[0]["rows"] == 300 and est[0]["price_per_million"] == 2.5
    assert provider.requests == 1, "only job create's check: the estimate sends nothing"
    billed_by_check = provider.tokens_billed
    summary = json.loads(vf("backfill", "docs", "--json", env=cli_env).stdout)
    assert summary["tokens"] == est[0]["tokens"] == provider.tokens_billed - billed_by_check
    assert summary["cost_usd"] == pytest.approx(summary["tokens"] * 2.5 / 1e6)

    reembed = json.loads(vf("estimate", "docs", "--model", "text-embedding-3-large", "--json", env=cli_env).stdout)
    assert reembed[0]["rows"] == 300 and reembed[0]["version"] is None

    # the fake serves no text-embedding-3-large: the version is made without the check
    out = vf("job", "set-model", "docs", "--model", "text-embedding-3-large", "--no-check", env=cli_env).stdout
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


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["backfill", "docs", "--bogus"], "No such option: --bogus"),
        (["backfill"], "Missing argument"),
        (["nosuch"], "No such command 'nosuch'"),
        (["backfill", "docs", "--max-rows", "abc"], "Invalid value for '--max-rows'"),
    ],
)
def test_usage_mistakes_print_the_usage_line_and_one_sentence_and_exit_2(args, says, tmp_path):
    proc = vf(*args, env=user_env("postgresql://nobody@127.0.0.1:9/none", tmp_path), check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("Usage: vectorfill") and says in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout and "╭" not in proc.stderr


def test_a_template_with_non_ascii_text_and_escapes_is_kept_as_written(cli_env):
    """`\\n` in a template typed on the command line is a newline; every other character,
    "Ü" and "—" included, is kept as it is (it was decoded as unicode_escape: mojibake)."""
    vf("migrate", env=cli_env)
    template = "Über {title} — {body}\\n\\nEnde"
    vf("job", "create", "docs", "--table", "articles", "--template", template, "--model", "fake-embed",
       "--base-url", "http://127.0.0.1:9/v1", "--api-key-env", "VF_KEY", "--no-check", env=cli_env)  # fmt: skip
    with connect(cli_env["VECTORFILL_DATABASE_URL"]) as conn:
        stored = conn.execute("SELECT template FROM vectorfill.jobs WHERE name = 'docs'").fetchone()[0]
    assert stored == "Über {title} — {body}\n\nEnde"


@pytest.mark.slow
def test_a_run_whose_rows_failed_exits_3_and_its_flow_run_is_failed(cli_env, provider):
    """A cron job or a scheduler must tell a run whose rows failed from a clean one: exit 3
    (not 0), the summary still printed, and Prefect's state Failed."""
    vf("migrate", env=cli_env)
    create_docs_job(cli_env, provider.base_url, "--max-inputs", "100")
    refused = {"B7", "B70", "B123"}  # three rows' inputs refused; the other 297 are embedded
    provider.fail_when(lambda text: text in refused, status=400)
    proc = vf("backfill", "docs", "--json", env=cli_env, check=False)
    assert proc.returncode == 3, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["failed"] == 3 and summary["embedded"] == 297
    assert "3 rows failed in this run" in proc.stderr and "vectorfill failures docs" in proc.stderr
    runs = json.loads(vf("runs", "docs", "--json", env=cli_env).stdout)
    assert runs[0]["state"] == "Failed"


def test_a_home_that_cannot_hold_prefects_state_fails_in_seconds_with_one_sentence(fresh_db, tmp_path):
    """HOME=/nonexistent (containers, DynamicUser services): Prefect timed out for minutes on
    a database it could not open. Now: one sentence naming what to set, exit 1, quickly."""
    (tmp_path / "a-file").write_text("")
    env = user_env(fresh_db, tmp_path)
    env["HOME"] = str(tmp_path / "a-file" / "home")  # cannot be created, not even by root
    env.pop("PREFECT_HOME")
    env.pop("VECTORFILL_HOME")
    started = time.monotonic()
    proc = vf("backfill", "docs", env=env, check=False)
    assert proc.returncode == 1 and time.monotonic() - started < 30
    assert "VECTORFILL_HOME to a writable directory" in proc.stderr and proc.stderr.count("\n") <= 2
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_check_create_and_backfill_exit_codes_through_the_cli(cli_env, provider):
    """`vectorfill check` and the checks of `job create`: what works and what to change, exit
    0 only when a backfill would work; a backfill exits 1 on a refused request (rows queued)
    and 3 when rows failed."""
    vf("migrate", env=cli_env)
    create = ["job", "create", "docs", "--table", "articles", "--text", "body", "--model", "fake-embed"]
    create += ["--base-url", provider.base_url, "--api-key-env", "VF_KEY", "--max-inputs", "100"]
    provider.behave_like("openai")  # refuses `dimensions`
    proc = vf(*create, "--dimensions", "16", env=cli_env, check=False)
    assert proc.returncode == 1 and "refuses the `dimensions` parameter" in proc.stdout
    assert "nothing was created" in proc.stderr
    assert "no job named" in vf("status", "docs", env=cli_env, check=False).stderr
    vf(*create, "--dimensions", "16", "--no-check", env=cli_env)  # offline: made unchecked
    proc = vf("check", "docs", env=cli_env, check=False)
    assert proc.returncode == 1 and "FAIL dimensions" in proc.stdout and "a backfill would not work" in proc.stdout
    before = provider.requests
    proc = vf("backfill", "docs", env=cli_env, check=False)
    assert proc.returncode == 1 and "refuses the `dimensions` parameter" in proc.stderr
    assert provider.requests - before <= 10
    status = json.loads(vf("status", "docs", "--json", env=cli_env).stdout)
    assert status["pending"] == 300 and status["failed"] == 0
    vf("job", "drop", "docs", env=cli_env)

    provider.behave_like("tei", base64=False)  # refuses base64, takes 32 inputs at most
    out = vf(*create, env=cli_env).stdout
    assert "endpoint check: encoding_format float" in out
    report = json.loads(vf("check", "docs", "--json", env=cli_env).stdout)
    assert report[0]["ok"] is True
    assert any(line["what"] == "encoding" and "float is used instead" in line["detail"] for line in report[0]["lines"])
    provider.fail_when(lambda text: text == "B7")
    proc = vf("backfill", "docs", "--json", env=cli_env, check=False)
    assert proc.returncode == 3, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["embedded"] == 299 and summary["failed"] == 1


@pytest.mark.slow
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
    vf(
        "job",
        "create",
        "wide",
        *common,
        "VF_KEY",
        "--model",
        "fake-embed",
        "--dimensions",
        "2500",
        "--storage",
        "vector",
        "--no-check",
        env=cli_env,
    )  # fmt: skip (the fake makes 32 dims, not 2,500)
    proc = vf("index", "wide", env=cli_env, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "at most 2,000 dimensions; store them as halfvec" in proc.stderr
