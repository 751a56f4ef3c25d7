"""A model change as one transaction (``vectorfill job set-model``).

:func:`change_model` sequences it: the new version (:func:`vectorfill.jobs.versions.set_model`:
its tables, its queue, the trigger rewired), then the endpoint check, then the job's batch
mode, and one commit. A check that refuses leaves the job exactly as it was: no version, the
batch mode unchanged. The check is the caller's (the command prints its report); it raises
to refuse.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import psycopg
from pydantic import ValidationError

from vectorfill.config import ChunkSettings, JobSettings
from vectorfill.errors import ConfigError
from vectorfill.jobs.batches import set_batch_mode
from vectorfill.jobs.registry import load_job
from vectorfill.jobs.versions import _UNSET, set_model, version_status
from vectorfill.records import Version

__all__ = ["EndpointCheck", "ModelChange", "change_model", "chunk_settings"]

EndpointCheck = Callable[[Version, JobSettings], None]
"""Checks the new version's endpoint with the job's settings; raises to refuse the change."""


@dataclass(frozen=True)
class ModelChange:
    """What :func:`change_model` committed."""

    version: Version
    """The new version, filling beside the active one."""
    queued: int
    """Its rows queued (every source row)."""
    batch: bool
    """Whether the Batch API is now the job's default mode (set by this change or before)."""


def chunk_settings(given: Mapping[str, object], *, base: ChunkSettings | None = None, job: str) -> ChunkSettings:
    """``base`` (the active version's chunking, or the defaults) with the options ``given``
    (``chunker``, ``size``, ``overlap``, ``template``, ``max_chunks``) over it."""
    try:
        return ChunkSettings(**{**(base.model_dump() if base else {}), **given})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid chunk option: {problems}", job=job) from None


def change_model(
    conn: psycopg.Connection,
    name: str,
    *,
    model: str,
    dimensions: int | None = None,
    base_url: str | None = None,
    api_key_env: str | None = None,
    storage: str | None = None,
    chunk_options: Mapping[str, object] | None = None,
    batch: bool = False,
    check: EndpointCheck | None = None,
) -> ModelChange:
    """Start re-embedding ``name`` with ``model`` and commit, or change nothing.

    ``base_url``, ``api_key_env`` and ``storage`` default to the active version's (``''``
    for ``api_key_env``: no key), and so do the chunk settings not in ``chunk_options``.

    The change is one transaction (``conn.transaction()``: committed at its end, or a
    savepoint of the caller's transaction if one is open). ``check`` (None: no check) is
    called with the new version and the job's settings before the commit; if it raises,
    everything is rolled back and the exception goes on. ``batch`` makes the Batch API the
    job's default mode in the same transaction, after the check, so the re-embed that the
    change triggers reads it. Raises :class:`~vectorfill.errors.JobError` or
    :class:`~vectorfill.errors.ConfigError` for a change that makes no sense (see
    :func:`~vectorfill.jobs.versions.set_model`)."""
    with conn.transaction():  # committed at its end; rolled back if anything in it raises
        active = load_job(conn, name).active
        version = set_model(
            conn,
            name,
            model=model,
            dimensions=dimensions,
            base_url=base_url,
            api_key_env=_UNSET if api_key_env is None else api_key_env,
            storage=storage,
            chunking=chunk_settings(chunk_options or {}, base=active.chunking if active else None, job=name),
        )
        job = load_job(conn, name)
        if check is not None:  # before the commit: a model that cannot work starts no version
            check(version, job.settings)
        if batch:  # with the version: the re-embed its event triggers reads the setting
            set_batch_mode(conn, name, True)
        queued = version_status(conn, job, version).pending
    return ModelChange(version=version, queued=queued, batch=batch or job.settings.batch)
