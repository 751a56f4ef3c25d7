"""The local Prefect server in this process: a server of another home on the port is not
taken for ours; and what a person reads of a run in Prefect: its name and its log lines."""

from __future__ import annotations

import asyncio
import re

import pytest

from local_server_helpers import answers, state

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]  # real processes and servers: the whole module


def test_a_server_of_another_home_on_the_port_is_not_taken_for_ours(fresh_db, home, monkeypatch):
    """Two homes racing for Prefect's default port (two users, or test workers, on one machine):
    the one that loses sees the winner's server answer there. It must not record that server
    as its own (its own died on the port and it would use another home's history): it starts
    again on a free port."""
    from vectorfill.local.embeddings_server.runner import ServerThread
    from vectorfill.orchestration import local_server

    async def health(scope, receive, send):  # another server that answers /api/health
        if scope["type"] == "http":
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": b"true"})
        elif scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})

    monkeypatch.setenv("VECTORFILL_HOME", str(home))
    home.mkdir()
    with ServerThread(health) as other:
        assert answers(f"{other.url}/api")
        monkeypatch.setattr(local_server, "_pick_port", lambda port: other.port)  # as if it were free when checked
        server = local_server.ensure(fresh_db, announce=lambda _: None)
        try:
            assert server.port != other.port
            assert local_server._listens(server.pid, server.port) and answers(server.api_url)
            assert state(home)["pid"] == server.pid and state(home)["port"] == server.port
        finally:
            local_server.stop()


def test_runs_are_named_after_their_job_and_log_each_slice_and_a_summary(env):
    """The UI shows a run named after its job and, in its Logs tab, a line per slice and the
    summary (counts only)."""
    env.make_table(5000)
    env.create_job(settings_kw={"max_inputs": 1000, "retries": 1})  # slices of 4,096 rows: two here
    summary = env.backfill()
    assert summary.embedded == 5000

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort, LogSort
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)

    async def read():
        async with get_client() as client:
            run = (await client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1))[0]
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])),
                sort=LogSort.TIMESTAMP_ASC,
                limit=200,
                offset=0,
            )
        return run, [log.message for log in logs]

    run, messages = asyncio.run(read())
    assert run.parameters["job"] == "docs"
    assert re.fullmatch(r"docs-\d{4}-\d\d-\d\dT\d\d:\d\d", run.name), run.name
    assert run.name == f"docs-{run.expected_start_time:%Y-%m-%dT%H:%M}"
    slices = [m for m in messages if ": slice of " in m]
    assert len(slices) == 2, messages
    assert any(m.startswith("docs v1: slice of 4,096 rows: 4,096 embedded") for m in slices), slices
    assert any(m.startswith("docs v1: slice of 904 rows: 904 embedded") for m in slices), slices
    assert all(re.search(r"tokens in \d+ requests; \d+\.\d\d s, 0 retries$", m) for m in slices), slices
    summaries = [m for m in messages if "rows embedded in" in m]
    assert len(summaries) == 1 and summaries[0].startswith("docs: 5,000 rows embedded in "), messages
    assert "0 still pending" in summaries[0]
