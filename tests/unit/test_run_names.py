"""Every flow run is named after its job and start, with its part when a backfill has several."""

from __future__ import annotations

import datetime

from vectorfill.tasks.report import run_label


def test_a_run_is_named_after_its_job_and_start_in_utc():
    start = datetime.datetime(2026, 12, 7, 1, 22, 59, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
    assert run_label("docs", start) == "docs-2026-12-07T00:22"


def test_a_part_of_a_backfill_says_which():
    start = datetime.datetime(2026, 12, 7, 0, 22, tzinfo=datetime.UTC)
    assert run_label("docs", start, "w1") == "docs-2026-12-07T00:22-w1"
