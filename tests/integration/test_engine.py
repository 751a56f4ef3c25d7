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

from vectorfill.engine.counts import RunSummary

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
    # each run also carries its part, which names it (docs-<start>-w1, -w2)
    parts = sorted(p.pop("run_part") for p in parameters)
    assert parts == ["w1", "w2"]
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


def refused(requests: list[list[str]], cap: int) -> int:
    return sum(1 for b in requests if len(b) > cap)


@pytest.mark.slow
def test_a_second_sync_process_packs_to_the_cap_the_first_learnt_with_no_refusal(env):
    rows, cap = 200, 32
    env.make_table(rows)
    env.create_job(settings_kw={"retries": 1, "concurrency": 2})
    env.provider.behave_like("tei", max_client_batch_size=cap)
    first = sync_until_done(env)
    assert first.embedded == rows and first.failed == 0
    assert refused(env.provider.request_inputs, cap) >= 1, "the first process learnt the cap by a refusal"
    assert_vectors_match_texts(env)

    env.make_table(rows, start=rows + 1)
    before = len(env.provider.request_inputs)
    second = sync_until_done(env)  # a new run: a new engine, client and negotiator
    sent = env.provider.request_inputs[before:]
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
