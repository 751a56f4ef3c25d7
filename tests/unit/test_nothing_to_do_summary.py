"""The summary of a backfill that had nothing to do has a run summary's keys."""

from __future__ import annotations

from vectorfill.cli._runs import SUMMARY_KEYS, nothing_to_do_summary
from vectorfill.engine.counts import Counts, RunSummary
from vectorfill.jobs.registry import WorkLeft


def test_the_keys_are_a_run_summarys():
    real = RunSummary.of("docs", Counts(), duration_s=1.0, pending=0, failed_total=0).as_dict()
    assert tuple(real) == SUMMARY_KEYS


def test_nothing_to_do_counts_earlier_failures_only():
    got = nothing_to_do_summary(WorkLeft(job="docs", queued=False, batches_open=False, failed=4), 0.01)
    assert set(got) == {*SUMMARY_KEYS, "nothing_to_do"}
    assert got["failed_total"] == 4 and got["failed"] == 0 and got["embedded"] == 0 and got["nothing_to_do"]


def test_failed_rows_say_which_run_they_are_from():
    from vectorfill.cli._output import failed_line

    assert failed_line("docs", 0, 8).startswith("8 rows failed in earlier runs:")
    assert failed_line("docs", 3, 8).startswith("3 rows failed in this run; 5 rows failed in earlier runs:")
    assert failed_line("docs", 3, 3).startswith("3 rows failed in this run:")
