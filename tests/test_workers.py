"""`vectorfill backfill JOB --workers N`: N flow runs drain one queue; on a work pool, real
workers as separate processes, one killed mid-run."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from vectorfill.errors import ConfigError
from vectorfill.orchestration.fanout import combine, split_rows


def test_row_budgets_are_split_between_the_runs():
    assert split_rows(None, 3) == [None, None, None]
    assert split_rows(10, 3) == [4, 3, 3]
    assert split_rows(2, 4) == [1, 1]


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


def test_combined_summary_adds_the_runs_counts():
    from vectorfill.tasks.report import RunSummary

    a = RunSummary("docs", 10, 1, 0, 0, 0, 0, 2, 100, 0.5, 3.0, 5, 0)
    b = RunSummary("docs", 20, 0, 1, 0, 0, 0, 3, 200, None, 4.0, 0, 0)
    c = combine([a, b])
    assert (c.embedded, c.unchanged, c.deleted, c.requests, c.tokens) == (30, 1, 1, 5, 300)
    assert c.cost_usd is None and c.duration_s == 4.0 and c.pending == 0


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


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
