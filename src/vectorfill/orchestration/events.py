"""Sending vectorfill's events (:mod:`vectorfill.events` names them) to a Prefect server:
the one named by ``PREFECT_API_URL``, or the one ``vectorfill serve`` runs (found through its
state file).
"""

from __future__ import annotations

from vectorfill.events import MODEL_CHANGED, VERSION_SWITCHED, job_resource
from vectorfill.orchestration.api import use_served_api
from vectorfill.records import Version

__all__ = ["MODEL_CHANGED", "VERSION_SWITCHED", "emit_model_changed", "job_resource"]


def emit_model_changed(job: str, version: Version) -> str | None:
    """Send ``vectorfill.model.changed``; returns the API it went to, or None when no Prefect
    server is configured or running (the event would reach no automation)."""
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
