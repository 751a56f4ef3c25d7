"""`vectorfill serve --sync` as a process: SIGTERM gives back its claims and budget, and a
sync killed mid-slice and restarted finishes every row (the sync in this process:
test_sync.py)."""

from __future__ import annotations

import collections
import contextlib

import pytest

from conftest import API_KEY
from fake_provider import FakeProvider
from sync_helpers import in_step, leased, queued, wait_until

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]  # serve --sync processes and waits


# --------------------------------------------------------------------- part 5: re-embeds


# --------------------------------------------------------------------- part 4: sync


# --------------------------------------------------------------------- serve --sync, as a user runs it


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigterm_of_serve_sync_gives_back_claims_and_budget(fresh_db, tmp_path, served_on_session_server):
    import signal

    from cli_helpers import Served, free_port, job_on_articles
    from vectorfill.storage.db import connect

    def leased_rows() -> int:
        with connect(fresh_db) as conn:
            return conn.execute("SELECT count(*) FROM vectorfill._q_1_1 WHERE lease_until > now()").fetchone()[0]

    with FakeProvider(dimensions=32, api_key=API_KEY, latency_s=1.0) as slow:
        env = job_on_articles(
            fresh_db, tmp_path, slow.base_url, 400, "--max-inputs", "20", "--concurrency", "2", "--tpm", "1000000"
        )
        log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 -- the served process writes to it until stopped
        # the test session's Prefect server: serve starts none (and leaves none behind)
        served = Served({**env, "PREFECT_API_URL": served_on_session_server}, free_port(), log, "--sync", "--cron", "")
        try:

            def mid_slice() -> bool:
                with connect(fresh_db) as conn:
                    done = conn.execute("SELECT count(*) FROM vectorfill._v_1_1").fetchone()[0]
                return done > 0 and leased_rows() > 0

            wait_until(mid_slice, 400, "serve --sync to be mid-slice", every=0.2)
            assert served.proc.poll() is None
            with connect(fresh_db) as conn:
                signalled_at = conn.execute("SELECT now()").fetchone()[0]
            requests = slow.requests
            code = served.stop(signal.SIGTERM)
        finally:
            if served.proc.poll() is None:
                served.stop(signal.SIGKILL)
            log.close()
        output = (tmp_path / "serve.log").read_text(errors="replace")
        assert code == 143, output[-3000:]  # the README's exit code for SIGTERM
        assert slow.requests - requests <= 2, "no request after SIGTERM"
        assert leased_rows() == 0, "claims given back, not left to expire"
        with connect(fresh_db) as conn:
            (updated_at,) = conn.execute("SELECT updated_at FROM vectorfill.budgets").fetchone()
            embedded = conn.execute("SELECT count(*) FROM vectorfill.docs").fetchone()[0]
        assert updated_at > signalled_at, "the unspent shared budget was given back on the way out"
        assert 0 < embedded < 400


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_serve_sync_killed_mid_slice_and_restarted_finishes_every_row(env, tmp_path, served_on_session_server):
    """A crash (SIGKILL) leaves the claims leased; a restarted `serve --sync` takes them over
    once their leases expire, and every row ends right, as after a crashed backfill."""
    import os
    import signal
    import subprocess
    import sys

    env.make_table(300)
    env.create_job(settings_kw={"max_inputs": 20, "concurrency": 2, "retries": 1, "lease_s": 10})
    env.provider.latency_s = 0.5
    child_env = dict(
        os.environ,
        VECTORFILL_DATABASE_URL=env.url,
        VF_TEST_API_KEY=API_KEY,
        PREFECT_API_URL=served_on_session_server,  # the test session's server: serve starts none
        PREFECT_HOME=str(tmp_path / "prefect"),
        VECTORFILL_HOME=str(tmp_path / "home"),
    )

    (tmp_path / "home").mkdir()

    def start() -> subprocess.Popen:
        with open(tmp_path / "serve.log", "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "vectorfill.cli", "serve", "docs", "--sync", "--cron", ""],
                env=child_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    proc = start()
    try:

        def mid_slice() -> bool:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            return leased(env) > 0 and env.status().embedded > 0

        wait_until(mid_slice, 300, "sync to be mid-slice", every=0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        # What the dead process had in flight: the rows it held claimed (sent, or about to
        # be, and not stored), read before anything else can claim them.
        with env.connect() as conn:
            in_flight = {k for (k,) in conn.execute("SELECT k1 FROM vectorfill._q_1_1 WHERE lease_until > now()")}
            stored = {k for (k,) in conn.execute("SELECT id FROM vectorfill.docs")}
        sent_before = len(env.provider.inputs)
        assert in_flight, "a crash leaves its claims leased"
        assert stored and not in_flight & stored
        proc = start()
        wait_until(lambda: in_step(env, env.provider), 300, "the restarted sync to finish every row", every=0.5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    inputs = env.provider.inputs
    texts = env.texts()
    times_sent = collections.Counter(inputs)
    sent_again = {text for text, n in times_sent.items() if n > 1}
    assert sent_again <= {texts[k] for k in in_flight}, "only rows in flight at the crash were sent again"
    assert not sent_again & {texts[k] for k in stored}, "no row stored before the crash was paid for twice"
    assert all(times_sent[t] == 2 for t in sent_again), "sent again once, by the restarted sync"
    assert set(inputs[:sent_before]) >= sent_again, "each was first sent by the process that died"
    assert queued(env, 1) == 0 and leased(env) == 0
