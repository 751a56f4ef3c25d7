"""``vectorfill serve``: a Prefect server that keeps history, and vectorfill's deployments served from here.

Prefect's temporary server runs no schedules and its SQLite database stalls under load, so
``serve`` starts Prefect's real server (``prefect server start``, installed with Prefect)
on a Postgres database next to vectorfill's own: ``<database>_prefect`` in the same
cluster (the embedded one by default), created on first use. History survives restarts.

It then serves, from this process (a Prefect runner; no work pool needed):

``backfill-<job>``
    for every job: a scheduled backfill (``--cron``, nightly by default);
``reembed``
    triggered by the event ``vectorfill.model.changed`` that ``vectorfill job set-model``
    emits: it runs the backfill flow for the job named in the event, which fills the new
    version and switches readers to it once complete.

Flow runs are subprocesses that inherit this process's environment: the database URL and
the API keys come from there, never from deployment parameters. While ``serve`` runs, its
API URL is written to ``$VECTORFILL_HOME/prefect-server.json``, so that other vectorfill
commands on this machine (``backfill``, ``runs``, ``job set-model``) use the same server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql as pgsql

from vectorfill.config import DATABASE_URL_ENV
from vectorfill.errors import ConfigError, DatabaseError
from vectorfill.orchestration.api import _healthy, _home, _state_path, served_api_url, use_served_api
from vectorfill.orchestration.events import MODEL_CHANGED

__all__ = [
    "DEFAULT_CRON",
    "ServedServer",
    "build_deployments",
    "prefect_database_url",
    "serve",
    "served_api_url",
    "start_prefect_server",
    "use_served_api",
]

DEFAULT_CRON = "0 2 * * *"
DEFAULT_PORT = 4200
_START_TIMEOUT_S = 300.0  # the first start migrates Prefect's database


def prefect_database_url(url: str) -> tuple[str, str]:
    """(SQLAlchemy asyncpg URL of Prefect's database, its name) next to vectorfill's ``url``."""
    parts = urlsplit(url)
    vf_db = parts.path.lstrip("/") or "postgres"
    name = f"{vf_db}_prefect"
    return urlunsplit(parts._replace(scheme="postgresql+asyncpg", path="/" + name)), name


def _ensure_database(url: str, name: str) -> None:
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
    except psycopg.Error as exc:
        raise DatabaseError(
            f"cannot create Prefect's database {name!r} next to vectorfill's: "
            f"{str(exc).strip().splitlines()[0]}. Grant CREATEDB, create it yourself, or point "
            "PREFECT_API_URL at a Prefect server you run"
        ) from None


@dataclass
class ServedServer:
    api_url: str
    process: subprocess.Popen | None
    """None when an already running server was reused."""
    log: Path | None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_prefect_server(url: str, *, port: int = DEFAULT_PORT, announce=print) -> ServedServer:
    """Start ``prefect server start`` on a Postgres database beside vectorfill's ``url``."""
    api_url = f"http://127.0.0.1:{port}/api"
    if _healthy(api_url):
        announce(f"Using the Prefect server already running at {api_url}")
        return ServedServer(api_url, None, None)
    prefect_url, name = prefect_database_url(url)
    _ensure_database(url, name)
    log = _home() / "prefect-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        PREFECT_API_DATABASE_CONNECTION_URL=prefect_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED="true",  # (off only for temporary servers)
    )
    env.pop("PREFECT_API_URL", None)
    announce(f"Starting Prefect's server on database {name!r} (log: {log})")
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not _healthy(api_url):
        if process.poll() is not None:
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-5:])
            raise ConfigError(f"Prefect's server exited with status {process.returncode}: {tail}")
        if time.monotonic() > deadline:
            process.kill()
            raise ConfigError(f"Prefect's server did not answer within {_START_TIMEOUT_S:.0f} s; see {log}")
        time.sleep(0.5)
    return ServedServer(api_url, process, log)


def build_deployments(jobs: list[str], *, cron: str | None = DEFAULT_CRON, reembed: bool = True) -> list:
    """The served deployments: a scheduled backfill per job and (unless ``reembed`` is
    False: ``serve --sync``, whose sync runs fill new versions themselves) the
    event-triggered re-embed."""
    from prefect.deployments.runner import EntrypointType
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    from vectorfill.flows.backfill import backfill

    deployments = [
        backfill.to_deployment(
            name=f"backfill-{job}",
            parameters={"job": job},
            cron=cron,
            tags=["vectorfill", f"job:{job}"],
            description=f"Embed every pending row of the job {job!r}.",
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        for job in jobs
    ]
    if not reembed:
        return deployments
    deployments.append(
        backfill.to_deployment(
            name="reembed",
            triggers=[
                DeploymentEventTrigger(
                    name="vectorfill re-embed on model change",
                    expect={MODEL_CHANGED},
                    match={"prefect.resource.id": "vectorfill.job.*"},
                    parameters={"job": "{{ event.payload.job }}"},
                )
            ],
            tags=["vectorfill", "reembed"],
            description="Re-embed a job with its new model when `vectorfill job set-model` says so.",
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
    )
    return deployments


def serve(
    url: str,
    *,
    jobs: list[str],
    cron: str | None = DEFAULT_CRON,
    port: int = DEFAULT_PORT,
    announce=print,
    sync: bool = False,
    sync_window_s: float | None = None,
) -> None:
    """Run Prefect's server (unless PREFECT_API_URL names one) and serve the deployments
    until interrupted; with ``sync``, also a sync run per job (:mod:`vectorfill.orchestration.sync`)."""
    os.environ[DATABASE_URL_ENV] = url
    server = None
    api_url = os.environ.get("PREFECT_API_URL")
    if not api_url:
        server = start_prefect_server(url, port=port, announce=announce)
        api_url = os.environ["PREFECT_API_URL"] = server.api_url
    state = _state_path()
    state.write_text(json.dumps({"api_url": api_url, "serve_pid": os.getpid()}))
    syncing = None
    try:
        from prefect import serve as prefect_serve

        deployments = build_deployments(jobs, cron=cron, reembed=not sync)
        ui = api_url.removesuffix("/api")
        announce(f"Serving {', '.join(d.name for d in deployments)} from this machine; Prefect UI: {ui} (Ctrl-C stops)")
        if sync and jobs:
            from vectorfill.orchestration.sync import SyncSupervisor

            syncing = SyncSupervisor(jobs, window_s=sync_window_s, announce=announce).start()
            announce(f"Syncing {', '.join(jobs)}: rows are embedded as they are written")
        prefect_serve(*deployments, print_starting_message=False)
    finally:
        if syncing is not None and not syncing.stop():
            announce("sync runs did not stop within 60 s; their claims expire with their leases")
        try:
            if json.loads(state.read_text()).get("serve_pid") == os.getpid():
                state.unlink()
        except (OSError, ValueError):
            pass
        if server is not None:
            server.stop()
