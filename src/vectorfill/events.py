"""The Prefect events vectorfill emits, for automations (the re-embed deployment) and the UI.

``vectorfill.model.changed``
    emitted by ``vectorfill job set-model`` once the new version is committed; the served
    (or deployed) ``reembed`` deployment is triggered by it
    (:func:`vectorfill.orchestration.events.emit_model_changed`).
``vectorfill.version.switched``
    emitted by a backfill run that made a new model's version active
    (:func:`vectorfill.tasks.switch.switch_versions`).

Both name the job in the resource (``prefect.resource.id`` = ``vectorfill.job.<job>``,
label ``vectorfill.job``) and in the payload. Only names live here (no Prefect import), so
that every layer can use them.
"""

from __future__ import annotations

__all__ = ["MODEL_CHANGED", "VERSION_SWITCHED", "job_resource"]

MODEL_CHANGED = "vectorfill.model.changed"
VERSION_SWITCHED = "vectorfill.version.switched"


def job_resource(job: str) -> dict[str, str]:
    """The event's resource: the job, by name."""
    return {"prefect.resource.id": f"vectorfill.job.{job}", "prefect.resource.name": job, "vectorfill.job": job}
