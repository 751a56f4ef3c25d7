"""Crashes: a worker killed mid-slice loses nothing; its leases expire and another run finishes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import numpy as np
import pytest

from conftest import API_KEY, expire_leases

pytestmark = pytest.mark.slow  # real processes and servers: the whole module


def leased_rows(env) -> int:
    with env.connect() as conn:
        return conn.execute("SELECT count(*) FROM vectorfill._q_1_1 WHERE lease_until > now()").fetchone()[0]


def wait_until_rows_are_leased(env, proc: subprocess.Popen, output: Callable[[], str], timeout: float = 120) -> None:
    """Until the run in ``proc`` holds claims; it must not exit first (``output`` says why)."""
    deadline = time.monotonic() + timeout
    while leased_rows(env) == 0:
        assert proc.poll() is None, output()
        assert time.monotonic() < deadline
        time.sleep(0.05)


def backfill_env(env, tmp_path, home) -> dict:
    """The environment of `vectorfill backfill` run as a user would, on ``home``'s local
    Prefect server (the session's)."""
    child_env = dict(
        os.environ,
        VECTORFILL_DATABASE_URL=env.url,
        VF_TEST_API_KEY=API_KEY,
        PREFECT_HOME=str(tmp_path / "prefect"),
        VECTORFILL_HOME=str(home),
    )
    child_env.pop("PREFECT_API_URL", None)
    return child_env


def test_a_worker_killed_mid_slice_loses_nothing_and_a_later_run_finishes(env, tmp_path, prefect_server):
    env.make_table(600)
    env.create_job(settings_kw={"max_inputs": 50, "concurrency": 2, "retries": 1})
    env.provider.latency_s = 0.3  # slow enough that the kill lands while requests are in flight
    script = tmp_path / "worker.py"
    script.write_text(
        textwrap.dedent("""
        import asyncio
        from vectorfill.orchestration.runtime import prefect_defaults
        prefect_defaults()
        from vectorfill.flows.backfill import backfill
        asyncio.run(backfill("docs"))
    """)
    )
    child_env = dict(
        os.environ,
        VECTORFILL_DATABASE_URL=env.url,
        VF_TEST_API_KEY=API_KEY,
        PREFECT_HOME=str(tmp_path / "prefect"),
        VECTORFILL_HOME=str(tmp_path / "home"),  # no local Prefect server there
    )
    child_env["PREFECT_API_URL"] = prefect_server  # the session's server: no start-up to wait for
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=child_env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while env.status().embedded < 100 or leased_rows(env) == 0:  # well into the work, mid-slice
            assert proc.poll() is None, "the worker ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    st = env.status()
    assert st.embedded + st.pending == 600, "nothing lost: every row is embedded or still queued"
    assert leased_rows(env) > 0, f"the kill landed while rows were claimed ({st})"

    env.provider.latency_s = 0
    env.backfill()  # takes the free rows now; the dead worker's stay leased...
    assert env.status().pending > 0, "a dead worker's rows are not taken before their lease ends"
    expire_leases(env.url)  # ...until their lease ends (the time passing, without the wait)
    env.backfill()
    st = env.status()
    assert (st.embedded, st.pending, st.failed) == (600, 0, 0)
    texts = env.texts()
    for key, vector in env.vectors().items():
        np.testing.assert_allclose(vector, env.provider.expected_vector(texts[key]), atol=1e-6)
    # Paid twice at most: what the dead worker had in flight or answered and not stored,
    # no more than `concurrency` requests (2 x 50 rows); never a row it had stored.
    resent = len(env.provider.inputs) - len(set(env.provider.inputs))
    assert resent <= 100, f"{resent} texts were sent twice"


def test_postgres_restarting_mid_run_loses_nothing_and_duplicates_nothing(
    provider, prefect_server, monkeypatch, tmp_path
):
    """A server of its own, so that restarting it disturbs no other test."""
    import threading

    from conftest import Env
    from vectorfill.local import pgembedded
    from vectorfill.storage.db import migrate

    data_dir = tmp_path / "pg"
    url = pgembedded.start(data_dir)
    try:
        migrate(url)
        monkeypatch.setenv("VECTORFILL_DATABASE_URL", url)
        monkeypatch.setenv("VF_TEST_API_KEY", API_KEY)
        env = Env(url, provider)
        env.make_table(2000)
        env.create_job(settings_kw={"max_inputs": 50, "concurrency": 2, "retries": 2})
        provider.latency_s = 0.05
        outcome = {}

        def run():
            try:
                outcome["summary"] = env.backfill()
            except Exception as exc:  # kept for the assertion below, which shows it
                outcome["error"] = exc

        worker = threading.Thread(target=run)
        worker.start()
        deadline = time.monotonic() + 60
        while env.status().embedded < 300:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        pgembedded.stop(data_dir)
        time.sleep(0.5)
        pgembedded.start(data_dir)
        worker.join(180)
        assert not worker.is_alive()
        # A restart is an outage of half a second: the run rides it out (its database
        # retries) and ends with its summary, no row failed for it.
        assert "error" not in outcome, f"the run failed on the restart: {outcome['error']!r}"
        first = outcome["summary"]
        assert first.failed == 0 and first.embedded > 300, first
        provider.latency_s = 0
        expire_leases(url)  # the leases of slices that were in flight at the restart
        rest = env.backfill()
        assert first.embedded + rest.embedded == 2000, "each row counted once, by the run that stored it"
        st = env.status()
        assert (st.embedded, st.pending, st.failed) == (2000, 0, 0)
        texts = env.texts()
        for key, vector in env.vectors().items():
            np.testing.assert_allclose(vector, provider.expected_vector(texts[key]), atol=1e-6)
        resent = len(provider.inputs) - len(set(provider.inputs))
        assert resent <= 100, f"{resent} texts sent twice (at most the requests in flight at the restart)"
    finally:
        pgembedded.stop(data_dir)


def test_ctrl_c_stops_a_run_within_seconds_and_gives_its_claims_back(env, tmp_path, local_prefect_home):
    env.make_table(400)
    env.create_job(settings_kw={"max_inputs": 20, "concurrency": 2, "retries": 1})
    env.provider.latency_s = 1.0
    child_env = backfill_env(env, tmp_path, local_prefect_home)
    # As from a terminal: SIGINT handled by default even if this test process ignores it
    # (a child inherits an ignored SIGINT, and Python then never raises KeyboardInterrupt).
    proc = subprocess.Popen(
        [sys.executable, "-m", "vectorfill.cli", "backfill", "docs"],
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        wait_until_rows_are_leased(env, proc, proc.stdout.read)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        requests_at_signal = env.provider.requests
        proc.wait(60)
        exited_after = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    output = proc.stdout.read()
    assert proc.returncode == 130, output
    assert env.provider.requests - requests_at_signal <= 2, "the run went on sending after Ctrl-C"
    assert env.status().embedded < 400, "the run was stopped, not finished"
    # at exit the process drains Prefect's log and event queues, no more
    assert exited_after < 30, f"the process took {exited_after:.1f} s to exit"
    st = env.status()
    assert st.embedded + st.pending == 400
    assert leased_rows(env) == 0, "claims are given back, not left to expire"
    env.provider.latency_s = 0
    env.backfill()
    assert env.status().embedded == 400


@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_sigterm_stops_a_run_like_ctrl_c_and_gives_its_claims_back(env, tmp_path, sigint, local_prefect_home):
    """Prefect's runners and workers, systemd, Docker and Kubernetes stop a process with
    SIGTERM. With SIGINT ignored (a process started in the background), the run must stop
    all the same."""
    env.make_table(400)
    # with a shared rate budget, which the run gives back too on its way out
    env.create_job(settings_kw={"max_inputs": 20, "concurrency": 2, "retries": 1, "tpm": 1_000_000})
    env.provider.latency_s = 1.0
    child_env = backfill_env(env, tmp_path, local_prefect_home)
    disposition = signal.SIG_DFL if sigint == "default" else signal.SIG_IGN
    log = tmp_path / "out.txt"
    with open(log, "w") as out:  # a file, not a pipe: a process left behind cannot block the test
        proc = subprocess.Popen(
            [sys.executable, "-m", "vectorfill.cli", "backfill", "docs"],
            env=child_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, disposition),
        )
    try:
        wait_until_rows_are_leased(env, proc, log.read_text)
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        requests_at_signal = env.provider.requests
        proc.wait(60)
        exited_after = time.monotonic() - sent
        left_behind = True  # a child the CLI started in its group, say
        while left_behind and time.monotonic() < sent + 60:
            try:
                os.killpg(proc.pid, 0)
                time.sleep(0.2)
            except ProcessLookupError:
                left_behind = False
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left in the CLI's group
        except ProcessLookupError:
            pass
        proc.wait(10)
    output = log.read_text()
    assert proc.returncode == 143, output
    assert not left_behind, "the process left a child running in its group"
    assert "terminated (SIGTERM)" in output, output
    assert env.provider.requests - requests_at_signal <= 2, "the run went on sending after SIGTERM"
    assert exited_after < 30, f"the process took {exited_after:.1f} s to exit"
    st = env.status()
    assert st.embedded < 400, "the run was stopped, not finished"
    assert st.embedded + st.pending == 400
    assert leased_rows(env) == 0, "claims are given back, not left to expire"
    env.provider.latency_s = 0
    env.backfill()
    assert env.status().embedded == 400
