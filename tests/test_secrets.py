"""The API key never reaches logs, Prefect parameters, artifacts, exceptions or the database."""

from __future__ import annotations

import asyncio
import logging

import pytest
from psycopg import sql

from conftest import API_KEY
from vectorfill.errors import AuthenticationError


def test_the_api_key_appears_nowhere_after_a_run(env, caplog):
    env.make_table(50)
    env.create_job()
    with caplog.at_level(logging.DEBUG):
        env.backfill()
        env.provider.fail_next(1, status=401)
        with env.connect() as conn:
            conn.execute("UPDATE articles SET body = 'x' WHERE id = 1")
        with pytest.raises(AuthenticationError) as info:  # the 401 run: its error must not carry the key
            env.backfill()
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

    # Prefect: flow-run parameters, artifacts and logs kept by the server
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    async def prefect_records():
        async with get_client() as client:
            runs = await client.read_flow_runs(limit=200, sort=FlowRunSort.START_TIME_DESC)
            # raw filters: this Prefect's client sends null sorts its own server refuses
            artifacts = (
                await client._client.post("/artifacts/filter", json={"limit": 200, "sort": "CREATED_DESC"})
            ).json()
            logs = (await client._client.post("/logs/filter", json={"limit": 200, "sort": "TIMESTAMP_ASC"})).json()
        return runs, artifacts, logs

    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)  # ship the batched run logs before reading them
    runs, artifacts, logs = asyncio.run(prefect_records())
    assert runs and artifacts
    for run in runs:
        assert API_KEY not in str(run.parameters)
    assert any("backfill" in str(a.get("key")) for a in artifacts)
    assert API_KEY not in str(artifacts)
    assert logs and API_KEY not in str(logs)
    # the run's own lines are among them: a line per batch and the summary (the Logs tab)
    messages = [log["message"] for log in logs]
    assert any(": batch of " in m and " tokens in " in m for m in messages), messages
    assert any("rows embedded in" in m for m in messages), messages
    # and the flow run's name is the job's, with nothing else in it
    named = [run for run in runs if run.flow_id == runs[0].flow_id and run.parameters.get("job")]
    assert named and all(run.name.startswith(run.parameters["job"] + "-") for run in named)
