"""`vectorfill backfill JOB --workers N` without running it: the row budget split between the
runs, a rate-limited run's claim per task, the combined summary."""

from __future__ import annotations

import pytest

from vectorfill.orchestration.fanout import combine, split_rows


def test_row_budgets_are_split_between_the_runs():
    assert split_rows(None, 3) == [None, None, None]
    assert split_rows(10, 3) == [4, 3, 3]
    assert split_rows(2, 4) == [1, 1]


def test_a_rate_limited_run_claims_ten_seconds_of_its_budget_a_task():
    """So that a run at 60 requests a minute does not hold 4,096 rows for minutes while the
    other runs of a fan-out find the queue empty and stop."""
    from vectorfill.config import JobSettings
    from vectorfill.engine.slice import MIN_SLICE_ROWS, rows_per_slice

    assert rows_per_slice(JobSettings(max_inputs=50)) == MIN_SLICE_ROWS
    assert rows_per_slice(JobSettings(max_inputs=50, rpm=60)) == 500  # 10 requests of 50
    assert rows_per_slice(JobSettings(max_inputs=2048, rpm=3_000)) == MIN_SLICE_ROWS
    assert rows_per_slice(JobSettings(max_inputs=8192, rpm=1)) == 8192, "always a request's worth"


def test_combined_summary_adds_the_runs_counts():
    from vectorfill.tasks.report import RunSummary

    counts = dict(failed=0, truncated=0, stale=0, tokens_estimated=0, failed_total=0)
    a = RunSummary("docs", 10, 1, 0, requests=2, tokens=100, cost_usd=0.5, duration_s=3.0, pending=5, **counts)
    b = RunSummary("docs", 20, 0, 1, requests=3, tokens=200, cost_usd=None, duration_s=4.0, pending=0, **counts)
    c = combine([a, b])
    assert (c.embedded, c.unchanged, c.deleted, c.requests, c.tokens) == (30, 1, 1, 5, 300)
    assert c.cost_usd is None and c.duration_s == 4.0 and c.pending == 0


pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.slow,
]  # flow runs side by side, workers


# --- real workers -------------------------------------------------------------------------------
