"""The whole chain, as a user runs it: `vectorfill serve` (Prefect's real server on Postgres,
deployments served from here) -> `job set-model` -> the event triggers the re-embed flow ->
the versions switch -> search answers from the new model; run history survives a restart."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import numpy as np
import pytest

from cli_helpers import Served, free_port, job_on_articles, vf
from conftest import API_KEY
from fake_provider import FakeProvider
from vectorfill.jobs.search import search
from vectorfill.jobs.versions import list_versions
from vectorfill.storage.db import connect

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]  # real processes and servers: the whole module


@pytest.fixture(autouse=True)
def stops_local_prefect(request, tmp_path):
    """Each test's `vectorfill serve` starts the local Prefect server of its home: stop it
    and drop the database it kept its history in."""
    db = request.getfixturevalue("fresh_db") if "fresh_db" in request.fixturenames else None
    yield
    from conftest import stop_local_prefect

    stop_local_prefect(tmp_path / "home", db)


def httpx_alive(api: str) -> bool:
    try:
        httpx.get(f"{api}/health", timeout=2)
        return True
    except httpx.HTTPError:
        return False


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(1)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def test_serve_set_model_event_reembed_switch_search(fresh_db, provider, tmp_path):
    env = job_on_articles(fresh_db, tmp_path, provider.base_url, 120, "--max-inputs", "40")

    port = free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 -- the served process writes to it until stopped
    served = Served(env, port, log, "--cron", "30 3 * * *")
    try:
        served.wait_for_deployments({"backfill-docs", "reembed"})
        deployments = {d["name"]: d for d in httpx.post(f"{served.api}/deployments/filter", json={}).json()}
        assert [s["schedule"]["cron"] for s in deployments["backfill-docs"]["schedules"]] == ["30 3 * * *"]
        assert deployments["backfill-docs"]["parameters"] == {"job": "docs"}
        # serve started the local Prefect server (on --port), which every command shares:
        # a plain CLI backfill records its run there, in the same history
        local = json.loads((tmp_path / "home" / "prefect-local.json").read_text())
        assert local["api_url"] == served.api
        first_run = vf("backfill", "docs", "--json", env=env)
        assert "Started the local Prefect server" not in first_run.stderr
        first = json.loads(first_run.stdout)
        assert first["embedded"] == 120

        with FakeProvider(dimensions=48, api_key=API_KEY, model="fake-embed-v2") as new:
            out = vf(
                "job",
                "set-model",
                "docs",
                "--model",
                "fake-embed-v2",
                "--base-url",
                new.base_url,
                "--no-check",
                env=env,
            ).stdout
            assert "version 2 (fake-embed-v2) is filling, 120 rows queued" in out
            assert f"sent to {served.api}" in out

            def switched():
                with connect(fresh_db) as conn:
                    return {v.version: v.state for v in list_versions(conn, "docs")} == {1: "retired", 2: "active"}

            wait_until(switched, 240, "the event-triggered re-embed and switch")
            assert sorted(new.inputs) == sorted(f"article number {i}" for i in range(1, 121))
            billed_by_run = new.tokens_billed
            with connect(fresh_db) as conn:
                rows = dict(conn.execute("SELECT id, embedding FROM vectorfill.docs").fetchall())
                assert len(rows) == 120
                np.testing.assert_allclose(rows[7].to_numpy(), new.expected_vector("article number 7"), atol=1e-6)
                os.environ["VF_KEY"] = API_KEY
                hits = search(conn, "docs", "article number 7", k=1)
            assert hits[0].id == 7 and new.requests >= 4  # 3 requests + the query, all to the new model

            def completed():
                found = json.loads(vf("runs", "docs", "--json", env=env).stdout)
                done = [r for r in found if r["state"] == "Completed" and r["rows"] is not None]
                return done if len(done) == 2 else None

            runs = wait_until(completed, 90, "both runs completed in the history")
            assert sorted(str(r["deployment"]) for r in runs) == ["None", "reembed"], "a CLI run and a served run"
            reembed = next(r for r in runs if r["deployment"] == "reembed")
            assert reembed["rows"] == 120 and reembed["switched_to"] == 2
            assert reembed["tokens"] == billed_by_run
            assert reembed["cost_usd"] is None, "no price is known for fake-embed-v2: unknown, never 0"
    finally:
        code = served.stop()
    assert code in (0, 130), (tmp_path / "serve.log").read_text()[-3000:]
    assert not (tmp_path / "home" / "prefect-server.json").exists()

    assert httpx_alive(served.api), "the local Prefect server outlives serve, for the next command"
    assert "stopped" in vf("stop", env=env).stdout
    assert not httpx_alive(served.api), "`vectorfill stop` stopped it"

    # history survives a restart of the whole thing
    served = Served(env, port, log)
    try:
        served.wait_for_deployments({"backfill-docs", "reembed"})
        again = json.loads(vf("runs", "docs", "--json", env=env).stdout)
        assert {r["name"] for r in again} >= {r["name"] for r in runs}
    finally:
        code = served.stop(signal.SIGTERM)
        log.close()
    assert code == 143, (tmp_path / "serve.log").read_text()[-3000:]  # the README's exit code for SIGTERM


def test_prefect_yaml_declares_what_serve_serves():
    """`vectorfill serve` serves what deployments/prefect.yaml (for work pools) declares, read
    from the installed package: same flow, deployments, parameters and limits, a scheduled
    backfill, and the re-embed triggered by the set-model event."""
    from pathlib import Path

    import yaml
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
    from prefect.utilities.importtools import import_object

    from vectorfill.flows.backfill import backfill
    from vectorfill.flows.documents import documents_sync
    from vectorfill.orchestration.events import MODEL_CHANGED
    from vectorfill.orchestration.serve import build_deployments

    spec = yaml.safe_load((Path(__file__).parents[2] / "deployments" / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert {"backfill-docs", "reembed"} <= set(deployments)
    for d in deployments.values():
        assert import_object(d["entrypoint"]) is (documents_sync if "documents" in d["tags"] else backfill)
    assert deployments["backfill-docs"]["schedules"][0]["cron"] == "0 2 * * *"
    (trigger,) = deployments["reembed"]["triggers"]
    parsed = DeploymentEventTrigger(**{k: v for k, v in trigger.items() if k != "type"})
    declared_sync = deployments["documents-sync-documents"]["parameters"]
    served = {
        d.name: d
        for d in build_deployments(
            ["docs"], batch_jobs=["docs"], documents=[(declared_sync["source"], declared_sync["table"])]
        )
    }
    assert set(served) == set(deployments)  # one declaration: serve makes exactly what the file declares
    for name, declared in deployments.items():
        assert served[name].parameters == declared.get("parameters", {})
        assert set(served[name].tags) >= set(declared["tags"])
        assert served[name].concurrency_limit == declared.get("concurrency_limit")
    assert {d.name for d in build_deployments(["a", "b"], reembed=False)} == {"backfill-a", "backfill-b"}
    (served_trigger,) = served["reembed"].triggers
    assert parsed.expect == served_trigger.expect == {MODEL_CHANGED}
    assert parsed.parameters == served_trigger.parameters == {"job": "{{ event.payload.job }}"}
    assert dict(parsed.match) == dict(served_trigger.match)
    assert served["backfill-docs"].parameters == {"job": "docs"}


def test_a_run_cancelled_from_prefect_stops_within_seconds_and_gives_its_claims_back(
    fresh_db, tmp_path, served_on_session_server
):
    with FakeProvider(dimensions=32, api_key=API_KEY, latency_s=0.3) as slow:
        env = job_on_articles(fresh_db, tmp_path, slow.base_url, 4000, "--max-inputs", "20", "--concurrency", "2")
        env["PREFECT_API_URL"] = served_on_session_server  # the session's server: serve starts none
        log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 -- the served process writes to it until stopped
        served = Served(env, free_port(), log)
        try:
            served.wait_for_deployments({"backfill-docs"})
            dep = next(
                d
                for d in httpx.post(f"{served.api}/deployments/filter", json={}).json()
                if d["name"] == "backfill-docs"
            )
            run = httpx.post(f"{served.api}/deployments/{dep['id']}/create_flow_run", json={}).json()

            def embedded():
                with connect(fresh_db) as conn:
                    return conn.execute("SELECT count(*) FROM vectorfill.docs").fetchone()[0]

            wait_until(lambda: embedded() >= 100, 180, "the served run to embed some rows")
            cancelled_at = time.monotonic()
            httpx.post(
                f"{served.api}/flow_runs/{run['id']}/set_state",
                json={"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True},
            ).raise_for_status()

            def state():
                return httpx.get(f"{served.api}/flow_runs/{run['id']}").json()["state"]["type"]

            wait_until(lambda: state() == "CANCELLED", 60, "the run to be cancelled")
            requests_then = slow.requests
            time.sleep(3)
            assert slow.requests == requests_then, "no request after the run was cancelled"
            stopped_in = time.monotonic() - cancelled_at
            print(f"cancelled run stopped in {stopped_in:.1f} s")
            assert stopped_in < 45, f"took {stopped_in:.0f} s to stop"
            with connect(fresh_db) as conn:
                held = conn.execute("SELECT count(*) FROM vectorfill._q_1_1 WHERE lease_until > now()").fetchone()[0]
                done = embedded()
            assert held == 0, "the cancelled run gave its claims back"
            assert 100 <= done < 4000
        finally:
            served.stop()
            log.close()
        # the queue is consistent: a new run finishes the rest at once, each row right
        slow.latency_s = 0.0
        summary = json.loads(vf("backfill", "docs", "--json", env=env).stdout)
        assert summary["embedded"] == 4000 - done and summary["pending"] == 0
        with connect(fresh_db) as conn:
            rows = dict(conn.execute("SELECT id, embedding FROM vectorfill.docs").fetchall())
        assert len(rows) == 4000
        for i in (1, 2000, 4000):
            np.testing.assert_allclose(rows[i].to_numpy(), slow.expected_vector(f"article number {i}"), atol=1e-6)
