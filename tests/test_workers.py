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


def test_a_rate_limited_run_claims_ten_seconds_of_its_budget_a_task():
    """So that a run at 60 requests a minute does not hold 4,096 rows for minutes while the
    other runs of a fan-out find the queue empty and stop."""
    from vectorfill.config import JobSettings
    from vectorfill.engine.batch import MIN_TASK_ROWS, rows_per_task

    assert rows_per_task(JobSettings(max_inputs=50)) == MIN_TASK_ROWS
    assert rows_per_task(JobSettings(max_inputs=50, rpm=60)) == 500  # 10 requests of 50
    assert rows_per_task(JobSettings(max_inputs=2048, rpm=3_000)) == MIN_TASK_ROWS
    assert rows_per_task(JobSettings(max_inputs=8192, rpm=1)) == 8192, "always a request's worth"


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

    counts = dict(failed=0, truncated=0, stale=0, tokens_estimated=0, failed_total=0)
    a = RunSummary("docs", 10, 1, 0, requests=2, tokens=100, cost_usd=0.5, duration_s=3.0, pending=5, **counts)
    b = RunSummary("docs", 20, 0, 1, requests=3, tokens=200, cost_usd=None, duration_s=4.0, pending=0, **counts)
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


def _descendants(pid: int) -> list:
    """Every process under ``pid`` (psutil, as the local server's code uses it)."""
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(proc) -> bool:
    """Running: not gone and not a zombie waiting for its parent."""
    import psutil

    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_for(what: str, check, timeout: float, every: float = 0.5):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_two_real_workers_one_killed_every_row_once_and_right_within_the_limits(
    fresh_db, tmp_path, served_on_session_server
):
    """The session's Prefect server, a process work pool of this test's and two workers, each a
    process group of its own; `--workers 2 --pool`; one worker and its flow run SIGKILLed
    mid-run, as when its machine is lost."""
    import contextlib
    import os
    import signal
    import subprocess
    import sys
    import uuid

    import psutil
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from conftest import API_KEY, Env
    from fake_provider import FakeProvider
    from vectorfill.orchestration.fanout import run_on_pool
    from vectorfill.storage.db import migrate

    migrate(fresh_db)
    bin_dir = os.path.dirname(sys.executable)
    api = served_on_session_server
    pool = f"vf-test-{uuid.uuid4().hex[:8]}"
    base_env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_WORKER_QUERY_SECONDS": "2",  # workers take their flow runs within seconds
        "VECTORFILL_DATABASE_URL": fresh_db,
        "VF_TEST_API_KEY": API_KEY,
    }
    procs: list[subprocess.Popen] = []

    def start(args: list[str], log: str) -> subprocess.Popen:
        with open(tmp_path / log, "wb") as out:
            p = subprocess.Popen(
                [os.path.join(bin_dir, "prefect"), *args],
                env=base_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so that the clean-up's killpg ends it
            )
        procs.append(p)
        return p

    rows, max_inputs, concurrency, rpm, tpm = 4_000, 50, 2, 60, 240_000  # 80 requests: 60 at once, then 1 a second
    with FakeProvider(dimensions=32, api_key=API_KEY, rpm=rpm, tpm=tpm) as provider:
        try:
            subprocess.run(
                [os.path.join(bin_dir, "prefect"), "work-pool", "create", pool, "--type", "process"],
                env=base_env,
                check=True,
                capture_output=True,
            )
            workers = [
                start(["worker", "start", "--pool", pool, "--limit", "1", "--name", f"w{i}"], f"worker{i}.log")
                for i in (1, 2)
            ]
            env = Env(fresh_db, provider)
            env.make_table(rows)
            env.create_job(
                settings_kw={"max_inputs": max_inputs, "concurrency": concurrency, "retries": 3, "rpm": rpm, "tpm": tpm}
            )
            with temporary_settings(updates={PREFECT_API_URL: api}):
                provider.latency_s = (
                    2.0  # slow until both flow runs are up, so that the first cannot drain the queue alone
                )
                runs = run_on_pool("docs", 2, pool, wait=False)
                assert len(runs) == 2
                _wait_for("a flow run under each worker", lambda: all(_descendants(w.pid) for w in workers), 120)
                provider.latency_s = 0.05
                # past the burst (a minute's budget at once), into the paced part: kill worker 1
                _wait_for("requests past the burst", lambda: provider.stats()["requests"] >= rpm + 5, 300)
                # A machine lost: the worker and every process under it. Prefect's process
                # worker starts each flow run in a session of its own (so that a signal to the
                # worker's group does not reach it): killing the worker's group alone leaves
                # its flow run working as an orphan, which is no machine's loss.
                flow_run = _descendants(workers[0].pid)
                assert flow_run, "worker 1 had taken a flow run"
                for proc in [psutil.Process(workers[0].pid), *flow_run]:  # the worker first: it cannot react
                    with contextlib.suppress(psutil.NoSuchProcess):
                        proc.kill()
                workers[0].wait(10)
                _wait_for("worker 1's flow run to die", lambda: not any(map(_alive, flow_run)), 10, 0.1)

                from prefect.client.orchestration import get_client

                def one_completed():
                    with get_client(sync_client=True) as client:
                        states = [client.read_flow_run(r.flow_run_id).state for r in runs]
                    assert not any(s.is_failed() or s.is_crashed() for s in states if s), states
                    return any(s and s.is_completed() for s in states)

                _wait_for("the surviving flow run", one_completed, 600, 2.0)
                with get_client(sync_client=True) as client:
                    done = [s for s in (client.read_flow_run(r.flow_run_id).state for r in runs) if s.is_completed()]
                survivor = int(done[0].message.split()[0].replace(",", ""))
                assert survivor > 0, "both runs had rows to embed (the survivor's message: rows embedded)"
                with env.connect() as conn:  # the dead run's leases: expired now, not after lease_s
                    conn.execute("UPDATE vectorfill._q_1_1 SET lease_until = now() - interval '1 second'")
                again = run_on_pool("docs", 1, pool, wait=True, timeout_s=600)
                assert [r.state for r in again] == ["Completed"]
        finally:
            for p in procs:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            for p in procs:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)

        texts, vectors = env.texts(), env.vectors()
        assert set(vectors) == set(texts), "every row has a vector"
        for key, text in texts.items():
            np.testing.assert_allclose(vectors[key], provider.expected_vector(text), rtol=0, atol=1e-6)
        paid = provider.embedded  # answered with a 200, so billed (a 429 is not)
        paid_twice = len(paid) - len(set(paid))
        assert set(paid) == set(texts.values())
        assert paid_twice <= concurrency * max_inputs, "at most the requests in flight at the kill were paid again"
        # Within the burst: each run may hold one chunk (1/20 of a minute's budget) leased from
        # the shared bucket before it refilled, which the provider can see as over its budget
        # (provider/budgets.py); each such request got a 429 and was sent again, paid once.
        chunk = -(-rpm // 20)
        assert provider.stats()["rate_limited"] <= 2 * chunk, "the shared budget kept both runs within the burst"
        with env.connect() as conn:
            assert conn.execute("SELECT count(*) FROM vectorfill._q_1_1").fetchone()[0] == 0
