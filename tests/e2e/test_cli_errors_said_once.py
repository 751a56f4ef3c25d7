"""A terminal error is said once: one block (the error naming the job, the setting, the
fix), exit 1, no Prefect ``ERROR |`` line and no traceback on the console; ``--verbose``
shows everything. One test per terminal error class a backfill meets."""

from __future__ import annotations

import datetime

import httpx
import pytest

from cli_helpers import create_docs_job, user_env, vf
from vectorfill.storage.db import connect


@pytest.fixture
def cli_env(fresh_db, provider, tmp_path, local_prefect_home):
    env = user_env(fresh_db, tmp_path, local_prefect_home)
    with connect(fresh_db) as conn:
        conn.execute("CREATE TABLE articles (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO articles SELECT g, 'B' || g FROM generate_series(1, 20) g")
    vf("migrate", env=env)
    return env


def said_once(proc, first_line: str) -> list[str]:
    """The console of a failed command holds one error block, starting ``error:`` and
    holding ``first_line``, and nothing of Prefect's error logging; its lines."""
    console = proc.stdout + proc.stderr
    assert proc.returncode == 1, console
    assert "Traceback" not in console, console
    assert "ERROR" not in console, console  # Prefect's `| ERROR   | Flow run ...` lines
    lines = proc.stderr.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(errors) == 1, console
    assert first_line in lines[errors[0]], console
    assert console.count(first_line) == 1, f"said more than once:\n{console}"
    return lines[errors[0] :]


def run_logs(api: str, since: datetime.datetime) -> list[str]:
    """The log messages, in Prefect, of the flow runs started since ``since``."""
    runs = httpx.post(
        f"{api}/flow_runs/filter",
        json={"flow_runs": {"start_time": {"after_": since.isoformat()}}, "limit": 50},
        timeout=30,
    ).json()
    logs = httpx.post(
        f"{api}/logs/filter",
        json={"logs": {"flow_run_id": {"any_": [r["id"] for r in runs]}}, "limit": 200},
        timeout=30,
    ).json()
    return [entry["message"] for entry in logs]


def test_a_refused_setting_prints_one_block_naming_the_job_setting_and_fix(cli_env, provider, prefect_server):
    create_docs_job(cli_env, provider.base_url, "--dimensions", "16", "--no-check")
    provider.behave_like("openai")  # refuses `dimensions`, as text-embedding-ada-002 does
    since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    block = said_once(vf("backfill", "docs", env=cli_env, check=False), "refuses the `dimensions` parameter")
    assert block[0].startswith("error: job 'docs':")
    assert "  setting: dimensions" in block
    assert "vectorfill job set-model docs" in block[0], "the fix: start a version without --dimensions"
    logs = run_logs(prefect_server, since)
    assert any("Traceback" in m and "RequestRejected" in m for m in logs), "the flow run in Prefect keeps the traceback"


def test_verbose_shows_the_traceback_and_prefects_logs(cli_env, provider):
    create_docs_job(cli_env, provider.base_url, "--dimensions", "16", "--no-check")
    provider.behave_like("openai")
    proc = vf("backfill", "docs", "--verbose", env=cli_env, check=False)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "RequestRejected" in proc.stderr
    assert "ERROR" in proc.stderr, "Prefect's own error lines are shown with --verbose"


def test_a_wrong_key_prints_one_block(cli_env, provider):
    create_docs_job(cli_env, provider.base_url, "--no-check")
    env = dict(cli_env, VF_KEY="sk-wrong")
    block = said_once(vf("backfill", "docs", env=env, check=False), "Check the API key in $VF_KEY")
    assert "  setting: api_key_env" in block


def test_a_missing_key_prints_one_block(cli_env, provider):
    create_docs_job(cli_env, provider.base_url, "--no-check")
    env = {k: v for k, v in cli_env.items() if k != "VF_KEY"}
    block = said_once(vf("backfill", "docs", env=env, check=False), "the API key variable VF_KEY is not set")
    assert "  setting: api_key_env" in block


def test_an_unknown_model_prints_one_block(cli_env, provider):
    create_docs_job(cli_env, provider.base_url, "--no-check")
    provider.fail_when(lambda text: True, status=404)
    block = said_once(vf("backfill", "docs", env=cli_env, check=False), "answered 404 for model 'fake-embed'")
    assert "  setting: model" in block


def test_an_unreachable_database_prints_one_block(cli_env, tmp_path):
    env = dict(cli_env, VECTORFILL_DATABASE_URL=f"postgresql://nobody@/nowhere?host={tmp_path}&port=1")
    block = said_once(vf("backfill", "docs", env=env, check=False), "error:")
    assert any(line.startswith("  fix:") and "Postgres is running" in line for line in block)


def test_an_unknown_job_prints_one_block(cli_env):
    said_once(vf("backfill", "ghost", env=cli_env, check=False), "no job named 'ghost'")


def test_no_quota_prints_one_block(cli_env, provider):
    create_docs_job(cli_env, provider.base_url, "--no-check")
    quota = {
        "error": {
            "message": "You exceeded your current quota.",
            "type": "insufficient_quota",
            "code": "insufficient_quota",
        }
    }
    provider.fail_when(lambda text: True, status=429, body=quota)
    said_once(vf("backfill", "docs", env=cli_env, check=False), "says the account is out of quota")
