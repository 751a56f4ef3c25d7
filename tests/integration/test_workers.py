"""`vectorfill backfill JOB --workers N`: N flow runs in this process drain one queue, the CLI
runs them, jobs side by side (real workers, one killed: test_workers_killed.py)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from vectorfill.errors import ConfigError


def test_workers_in_this_process_embed_every_row_exactly_once(env):
    from vectorfill.orchestration.fanout import run_here
    from vectorfill.orchestration.runtime import Progress

    env.make_table(3000)
    env.create_job(settings_kw={"max_inputs": 100, "concurrency": 2, "retries": 1})
    env.provider.latency_s = 0.02
    summary = asyncio.run(run_here("docs", 3))
    assert summary.embedded == 3000 and summary.pending == 0
    inputs = env.provider.inputs
    assert len(inputs) == len(set(inputs)) == 3000, "no text paid for twice"
    texts, vectors = env.texts(), env.vectors()
    assert set(vectors) == set(texts)
    for key, text in texts.items():
        np.testing.assert_allclose(vectors[key], env.provider.expected_vector(text), rtol=0, atol=1e-6)
    with env.connect() as conn:
        assert Progress(conn, "docs").tick(exact=True) == (3000, 3000)


def test_the_cli_runs_workers_and_says_what_a_missing_pool_needs(env):
    from typer.testing import CliRunner

    from vectorfill.cli.app import app

    env.make_table(500)
    env.create_job(settings_kw={"max_inputs": 50, "concurrency": 2, "retries": 1})
    result = CliRunner().invoke(app, ["backfill", "docs", "--workers", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert '"embedded": 500' in result.output
    result = CliRunner().invoke(app, ["backfill", "docs", "--workers", "2", "--pool", "no-such-pool"])
    assert isinstance(result.exception, ConfigError)
    assert "prefect work-pool create no-such-pool --type process" in str(result.exception)


pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.slow,
]  # flow runs side by side, workers


def test_jobs_side_by_side_one_failing_does_not_stall_the_other(env, monkeypatch):
    import threading

    from vectorfill.errors import AuthenticationError
    from vectorfill.orchestration.fanout import run_here

    env.make_table(2000, table="good")
    env.make_table(500, table="bad")
    env.create_job("good", table="good", settings_kw={"max_inputs": 50, "concurrency": 2, "retries": 1})
    env.create_job("bad", table="bad", api_key_env="VF_WRONG_KEY", settings_kw={"max_inputs": 50, "retries": 3})
    monkeypatch.setenv("VF_WRONG_KEY", "sk-wrong-key")
    env.provider.latency_s = 0.01
    results: dict = {}

    def run(job: str) -> None:
        try:
            results[job] = asyncio.run(run_here(job, 2))
        except Exception as exc:  # the failing job's error, kept for the assertion
            results[job] = exc

    threads = [threading.Thread(target=run, args=(job,)) for job in ("good", "bad")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert isinstance(results["bad"], AuthenticationError)
    assert results["good"].embedded == 2000 and results["good"].pending == 0
    assert env.status("bad").pending == 500, "the failed job lost nothing"


# --- real workers -------------------------------------------------------------------------------
