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

from vectorfill.config import DATABASE_URL_ENV
from vectorfill.jobs.registry import load_job
from vectorfill.orchestration.api import _state_path, served_api_url, use_api
from vectorfill.orchestration.events import MODEL_CHANGED
from vectorfill.storage.db import connect

__all__ = [
    "DEFAULT_CRON",
    "build_deployments",
    "serve",
    "served_api_url",
]

DEFAULT_CRON = "0 2 * * *"
#: Seconds between two collections of a job's Batch API batches by `vectorfill serve`.
COLLECT_EVERY_S = 600


def build_deployments(
    jobs: list[str], *, cron: str | None = DEFAULT_CRON, batch_jobs: Sequence[str] = (), reembed: bool = True
) -> list:
    """The served deployments: a scheduled backfill per job; for ``batch_jobs`` (jobs whose
    default is the Batch API) a collection of their batches every :data:`COLLECT_EVERY_S`
    seconds; and (unless ``reembed`` is False: ``serve --sync``, whose sync runs fill new
    versions themselves) the event-triggered re-embed."""
    from prefect.deployments.runner import EntrypointType
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    # lazy: Prefect reads its settings when imported; the caller sets them first (prefect_defaults, use_api)
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
    deployments += [  # Batch API batches: collected every few minutes, nothing new submitted or embedded
        backfill.to_deployment(
            name=f"collect-batches-{job}",
            parameters={"job": job, "batch": True, "max_rows": 0},
            interval=COLLECT_EVERY_S,
            tags=["vectorfill", f"job:{job}", "batches"],
            description=f"Collect the job {job!r}'s finished Batch API batches and store their vectors.",
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        for job in batch_jobs
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
    port: int | None = None,
    announce=print,
    sync: bool = False,
    sync_window_s: float | None = None,
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

        deployments = build_deployments(jobs, cron=cron, batch_jobs=_batch_jobs(url, jobs), reembed=not sync)
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
