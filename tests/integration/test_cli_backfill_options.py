"""`vectorfill backfill`'s flow options (--batch/--online, --wait/--no-wait, --poll) reach the
flow the same way whether it runs here, as --workers flow runs, or on a --pool.

The runners are replaced by recorders: what is checked is what the command hands them."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from conftest import Env
from vectorfill.cli.app import app
from vectorfill.orchestration import api, fanout, runtime


class Recorded(Exception):
    """Ends a run here once its call is recorded (there is no summary to print)."""


@pytest.fixture
def recorded(migrated_db, provider, monkeypatch) -> list[tuple[str, dict]]:
    """Job ``docs`` (the Batch API its default) and the runners' calls, recorded instead of run."""
    monkeypatch.setenv("VECTORFILL_DATABASE_URL", migrated_db)
    env = Env(migrated_db, provider)
    env.make_table(10)
    env.create_job(settings_kw={"batch": True, "retries": 1})
    calls: list[tuple[str, dict]] = []

    def run_backfill(url, job, **kw):
        calls.append(("here", kw))
        raise Recorded

    def run_on_pool(job, workers, pool, **kw):
        calls.append(("pool", {"workers": workers, "pool": pool, **kw}))
        return []

    monkeypatch.setattr(api, "use_api", lambda url, announce=None: None)  # no Prefect server
    monkeypatch.setattr(api, "use_api_while", lambda url, prepare, announce=None: prepare())
    monkeypatch.setattr(runtime, "prefect_defaults", lambda **kw: None)
    monkeypatch.setattr(runtime, "run_backfill", run_backfill)
    monkeypatch.setattr(fanout, "run_on_pool", run_on_pool)
    return calls


@pytest.mark.parametrize(
    ("options", "flow", "pool_wait"),
    [
        (["--online", "--no-wait", "--poll", "0.5"], {"batch": False, "wait": False, "poll_s": 0.5}, False),
        (["--batch", "--wait"], {"batch": True, "wait": True, "poll_s": 30.0}, True),
        ([], {"batch": None, "wait": False, "poll_s": 30.0}, True),
    ],
)
def test_workers_and_pool_runs_get_the_same_flow_options_as_a_run_here(recorded, options, flow, pool_wait):
    for where in ([], ["--workers", "2"]):
        result = CliRunner().invoke(app, ["backfill", "docs", *where, *options, "--json"])
        assert isinstance(result.exception, Recorded), result.output
    result = CliRunner().invoke(app, ["backfill", "docs", "--workers", "2", "--pool", "p", *options, "--json"])
    assert result.exit_code == 0, result.output
    (_, here), (_, workers), (_, pool) = recorded
    assert {k: here[k] for k in flow} == flow and here["workers"] == 1
    assert {k: workers[k] for k in flow} == flow and workers["workers"] == 2
    assert pool == {"workers": 2, "pool": "p", "max_rows": None, "flow_kw": flow, "wait": pool_wait}
