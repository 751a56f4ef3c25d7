"""The local Prefect server: one per VECTORFILL_HOME, started on first need by any command,
kept across commands, restarted when killed, stopped by `vectorfill stop`; and what a person
reads of a run in Prefect: its name and its log lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import stop_local_prefect
from local_server_helpers import answers, state

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]  # real processes and servers: the whole module

STARTED = "Started the local Prefect server"


def command_env(db_url: str, home: Path) -> dict:
    env = dict(os.environ, VECTORFILL_DATABASE_URL=db_url, VECTORFILL_HOME=str(home), PREFECT_HOME=str(home / "p"))
    env["COLUMNS"] = "250"  # no line wrapped inside a path the assertions look for (tmp paths vary in length)
    env.pop("PREFECT_API_URL", None)
    return env


def vf(env: dict, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "vectorfill.cli", *args], env=env, capture_output=True, text=True, timeout=400
    )
    assert proc.returncode == 0, f"vectorfill {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def processes_of(home: Path) -> list[psutil.Process]:
    """Every process on the machine whose environment names ``home`` as VECTORFILL_HOME."""
    found = []
    for p in psutil.process_iter():
        if p.pid == os.getpid():
            continue
        try:
            if p.environ().get("VECTORFILL_HOME") == str(home) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


def prefect_servers_of(home: Path) -> list[psutil.Process]:
    servers = []
    for p in processes_of(home):
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if "prefect" in cmd and "server" in cmd and "start" in cmd:
            servers.append(p)
    return servers


@pytest.mark.slow
def test_commands_racing_to_start_the_local_server_get_one_server(fresh_db, home):
    env = command_env(fresh_db, home)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "vectorfill.cli", "runs", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=400) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert [json.loads(out) for out, _ in outputs] == [[], [], []]
    assert sum(STARTED in err for _, err in outputs) == 1, "one of them started it, the UI URL printed once"
    servers = prefect_servers_of(home)
    assert [p.pid for p in servers] == [state(home)["pid"]], "one server, the one in the state file"
    # a later command reuses it, silently
    again = vf(env, "runs", "--json")
    assert STARTED not in again.stderr and [p.pid for p in prefect_servers_of(home)] == [state(home)["pid"]]


@pytest.mark.slow
def test_a_killed_server_is_restarted_by_the_next_command_and_a_stale_state_file_is_ignored(fresh_db, home):
    env = command_env(fresh_db, home)
    vf(env, "runs")
    first = state(home)
    os.kill(first["pid"], signal.SIGKILL)
    psutil.wait_procs([psutil.Process(first["pid"])], timeout=10)

    out = vf(env, "runs", "--json")
    assert STARTED in out.stderr
    second = state(home)
    assert second["pid"] != first["pid"] and answers(second["api_url"])
    assert [p.pid for p in prefect_servers_of(home)] == [second["pid"]]

    # a state file whose pid now belongs to another process (a reboot, say) is stale: that
    # process is left alone and a server is started
    vf(env, "stop")
    (home / "prefect-local.json").write_text(json.dumps({**second, "pid": os.getpid(), "create_time": 1.0}))
    out = vf(env, "runs", "--json")
    assert STARTED in out.stderr
    third = state(home)
    assert third["pid"] not in (os.getpid(), second["pid"]) and answers(third["api_url"])


@pytest.mark.slow
def test_stop_leaves_no_process_behind(fresh_db, home):
    env = command_env(fresh_db, home)
    vf(env, "runs")
    api = state(home)["api_url"]
    assert prefect_servers_of(home)
    out = vf(env, "stop").stdout
    assert "local Prefect server" in out and "stopped" in out
    deadline = time.monotonic() + 10
    while processes_of(home) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_of(home) == [], "no process left"
    assert not answers(api)
    assert not (home / "prefect-local.json").exists()
    assert "was not running" in vf(env, "stop").stdout


def test_with_prefect_api_url_set_nothing_is_started(fresh_db, home, prefect_server):
    from prefect.settings import PREFECT_API_URL

    env = command_env(fresh_db, home)
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()  # the session's server (another home's)
    assert isinstance(json.loads(vf(env, "runs", "--json").stdout), list)
    assert not (home / "prefect-local.json").exists() and prefect_servers_of(home) == []


@pytest.mark.slow
def test_a_role_that_cannot_create_the_database_gets_sqlite_and_is_told_so(fresh_db, home):
    import psycopg
    from psycopg import sql

    from conftest import database_url

    role = f"vf_nocreatedb_{os.getpid()}"
    with psycopg.connect(database_url(fresh_db, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOCREATEDB").format(sql.Identifier(role)))
    try:
        parts = fresh_db.split("://", 1)[1].split("@", 1)[1]
        as_role = f"postgresql://{role}@{parts}"  # trust auth in the test cluster: no password
        out = vf(command_env(as_role, home), "runs", "--json")
        assert STARTED in out.stderr
        assert "may not create" in out.stderr and "prefect.db" in out.stderr
        assert state(home)["database"] == f"sqlite:{home / 'prefect.db'}"
        assert (home / "prefect.db").exists()
    finally:
        stop_local_prefect(home)
        with psycopg.connect(database_url(fresh_db, "postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
