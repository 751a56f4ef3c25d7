"""Backfills through the Batch API, the parts that need a process of their own: a submitter
killed between creating a batch and recording it, and batch mode through the `vectorfill`
command. The fake provider's Files and Batches endpoints are in tests/fake_batch_api.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from assertions import assert_vectors_match_texts
from batch_helpers import batches, queue_state, wait_for_fake
from conftest import API_KEY


@pytest.mark.slow
def test_sigkill_between_create_and_record_is_reconciled_by_metadata_and_paid_once(env, tmp_path):
    env.make_table(200)
    env.create_job(settings_kw={"max_inputs": 50, "retries": 1})
    script = tmp_path / "submit_and_die.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, os, signal, sys
            from vectorfill.jobs.registry import load_job
            from vectorfill.provider.batches import BatchesClient
            from vectorfill.storage.db import connect
            from vectorfill.tasks.common import Work
            from vectorfill.tasks.submit import submit_version

            real_create = BatchesClient.create

            async def create(self, file_id, metadata):
                info = await real_create(self, file_id, metadata)
                print("created", info.id, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)  # before the id is recorded

            BatchesClient.create = create
            with connect(os.environ["VECTORFILL_DATABASE_URL"]) as conn:
                job = load_job(conn, "docs")
            asyncio.run(submit_version(Work(job, job.active)))
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)],
        env={**os.environ, "VECTORFILL_DATABASE_URL": env.url, "VF_TEST_API_KEY": API_KEY},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[1],  # tests/, where the fakes are
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout.startswith("created batch_")
    [b] = batches(env)
    assert b.state == "uploading" and b.provider_batch_id is None
    assert queue_state(env)[1] == 200, "the rows stay claimed: an online run must not send them"
    wait_for_fake(env)
    summary = env.backfill(batch=False)
    assert summary.batch_rows == 200 and summary.embedded == 200 and env.provider.requests == 0
    [b] = batches(env)
    assert b.state == "done" and b.provider_batch_id == proc.stdout.split()[1]
    api = env.provider.batch_api
    assert api.created == 1 and api.submitted_inputs == 200 and api.billed_inputs == 200
    assert_vectors_match_texts(env)


@pytest.mark.slow
def test_batch_mode_through_the_cli(fresh_db, provider, tmp_path, local_prefect_home):
    from cli_helpers import user_env, vf
    from vectorfill.storage.db import connect

    env = user_env(fresh_db, tmp_path, local_prefect_home)  # the session's local Prefect server
    with connect(fresh_db) as conn:
        conn.execute("CREATE TABLE articles (id int PRIMARY KEY, title text, body text)")
        conn.execute("INSERT INTO articles SELECT g, 'T' || g, 'B' || g FROM generate_series(1, 200) g")
    vf("migrate", env=env)
    create = ["job", "create", "docs", "--table", "articles", "--text", "body", "--model", "fake-embed"]
    vf(
        *create,
        "--base-url",
        provider.base_url,
        "--api-key-env",
        "VF_KEY",
        "--price",
        "fake-embed=2",
        "--batch",
        "--no-check",  # the endpoint check is an online request; this test counts none
        env=env,
    )
    [est] = json.loads(vf("estimate", "docs", "--json", env=env).stdout)
    assert est["cost_usd"] == pytest.approx(est["tokens"] * 2 / 1e6) and est["batch_price_per_million"] == 0.0
    [est] = json.loads(vf("estimate", "docs", "--batch-price", "1", "--json", env=env).stdout)
    assert est["batch_cost_usd"] == pytest.approx(est["cost_usd"] / 2)
    summary = json.loads(vf("backfill", "docs", "--wait", "--poll", "0.05", "--json", env=env).stdout)
    assert summary["batch_rows"] == summary["embedded"] == 200 and summary["batches_submitted"] == 1
    assert provider.requests == 0 and provider.batch_api.billed_inputs == 200
    [b] = json.loads(vf("batches", "docs", "--json", env=env).stdout)
    assert (b["state"], b["provider_status"], b["rows"], b["written"]) == ("done", "completed", 200, 200)
    assert "done" in vf("batches", "docs", env=env).stdout
    run = json.loads(vf("runs", "docs", "--json", env=env).stdout)[0]  # the newest: other tests ran a "docs" too
    assert run["batch_rows"] == 200 and run["batches_submitted"] == 1
    assert "200 rows, 1 submitted" in vf("runs", "docs", env={**env, "COLUMNS": "250"}).stdout
