"""On a work pool, real workers as separate processes, one killed mid-run: every row once
and right, within the limits."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.slow,
]  # flow runs side by side, workers


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
