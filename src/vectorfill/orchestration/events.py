"""Prefect events vectorfill emits, for automations (the re-embed deployment) and the UI.

``vectorfill.model.changed``
    emitted by ``vectorfill job set-model`` once the new version is committed; the served
    (or deployed) ``reembed`` deployment is triggered by it.
``vectorfill.version.switched``
    emitted by a backfill run that made a new model's version active.

Both name the job in the resource (``prefect.resource.id`` = ``vectorfill.job.<job>``,
label ``vectorfill.job``) and in the payload. Events need a Prefect server: the one named by
``PREFECT_API_URL``, or the one ``vectorfill serve`` runs (found through its state file).
"""

from __future__ import annotations

from vectorfill.records import Version

__all__ = ["MODEL_CHANGED", "VERSION_SWITCHED", "emit_model_changed", "job_resource"]

MODEL_CHANGED = "vectorfill.model.changed"
VERSION_SWITCHED = "vectorfill.version.switched"


def job_resource(job: str) -> dict[str, str]:
    return {"prefect.resource.id": f"vectorfill.job.{job}", "prefect.resource.name": job, "vectorfill.job": job}


def emit_model_changed(job: str, version: Version) -> str | None:
    """Send ``vectorfill.model.changed``; returns the API it went to, or None when no Prefect
    server is configured or running (the event would reach no automation)."""
    from vectorfill.orchestration.api import use_served_api

    api = use_served_api()
    if not api:
        return None
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    emit_event(
        event=MODEL_CHANGED,
        resource=job_resource(job),
        payload={"job": job, "version": version.version, "model": version.model},
    )
    EventsWorker.drain_all(timeout=30)  # delivered before this short-lived process exits
    return api
