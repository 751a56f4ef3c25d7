"""The local Prefect server stops by itself once no command has used it for the idle time;
the next command starts it again."""

from __future__ import annotations

import time

import pytest

from local_server_helpers import state
from test_local_server import STARTED, command_env, prefect_servers_of, vf

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]


def test_an_idle_server_stops_and_the_next_command_starts_it(fresh_db, home):
    env = command_env(fresh_db, home)
    env["VECTORFILL_PREFECT_IDLE_HOURS"] = str(20 / 3600)  # 20 s
    assert STARTED in vf(env, "runs", "--json").stderr
    first = state(home)["pid"]
    deadline = time.monotonic() + 240
    while prefect_servers_of(home) and time.monotonic() < deadline:
        time.sleep(2)
    assert not prefect_servers_of(home), "the idle server did not stop"
    assert "no command used this server" in (home / "prefect-server.log").read_text()
    again = vf(env, "runs", "--json")
    assert STARTED in again.stderr and state(home)["pid"] != first
