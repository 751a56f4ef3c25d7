"""The flow runs of `backfill --workers N` are named after the job and start, with their part."""

from __future__ import annotations

import asyncio
import datetime
import re

import pytest

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def test_worker_runs_are_named_after_the_job_with_their_part(env):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStartTime
    from prefect.client.schemas.sorting import FlowRunSort

    from vectorfill.orchestration.fanout import run_here

    env.make_table(200)
    env.create_job(settings_kw={"max_inputs": 50, "concurrency": 2, "retries": 1})
    since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    assert asyncio.run(run_here("docs", 2)).embedded == 200

    async def names() -> list[str]:
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)),
                sort=FlowRunSort.START_TIME_DESC,
                limit=50,
            )
            return [r.name for r in runs]

    parts = sorted(n.rsplit("-", 1)[1] for n in asyncio.run(names()) if re.fullmatch(r"docs-[\d-]+T\d\d:\d\d-w\d", n))
    assert parts == ["w1", "w2"]
