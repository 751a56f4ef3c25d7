"""The one run engine's counts and plan without a database: counts add up, summaries keep
their names, the fan-out totals, and the claims plan decides each row's fate."""

from __future__ import annotations

import pytest

from vectorfill.engine.counts import Counts, RunSummary
from vectorfill.orchestration.fanout import combine

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def batches(env):
    from vectorfill.jobs.batches import list_batches

    with env.connect() as conn:
        return list_batches(conn, "docs")


# --------------------------------------------------------------------- counts


def test_counts_add_up_and_an_unknown_cost_stays_unknown():
    a = Counts(embedded=3, requests=1, tokens=30, cost_usd=0.25, batch_rows=2, batch_cost_usd=0.5)
    b = Counts(embedded=4, deleted=1, tokens_estimated=7, cost_usd=0.5)
    c = a + b
    assert (c.embedded, c.deleted, c.requests, c.tokens, c.tokens_estimated) == (7, 1, 1, 30, 7)
    assert c.cost_usd == 0.75 and c.batch_cost_usd == 0.5 and c.batch_rows == 2
    assert (c + Counts(cost_usd=None)).cost_usd is None
    assert Counts().billed(2_000_000, 0.02).cost_usd == pytest.approx(0.04)
    assert Counts().billed(10, None) == Counts(tokens=10, cost_usd=None)


def test_a_summary_keeps_its_names_and_carries_its_counts():
    counts = Counts(embedded=10, tokens=100, tokens_estimated=100, cost_usd=None, batches_open=2)
    summary = RunSummary.of("docs", counts, duration_s=2.0, pending=3, failed_total=1)
    assert summary.counts == counts
    d = summary.as_dict()
    assert d["embedded"] == 10 and d["tokens_estimated"] == 100 and d["cost_usd"] is None
    assert d["rows_per_s"] == 5.0 and d["pending"] == 3 and d["batches_open"] == 2
    assert {"job", "duration_s", "failed_total", "switched_to", "batch_retried"} <= set(d)


def test_the_fan_out_adds_every_count_and_takes_the_last_state_of_the_job():
    one = RunSummary.of(
        "docs", Counts(embedded=5, tokens_estimated=3, batches_open=1), duration_s=1.0, pending=4, failed_total=2
    )
    two = RunSummary.of(
        "docs", Counts(embedded=6, tokens_estimated=4, batches_open=1), duration_s=3.0, pending=1, failed_total=2
    )
    c = combine([one, two])
    assert (c.embedded, c.tokens_estimated, c.duration_s, c.pending, c.failed_total) == (11, 7, 3.0, 1, 2)
    assert c.batches_open == 1, "open batches are the job's, counted by each run: not added"


# --------------------------------------------------------------------- --workers and --pool keep every flag


# --------------------------------------------------------------------- sync, on the same engine


# --------------------------------------------------------------------- the claim's plan: pure


def test_the_claims_plan_decides_each_rows_fate_without_a_database():
    import hashlib

    from vectorfill.config import JobSettings
    from vectorfill.engine import Work
    from vectorfill.engine.claim import Leased, plan_rows
    from vectorfill.records import Job, Version

    version = Version(1, 1, "fake-embed", "http://x/v1", None, None, None, "active")
    job = Job(1, "docs", "public", "articles", ("id",), ("bigint",), ("body",), None, JobSettings(max_attempts=3), ())
    work = Work(job, version)
    same = hashlib.sha256(b"kept text").digest()
    plan = plan_rows(
        work,
        [
            Leased((1,), 10, False, None, None, (), 1, None),  # deleted from the source
            Leased((2,), 11, True, "kept text", [same], (), 1, None),  # its vector is right
            Leased((3,), 12, True, "   ", None, (), 1, None),  # whitespace only
            Leased((4,), 13, True, "new text", None, (), 4, "HTTP 500"),  # out of attempts
            Leased((5,), 14, True, "new text", None, (), 1, None),  # to send
        ],
    )
    assert plan.gone == [((1,), 10)] and plan.unchanged == [((2,), 11)]
    assert [(f.key, f.reason) for f in plan.failed] == [((3,), "empty_text"), ((4,), "max_attempts")]
    assert "HTTP 500" in plan.failed[1].message and "vectorfill retry docs --all" in plan.failed[1].message
    assert [(i.key, i.seq, i.text) for i in plan.items] == [((5,), 14, "new text")]
    assert plan.items[0].input_hash == hashlib.sha256(b"new text").digest()
    assert list(plan.rows) == [(5,)] and plan.settles
