"""A backfill with nothing to do says so from the database alone: no Prefect import, no
flow run, exit 0; one with work runs as ever."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cli_helpers import create_docs_job, user_env, vf
from vectorfill.storage.db import connect


@pytest.fixture
def cli_env(fresh_db, provider, tmp_path, local_prefect_home):
    env = user_env(fresh_db, tmp_path, local_prefect_home)
    with connect(fresh_db) as conn:
        conn.execute("CREATE TABLE articles (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO articles SELECT g, 'B' || g FROM generate_series(1, 30) g")
    vf("migrate", env=env)
    create_docs_job(env, provider.base_url)
    vf("backfill", "docs", env=env)
    return env


def imported_modules(env, *args) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``vectorfill ARGS`` under ``-X importtime``: the process and every module it imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "vectorfill.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    modules = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return proc, modules


def test_nothing_to_do_is_said_without_importing_prefect(cli_env, provider):
    requests = provider.requests
    proc, modules = imported_modules(cli_env, "backfill", "docs")
    assert proc.returncode == 0, proc.stderr
    assert "docs: nothing to embed" in proc.stdout
    assert not {m for m in modules if m == "prefect" or m.startswith("prefect.")}, "Prefect was imported"
    assert "vectorfill.cli._runs" in modules, "the measure saw the command's imports"
    assert provider.requests == requests


def test_nothing_to_do_as_json_has_the_summarys_keys(cli_env):
    summary = json.loads(vf("backfill", "docs", "--json", env=cli_env).stdout)
    assert summary["nothing_to_do"] is True and summary["embedded"] == 0 and summary["pending"] == 0


def test_an_edit_is_work_and_is_embedded(cli_env, provider):
    with connect(cli_env["VECTORFILL_DATABASE_URL"]) as conn:
        conn.execute("UPDATE articles SET body = 'edited' WHERE id = 1")
    proc, modules = imported_modules(cli_env, "backfill", "docs", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["embedded"] == 1
    assert "prefect" in modules


def test_failed_rows_of_earlier_runs_are_named_as_such(cli_env, provider):
    # a text never embedded here (a stored vector of it would be copied, not sent)
    provider.fail_when(lambda text: text == "refused", status=400)
    with connect(cli_env["VECTORFILL_DATABASE_URL"]) as conn:
        conn.execute("UPDATE articles SET body = 'refused' WHERE id IN (7, 8)")
    failed = vf("backfill", "docs", env=cli_env, check=False)
    assert failed.returncode == 3, failed.stdout + failed.stderr
    proc = vf("backfill", "docs", env=cli_env)
    assert "rows failed in earlier runs" in proc.stdout


def test_the_progress_bar_counts_this_run(cli_env):
    with connect(cli_env["VECTORFILL_DATABASE_URL"]) as conn:
        conn.execute("UPDATE articles SET body = body || ' again' WHERE id <= 3")
    proc = vf("backfill", "docs", env=cli_env)
    assert " 3/3 " in proc.stderr, proc.stderr  # not 30/30: the job's size
