"""``vectorfill serve``: vectorfill's deployments served from this machine, on the local
Prefect server that keeps history (:mod:`vectorfill.orchestration.local_server`).

Prefect's temporary server runs no schedules and its SQLite database stalls under load, so
``serve`` uses Prefect's real server (``prefect server start``, installed with Prefect) on a
Postgres database next to vectorfill's own: ``<database>_prefect`` in the same cluster (the
embedded one by default), created on first use. It is the same server every other command
uses (started by whichever comes first, kept running after ``serve`` stops, stopped by
``vectorfill stop``), so runs made by ``serve`` and by plain ``vectorfill backfill`` are in
one history. With ``PREFECT_API_URL`` set, that server is used and nothing is started.

It then serves, from this process (a Prefect runner; no work pool needed):

``backfill-<job>``
    for every job: a scheduled backfill (``--cron``, nightly by default);
``documents-sync-<table>``
    for each ``--documents SOURCE=TABLE``: the listing of SOURCE synced into TABLE every
    10 minutes (:mod:`vectorfill.flows.documents`);
``reembed``
    triggered by the event ``vectorfill.model.changed`` that ``vectorfill job set-model``
    emits: it runs the backfill flow for the job named in the event, which fills the new
    version and switches readers to it once complete.

Flow runs are subprocesses that inherit this process's environment: the database URL and
the API keys come from there, never from deployment parameters. While ``serve`` runs, its
API URL is written to ``$VECTORFILL_HOME/prefect-server.json``, so that ``job set-model``
knows a served re-embed deployment is listening for its event.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Sequence
from importlib import resources
from typing import Any

from vectorfill.config import DATABASE_URL_ENV
from vectorfill.errors import ConfigError
from vectorfill.jobs.registry import load_job
from vectorfill.orchestration.api import _state_path, served_api_url, use_api
from vectorfill.storage.db import connect

__all__ = [
    "DECLARED_JOB",
    "DEFAULT_CRON",
    "build_deployments",
    "declared_deployments",
    "serve",
    "served_api_url",
]

DEFAULT_CRON = "0 2 * * *"


#: The job the declared per-job deployments of ``deployments/prefect.yaml`` are written for:
#: ``serve`` makes a copy of each for every job it serves, as a user copies them for ``prefect deploy``.
DECLARED_JOB = "docs"


def declared_deployments() -> list[dict[str, Any]]:
    """The deployments of the packaged ``deployments/prefect.yaml``, the one declaration of
    what vectorfill deploys (YAML anchors resolved)."""
    import yaml  # lazy: only serve reads it

    text = resources.files("vectorfill.deployments").joinpath("prefect.yaml").read_text(encoding="utf-8")
    return list(yaml.safe_load(text)["deployments"])


def build_deployments(
    jobs: list[str],
    *,
    cron: str | None = DEFAULT_CRON,
    batch_jobs: Sequence[str] = (),
    reembed: bool = True,
    documents: Sequence[tuple[str, str]] = (),
) -> list:
    """The served deployments, as ``deployments/prefect.yaml`` declares them: each
    deployment declared for the job :data:`DECLARED_JOB` is made for every job in ``jobs``
    (the scheduled backfill, on ``cron``: None for no schedule) or, if tagged ``batches``,
    for every job of ``batch_jobs`` (jobs whose default is the Batch API: their batches
    collected on the declared interval); a deployment declared with triggers (the re-embed
    on ``vectorfill.model.changed``) is made once, unless ``reembed`` is False
    (``serve --sync``, whose sync runs fill new versions themselves); the deployment tagged
    ``documents`` is made for each (source, table) of ``documents``, named after the table."""
    deployments = []
    for spec in declared_deployments():
        if "documents" in spec.get("tags", ()):
            for source, table in documents:
                deployments.append(_documents_deployment(spec, source, table))
        elif spec.get("parameters", {}).get("job") == DECLARED_JOB:
            for job in batch_jobs if "batches" in spec.get("tags", ()) else jobs:
                deployments.append(_deployment(spec, job, cron))
        elif spec.get("triggers"):
            if reembed:
                deployments.append(_deployment(spec, None, cron))
        else:
            raise ConfigError(f"deployments/prefect.yaml: {spec.get('name')!r} is neither per job nor triggered")
    return deployments


def _documents_deployment(spec: dict[str, Any], source: str, table: str):
    """The declared documents sync for ``source`` and ``table``."""
    declared = spec["parameters"]
    spec = {
        **spec,
        "name": spec["name"].removesuffix(f"-{declared['table']}") + f"-{table}",
        "description": (spec.get("description") or "")
        .replace(f"`{declared['table']}`", f"`{table}`")
        .replace(f"`{declared['source']}`", f"`{source}`"),
        "parameters": {"source": source, "table": table},
    }
    return _deployment(spec, None, None)


def _deployment(spec: dict[str, Any], job: str | None, cron: str | None):
    """One declared deployment as a runner deployment; for ``job``, its copy for that job."""
    from prefect.deployments.runner import EntrypointType
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
    from prefect.utilities.importtools import import_object

    flow = import_object(spec["entrypoint"])  # a module path into the installed package
    name, description = spec["name"], spec.get("description")
    parameters, tags = dict(spec.get("parameters", {})), list(spec.get("tags", []))
    if job is not None:
        name = name.removesuffix(f"-{DECLARED_JOB}") + f"-{job}"
        description = description and description.replace(f"`{DECLARED_JOB}`", f"`{job}`")
        parameters["job"] = job
        tags.append(f"job:{job}")
    schedule: dict[str, Any] = {}
    for declared in spec.get("schedules", []):
        if "cron" in declared:
            schedule["cron"] = cron  # serve's --cron ('' for none) replaces the declared one
        elif "interval" in declared:
            schedule["interval"] = declared["interval"]
    triggers = [
        DeploymentEventTrigger(
            name=f"vectorfill {name} on {', '.join(t['expect'])}", **{k: v for k, v in t.items() if k != "type"}
        )
        for t in spec.get("triggers", [])
    ]
    return flow.to_deployment(
        name=name,
        parameters=parameters,
        tags=tags,
        description=description,
        triggers=triggers or None,
        concurrency_limit=spec.get("concurrency_limit"),
        entrypoint_type=EntrypointType.MODULE_PATH,
        **schedule,
    )


def serve(
    url: str,
    *,
    jobs: list[str],
    cron: str | None = DEFAULT_CRON,
    port: int | None = None,
    announce=print,
    sync: bool = False,
    sync_window_s: float | None = None,
    documents: Sequence[tuple[str, str]] = (),
) -> None:
    """Serve the deployments until interrupted, on ``PREFECT_API_URL`` or the local Prefect
    server (started on ``port`` if it is not running yet; it keeps running afterwards); with
    ``sync``, also a sync run per job (:mod:`vectorfill.orchestration.sync`). SIGTERM ends it
    with the README's exit code 143 (Prefect's runner would exit 0)."""
    os.environ[DATABASE_URL_ENV] = url
    api_url = use_api(url, port=port, announce=announce)
    if port is not None and not api_url.startswith(f"http://127.0.0.1:{port}/"):
        announce(
            f"--port {port} ignored: Prefect's server is already running at {api_url} (`vectorfill stop` stops it)"
        )
    state = _state_path()
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"api_url": api_url, "serve_pid": os.getpid()}))
    syncing = None
    try:
        from prefect import serve as prefect_serve

        deployments = build_deployments(
            jobs, cron=cron, batch_jobs=_batch_jobs(url, jobs), reembed=not sync, documents=documents
        )
        ui = api_url.removesuffix("/api")
        announce(f"Serving {', '.join(d.name for d in deployments)} from this machine; Prefect UI: {ui} (Ctrl-C stops)")
        if sync and jobs:
            # lazy: Prefect reads its settings when imported; the caller sets them first (prefect_defaults, use_api)
            from vectorfill.orchestration.sync import SyncSupervisor

            syncing = SyncSupervisor(jobs, window_s=sync_window_s, announce=announce).start()
            announce(f"Syncing {', '.join(jobs)}: rows are embedded as they are written")
        try:
            prefect_serve(*deployments, print_starting_message=False)
        except SystemExit as exc:  # Prefect's runner answers SIGTERM with exit(0); ours is 143
            raise SystemExit(128 + signal.SIGTERM if exc.code in (0, None) else exc.code) from None
    finally:
        if syncing is not None and not syncing.stop():
            announce("sync runs did not stop within 60 s; their claims expire with their leases")
        try:
            if json.loads(state.read_text()).get("serve_pid") == os.getpid():
                state.unlink()
        except (OSError, ValueError):
            pass


def _batch_jobs(url: str, jobs: list[str]) -> list[str]:
    """The jobs whose backfills go through the Batch API by default (``job create --batch``)."""
    with connect(url) as conn:
        return [job for job in jobs if load_job(conn, job).settings.batch]
