"""The API key never reaches logs, Prefect parameters, state messages, artifacts,
exceptions, the CLI's output or the database."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time

import pytest
from psycopg import sql

from conftest import API_KEY
from vectorfill.errors import AuthenticationError


def _run_state(job: str):
    """Run the backfill flow in-process; its final state (failed or not) and flow run id."""
    from vectorfill.flows.backfill import backfill

    state = asyncio.run(backfill(job, return_state=True))
    return state, state.state_details.flow_run_id


def _prefect_records(flow_run_ids: list) -> dict:
    """What the Prefect server kept of these flow runs: the runs, every state of them and of
    their task runs, their artifacts and their logs, as the server returns them (raw
    filters: this Prefect's client sends null sorts its own server refuses)."""
    from prefect.client.orchestration import get_client

    ids = [str(i) for i in flow_run_ids]

    async def read() -> dict:
        async with get_client() as client:
            api = client._client
            runs = [(await api.get(f"/flow_runs/{i}")).raise_for_status().json() for i in ids]
            flow_states = [(await api.get("/flow_run_states/", params={"flow_run_id": i})).json() for i in ids]
            task_runs = (
                await api.post(
                    "/task_runs/filter",
                    json={"flow_runs": {"id": {"any_": ids}}, "limit": 200, "sort": "EXPECTED_START_TIME_DESC"},
                )
            ).json()
            task_states = [
                (await api.get("/task_run_states/", params={"task_run_id": t["id"]})).json() for t in task_runs
            ]
            artifacts = (
                await api.post(
                    "/artifacts/filter",
                    json={"artifacts": {"flow_run_id": {"any_": ids}}, "limit": 200, "sort": "CREATED_DESC"},
                )
            ).json()
            logs = {
                i: (
                    await api.post(
                        "/logs/filter",
                        json={"logs": {"flow_run_id": {"any_": [i]}}, "limit": 200, "sort": "TIMESTAMP_ASC"},
                    )
                ).json()
                for i in ids
            }
        return {
            "runs": runs,
            "flow_states": flow_states,
            "task_runs": task_runs,
            "task_states": task_states,
            "artifacts": artifacts,
            "logs": logs,
        }

    return asyncio.run(read())


def test_the_api_key_appears_nowhere_after_a_run(env, caplog):
    env.make_table(50)
    env.create_job()
    with caplog.at_level(logging.DEBUG):
        state, ok_run = _run_state("docs")
        assert state.is_completed() and state.result().embedded == 50
        env.provider.fail_next(1, status=401)
        with env.connect() as conn:
            conn.execute("UPDATE articles SET body = 'x' WHERE id = 1")
        state, refused_run = _run_state("docs")  # the 401 run: its error must not carry the key
        assert state.is_failed()
        with pytest.raises(AuthenticationError) as info:
            state.result()
        assert API_KEY not in str(info.value) and API_KEY not in repr(info.value.args)
    assert API_KEY not in caplog.text

    # the database: every row of every vectorfill table, as text
    with env.connect() as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE nspname = 'vectorfill' AND relkind = 'r'"
            )
        ]
        for t in tables:
            for (row,) in conn.execute(sql.SQL("SELECT t::text FROM {} t").format(sql.Identifier("vectorfill", t))):
                assert API_KEY not in row, f"key found in vectorfill.{t}"

    # Prefect: what the server kept of these two runs, and of nothing else
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)  # ship the batched run logs before reading them

    def recorded(kept: dict) -> bool:  # the server records task runs a little after they end
        failed = [t for t in kept["task_runs"] if t["state"]["type"] == "FAILED"]
        return any(t["flow_run_id"] == str(refused_run) for t in failed) and bool(kept["logs"][str(refused_run)])

    deadline = time.monotonic() + 60
    while not recorded(kept := _prefect_records([ok_run, refused_run])) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert recorded(kept), kept["task_runs"]
    assert [r["state"]["type"] for r in kept["runs"]] == ["COMPLETED", "FAILED"]
    assert API_KEY not in str(kept["runs"]), "in a flow run: its parameters, name or state message"
    # every state each run went through, and every state of each of their task runs
    messages = [s.get("message") or "" for states in kept["flow_states"] + kept["task_states"] for s in states]
    assert kept["task_runs"] and len(kept["task_states"]) == len(kept["task_runs"])
    assert any("401" in m for m in messages), "the 401 run's failure is among the state messages read"
    assert all(API_KEY not in m for m in messages)
    assert API_KEY not in str(kept["task_runs"])
    assert any("backfill" in str(a.get("key")) for a in kept["artifacts"])
    assert API_KEY not in str(kept["artifacts"])
    # the runs' own log lines, each run's by its id (the Logs tab)
    ok_lines = [log["message"] for log in kept["logs"][str(ok_run)]]
    refused_lines = [log["message"] for log in kept["logs"][str(refused_run)]]
    assert any(": slice of " in m and " tokens in " in m for m in ok_lines), ok_lines
    assert any("rows embedded in" in m for m in ok_lines), ok_lines
    assert any("401" in m for m in refused_lines), refused_lines
    assert all(API_KEY not in m for m in ok_lines + refused_lines)
    # and the flow runs' names are the job's, with nothing else in them
    assert all(r["name"].startswith("docs-") for r in kept["runs"])

    # the CLI, as a user runs it: neither its output nor its error output carries the key
    env.provider.fail_next(1, status=401)
    with env.connect() as conn:
        conn.execute("UPDATE articles SET body = 'y' WHERE id = 2")
    done = subprocess.run(
        [sys.executable, "-m", "vectorfill.cli", "backfill", "docs"],
        env=dict(os.environ),  # the test's: database, key variable and the session's Prefect server
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "401" in done.stdout + done.stderr and "VF_TEST_API_KEY" in done.stdout + done.stderr
    assert API_KEY not in done.stdout and API_KEY not in done.stderr
