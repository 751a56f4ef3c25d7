"""`vectorfill` as a user runs it, for the tests of commands and servers: a command in a
subprocess, a user's shell environment, `vectorfill serve` in the background, a job on a table."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx

from conftest import API_KEY
from vectorfill.storage.db import connect, migrate


def vf(*args, env=None, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "vectorfill.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"vectorfill {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def user_env(db_url: str, tmp_path, home=None) -> dict:
    """The environment of a user's shell: the database, the key in VF_KEY, state in tmp_path
    (vectorfill's in ``home`` if given: where the local Prefect server runs)."""
    env = dict(os.environ)
    env.update(
        VECTORFILL_DATABASE_URL=db_url,
        VF_KEY=API_KEY,
        PREFECT_HOME=str(tmp_path / "prefect"),
        VECTORFILL_HOME=str(home or tmp_path / "home"),
    )
    env.pop("PREFECT_API_URL", None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """`vectorfill serve` in a subprocess, and its Prefect API: the PREFECT_API_URL of ``env``,
    else the local server it starts on ``port``."""

    def __init__(self, env: dict, port: int, log, *args: str) -> None:
        self.env, self.port, self.log = env, port, log
        self.api = env.get("PREFECT_API_URL") or f"http://127.0.0.1:{port}/api"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vectorfill.cli", "serve", "--port", str(port), *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Ctrl-C must reach it: under the full suite this process may ignore SIGINT, and
            # an ignored signal is inherited
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )

    def wait_for_deployments(self, names: set[str], timeout: float = 400) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "vectorfill serve exited early"
            try:
                found = httpx.post(f"{self.api}/deployments/filter", json={}, timeout=5).json()
                if names <= {d["name"] for d in found}:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(1)
        raise AssertionError(f"deployments {names} not served within {timeout} s")

    def stop(self, sig: int = signal.SIGINT) -> int:
        """Stop it as a user would: Ctrl-C (SIGINT to the group) or SIGTERM (systemd, kill)."""
        os.killpg(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise


def job_on_articles(db_url: str, tmp_path, base_url: str, rows: int, *options: str) -> dict:
    """A migrated database with `rows` articles and the job `docs` on them; the user's env."""
    env = user_env(db_url, tmp_path)
    migrate(db_url)
    with connect(db_url) as conn:
        conn.execute("CREATE TABLE articles (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO articles SELECT g, 'article number ' || g FROM generate_series(1, %s) g", (rows,))
    create_docs_job(env, base_url, *options)
    return env


def create_docs_job(env: dict, base_url: str, *options: str, key_env: str = "VF_KEY"):
    """`vectorfill job create docs` embedding articles.body with fake-embed at ``base_url``,
    its key in ``key_env``."""
    create = ["job", "create", "docs", "--table", "articles", "--text", "body", "--model", "fake-embed"]
    return vf(*create, "--base-url", base_url, "--api-key-env", key_env, *options, env=env)
