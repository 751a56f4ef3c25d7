"""The one run engine: every kind of run fills a version through it, so each gets what the
others have (learnt caps, the flags of a backfill, the counts of a summary).

Each test here failed before backfill and sync shared the engine: ``--workers``/``--pool``
dropped ``--batch/--online/--wait/--poll``, a sync process neither loaded nor saved what
the endpoint was found to accept, and sync summaries lacked the estimated tokens and the
negotiation's probes.
"""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
import pytest

from vectorfill.engine.counts import Counts, RunSummary
from vectorfill.orchestration.fanout import combine

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def assert_vectors_match_texts(env):
    texts, vectors = env.texts(), env.vectors()
    assert set(vectors) == set(texts)
    for key, text in texts.items():
        np.testing.assert_allclose(vectors[key], env.provider.expected_vector(text), rtol=0, atol=1e-6)


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


@pytest.mark.slow
def test_workers_with_online_on_a_job_whose_default_is_the_batch_api_embed_every_row_online(env):
    from vectorfill.orchestration.runtime import run_backfill

    env.make_table(600)
    env.create_job(settings_kw={"max_inputs": 50, "concurrency": 2, "retries": 1, "batch": True})
    summary = run_backfill(env.url, "docs", workers=2, progress=False, batch=False)
    assert summary.embedded == 600 and summary.pending == 0
    assert summary.batches_submitted == 0 and batches(env) == [], "no batch submitted"
    assert env.provider.batch_api.submitted_inputs == 0
    assert sorted(env.provider.embedded) == sorted(env.texts().values()), "every row embedded online, once"
    assert_vectors_match_texts(env)


@pytest.mark.slow
def test_workers_with_batch_submit_batches_and_embed_nothing_online(env):
    from vectorfill.orchestration.runtime import run_backfill

    env.make_table(300)
    env.create_job(settings_kw={"max_inputs": 50, "concurrency": 2, "retries": 1})
    summary = run_backfill(env.url, "docs", workers=2, progress=False, batch=True, wait=True, poll_s=0.05)
    assert env.provider.requests == 0, "nothing went through the online endpoint"
    assert summary.batches_submitted >= 1 and summary.batch_rows == 300 and summary.embedded == 300
    assert env.provider.batch_api.submitted_inputs == 300
    assert env.status().pending == 0
    assert_vectors_match_texts(env)


@pytest.mark.slow
def test_pool_runs_get_the_flows_options_as_parameters(env, served_on_session_server):
    """The flow runs of ``--workers N --pool`` carry ``--batch/--wait/--poll`` (read back from
    the server; no worker takes them: the pool is this test's)."""
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from vectorfill.orchestration.fanout import arun_on_pool

    pool = f"vf-engine-{uuid.uuid4().hex[:8]}"
    flow_kw = {"batch": False, "wait": True, "poll_s": 1.5}

    async def main() -> list[dict]:
        async with get_client() as client:
            await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            try:
                runs = await arun_on_pool("docs", 2, pool, max_rows=10, flow_kw=flow_kw, wait=False)
                read = [await client.read_flow_run(uuid.UUID(r.flow_run_id)) for r in runs]
                for r in runs:
                    await client.delete_flow_run(uuid.UUID(r.flow_run_id))
                return [r.parameters for r in read]
            finally:
                await client.delete_work_pool(pool)

    with temporary_settings(updates={PREFECT_API_URL: served_on_session_server}):
        parameters = asyncio.run(main())
    assert parameters == [{"job": "docs", "max_rows": 5, **flow_kw}] * 2


# --------------------------------------------------------------------- sync, on the same engine


def sync_until_done(env, *, timeout: float = 120.0) -> RunSummary:
    """One sync flow run (a sync process's window) until the job's queues are empty, then
    stopped as ``serve`` stops it; its summary."""
    from vectorfill.engine.follow import STOP
    from vectorfill.flows.sync import sync

    async def main() -> RunSummary:
        stop = asyncio.Event()
        STOP.set(stop)  # this task's context: the run sees it
        run = asyncio.create_task(sync(job="docs", window_s=3600.0, aligned=False))
        deadline = time.monotonic() + timeout
        while (await asyncio.to_thread(env.status)).pending:
            assert not run.done(), run.result()
            assert time.monotonic() < deadline, "the sync run did not empty the queue"
            await asyncio.sleep(0.1)
        stop.set()
        return await run

    return asyncio.run(main())


def refused(batches: list[list[str]], cap: int) -> int:
    return sum(1 for b in batches if len(b) > cap)


@pytest.mark.slow
def test_a_second_sync_process_packs_to_the_cap_the_first_learnt_with_no_refusal(env):
    rows, cap = 200, 32
    env.make_table(rows)
    env.create_job(settings_kw={"retries": 1, "concurrency": 2})
    env.provider.behave_like("tei", max_client_batch_size=cap)
    first = sync_until_done(env)
    assert first.embedded == rows and first.failed == 0
    assert refused(env.provider.batches, cap) >= 1, "the first process learnt the cap by a refusal"
    assert_vectors_match_texts(env)

    env.make_table(rows, start=rows + 1)
    before = len(env.provider.batches)
    second = sync_until_done(env)  # a new run: a new engine, client and negotiator
    sent = env.provider.batches[before:]
    assert second.embedded == rows and second.failed == 0
    assert refused(sent, cap) == 0, "no refused request: the learnt cap was loaded"
    assert max(map(len, sent)) == cap, "claims packed to the learnt cap"
    assert len(sent) <= math.ceil(rows / cap) + 4, len(sent)  # a claim's last request may be short
    assert_vectors_match_texts(env)


@pytest.mark.slow
def test_a_sync_summary_counts_the_estimated_tokens_and_the_probes(env):
    env.make_table(120)
    env.create_job(settings_kw={"max_inputs": 40, "retries": 1, "concurrency": 1})
    env.provider.behave_like("minimal")  # answers without `usage`: tokens counted here
    env.provider.fail_next(1, status=400, body={"error": {"message": "something about this request"}})
    summary = sync_until_done(env)
    assert summary.embedded == 120
    assert summary.tokens > 0 and summary.tokens_estimated == summary.tokens
    assert summary.requests == env.provider.requests, "every request sent is counted, the probe included"


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
