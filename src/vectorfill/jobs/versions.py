"""Blue/green model changes: a job's versions, and the one-transaction switch between them.

``set_model`` starts a new version beside the active one: its own queue and vector table,
every source row queued, and the source table's trigger function rewritten so that every
write from then on is queued for both versions. Readers keep using the job's view
``vectorfill.<job>``, which shows the active version only, so vectors of two models are
never mixed in what they see. As soon as the new version lacks no row that the active one
has up to date (:func:`behind`; rows written meanwhile are queued in both and do not
hold it back), :func:`switch` (called at the end of every backfill run and by the sync
loop, or by ``vectorfill job switch``) retires the old version and points the view at the
new one, in one transaction. The old
version's tables stay until :func:`prune` drops them.

Every change takes the job's row lock (two changes of one job never interleave) and then
blocks writes to the source table until it commits (:func:`vectorfill.storage.sql.lock_source`
says why), so no row can slip between two versions' queues.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Final, Literal

import psycopg

from vectorfill.config import ChunkSettings
from vectorfill.errors import ConfigError, JobError, SourceError
from vectorfill.jobs.registry import KNOWN_DIMENSIONS, absorb, check_endpoint_options, load_job, version_options
from vectorfill.records import Job, Version
from vectorfill.storage import sql
from vectorfill.storage.db import one_row, scalar

__all__ = [
    "VersionStatus",
    "abandon",
    "behind",
    "complete",
    "list_versions",
    "pause",
    "prune",
    "resume",
    "set_model",
    "switch",
    "version_status",
]


class _Unset(enum.Enum):
    """The type of :data:`_UNSET`: an argument not given, where None means something."""

    UNSET = enum.auto()


_UNSET: Final = _Unset.UNSET


@dataclass(frozen=True)
class VersionStatus:
    version: int
    model: str
    dimensions: int | None
    state: str
    total: int
    embedded: int
    pending: int
    failed: int
    created_at: datetime | None
    activated_at: datetime | None

    def as_dict(self) -> dict:
        d = asdict(self)
        for k in ("created_at", "activated_at"):
            d[k] = d[k].isoformat() if d[k] else None
        return d


def _locked(conn: psycopg.Connection, name: str) -> Job:
    """Load the job with its row locked until the caller's transaction ends."""
    job = load_job(conn, name)  # clear error when it does not exist
    conn.execute(sql.LOCK_JOB, {"name": name})
    job = load_job(conn, name)  # re-read under the lock
    if conn.execute(sql.LOOKUP_TABLE, {"schema": job.source_schema, "table": job.source_table}).fetchone() is None:
        raise SourceError(
            f"source table {job.source} no longer exists (renamed or dropped?); restore it first",
            job=name,
        )
    return job


def _rewire(conn: psycopg.Connection, name: str) -> Job:
    """Rewrite the trigger function for the job's live versions (its TRUNCATE empties them);
    return the job re-read. The absorber reads the live versions itself, under its lock,
    which every change of them takes first (:func:`_hold_absorber`)."""
    job = load_job(conn, name)
    conn.execute(sql.create_trigger_function(job))
    return job


def _hold_absorber(conn: psycopg.Connection, job: Job) -> None:
    """Fold the change log into the live versions' queues and keep the absorber's lock until
    the caller commits: no absorber runs with a stale list of versions (one that would miss a
    new version's queue or find a dropped one's tables gone). Taken after
    :func:`vectorfill.storage.sql.lock_source` (the source's lock first, then this one, as
    a TRUNCATE of the source takes them: it writes the log)."""
    absorb(conn, job)


def set_model(
    conn: psycopg.Connection,
    name: str,
    *,
    model: str,
    dimensions: int | None = None,
    base_url: str | None = None,
    api_key_env: str | Literal[_Unset.UNSET] | None = _UNSET,
    storage: str | None = None,
    chunking: ChunkSettings | None = None,
) -> Version:
    """Start a new version of ``name``'s vectors with ``model`` (filling beside the active one).

    ``base_url``, ``api_key_env``, ``storage`` and ``chunking`` default to the active
    version's; a change of chunking alone (same model) is a re-embed too. Returns the new version.
    """
    job = _locked(conn, name)
    if job.next is not None:
        n = job.next
        raise JobError(
            f"version {n.version} ({n.model}) is already {n.state}; let it finish with "
            f"`vectorfill backfill {name}`, or `vectorfill job abandon {name}` first",
            job=name,
        )
    current = job.active
    base = (base_url or (current.base_url if current else "")).rstrip("/")
    if not base:
        raise ConfigError("--base-url is needed: the job has no active version to take it from", job=name)
    key_env = (current.api_key_env if current else None) if api_key_env is _UNSET else (api_key_env or None)
    check_endpoint_options(dimensions, key_env, job=name)
    storage = storage or (current.storage if current else "auto")
    chunking = chunking or (current.chunking if current else ChunkSettings())
    options = version_options(storage, chunking, text_columns=job.text_columns, job=name)
    if current and (current.model, current.dimensions, current.base_url, current.storage, current.chunking) == (
        model,
        dimensions,
        base,
        storage,
        chunking,
    ):
        raise JobError(
            f"version {current.version} already embeds with {model} at {base}"
            + (f" ({dimensions} dimensions)" if dimensions else "")
            + " with the same storage and chunking; nothing to change",
            job=name,
        )
    vector_dims = dimensions or KNOWN_DIMENSIONS.get(model)
    if current is not None and vector_dims and _has_valid_index(conn, job, current):
        # lazy: numpy and httpx, only when the active version has an index to carry
        from vectorfill.jobs.search import check_indexable

        probe = Version(job.id, 0, model, base, key_env, dimensions, vector_dims, "filling", storage=storage)
        try:  # the switch would mirror the active version's index: refuse now, not then
            check_indexable(name, probe)
        except JobError as exc:
            raise JobError(
                f"version {current.version} has an HNSW index that the new version could not have: "
                f"{str(exc).split(': ', 1)[-1]}",
                job=name,
            ) from None
    conn.execute(sql.lock_source(job))
    _hold_absorber(conn, job)  # every change so far reaches the current versions; the new one starts from the source
    number = scalar(
        conn.execute(
            sql.INSERT_VERSION,
            {
                "job_id": job.id,
                "model": model,
                "base_url": base,
                "api_key_env": key_env,
                "dimensions": dimensions,
                "vector_dims": vector_dims,
                "state": "filling",
                "options": options,
            },
        )
    )
    job = load_job(conn, name)
    version = job.version(number)
    js = sql.JobSQL(job, version)
    conn.execute(js.create_tables())
    _rewire(conn, name)
    conn.execute(js.enqueue_all())
    return version


def _has_valid_index(conn: psycopg.Connection, job: Job, version: Version) -> bool:
    return bool(scalar(conn.execute(sql.JobSQL(job, version).index_valid())))


def list_versions(conn: psycopg.Connection, name: str) -> list[VersionStatus]:
    job = load_job(conn, name)
    absorb(conn, job)  # exact counts
    return [version_status(conn, job, v) for v in job.versions]


def version_status(conn: psycopg.Connection, job: Job, v: Version) -> VersionStatus:
    """One version's exact counts (each version's are a few count(*)s over the source)."""
    total, embedded, pending, failed = one_row(
        conn.execute(sql.JobSQL(job, v).counts(), {"job_id": job.id, "version": v.version})
    )
    return VersionStatus(
        version=v.version,
        model=v.model,
        dimensions=v.vector_dims,
        state=v.state,
        total=total,
        embedded=embedded,
        pending=pending,
        failed=failed,
        created_at=v.created_at,
        activated_at=v.activated_at,
    )


def _missing(conn: psycopg.Connection, job: Job, version: Version) -> tuple[int, int]:
    pending, failed = one_row(
        conn.execute(sql.JobSQL(job, version).missing(), {"job_id": job.id, "version": version.version})
    )
    return pending, failed


def behind(conn: psycopg.Connection, job: Job, new: Version) -> tuple[int, int]:
    """(queued, failed): rows that ``new`` lacks and the active version has up to date.

    Rows queued in both versions (written while the re-embed ran, say) do not count: the
    active version has no fresh vector for them either, so switching loses readers
    nothing, and they stay queued in ``new`` for the next run. With no active version,
    every missing row counts."""
    pending, failed = _missing(conn, job, new)
    active = job.active
    if active is None or not (pending or failed):
        return pending, failed
    pending, failed = one_row(
        conn.execute(
            sql.behind(sql.JobSQL(job, new), sql.JobSQL(job, active)), {"job_id": job.id, "version": new.version}
        )
    )
    return pending, failed


def switch(conn: psycopg.Connection, name: str, *, force: bool = False) -> Version:
    """Make the job's filling (or paused) version the active one, in the caller's transaction.

    Refuses while it lacks a row that the active version has up to date (:func:`behind`:
    queued, or failed other than for having no text), unless ``force``: a cut-over never
    loses readers a fresh vector by accident. Rows queued in both versions stay queued in
    the new one. The first look is taken before writes to the source are blocked, so a
    version far from complete is refused without blocking anyone.
    """
    job = _locked(conn, name)
    new = job.next
    if new is None:
        raise JobError(f"has no new version to switch to (start one with `vectorfill job set-model {name}`)", job=name)
    if not force:
        _refuse_if_behind(conn, job, new)
    conn.execute(sql.lock_source(job))
    _hold_absorber(conn, job)
    if not force:
        _refuse_if_behind(conn, job, new)  # again, now that no write can queue a row
    old = job.active
    if old is not None:
        conn.execute(sql.SET_VERSION_STATE, {"job_id": job.id, "version": old.version, "state": "retired"})
    conn.execute(sql.SET_VERSION_STATE, {"job_id": job.id, "version": new.version, "state": "active"})
    job = _rewire(conn, name)  # the retired version is no longer kept in step
    active = job.version(new.version)
    conn.execute(sql.create_view(job, active))
    if job.settings.prune_on_switch:
        _drop_retired(conn, job)
    return active


def _refuse_if_behind(conn: psycopg.Connection, job: Job, new: Version) -> None:
    pending, failed = behind(conn, job, new)
    if pending or failed:
        than = f" that version {job.active.version} has up to date" if job.active else ""
        raise JobError(
            f"version {new.version} ({new.model}) is not complete: {pending} rows still queued and "
            f"{failed} failed{than}; run `vectorfill backfill {job.name}` (and `vectorfill retry {job.name}` "
            f"for failures), or pass --force to switch with those rows missing",
            job=job.name,
        )


def complete(conn: psycopg.Connection, job: Job) -> Version | None:
    """The job's filling version if it lacks nothing the active version has (:func:`behind`;
    ready to switch to), else None.

    A first look, without locks: :func:`switch` checks again under its locks."""
    new = job.next
    if new is None or new.state != "filling" or any(behind(conn, job, new)):
        return None
    return new


def pause(conn: psycopg.Connection, name: str) -> Version:
    """Backfill runs skip a paused version; its queue is still kept in step with the source."""
    return _set_next_state(conn, name, "filling", "paused")


def resume(conn: psycopg.Connection, name: str) -> Version:
    return _set_next_state(conn, name, "paused", "filling")


def _set_next_state(conn: psycopg.Connection, name: str, old: str, new: str) -> Version:
    job = _locked(conn, name)
    version = job.next
    if version is None or version.state != old:
        what = f"version {version.version} is {version.state}" if version else "there is no new version"
        raise JobError(f"cannot {'pause' if new == 'paused' else 'resume'}: {what}", job=name)
    conn.execute(sql.SET_VERSION_STATE, {"job_id": job.id, "version": version.version, "state": new})
    return load_job(conn, name).version(version.version)


def abandon(conn: psycopg.Connection, name: str) -> Version:
    """Drop the filling (or paused) version: its queue, its vectors, its failures."""
    job = _locked(conn, name)
    version = job.next
    if version is None:
        raise JobError("has no new version to abandon", job=name)
    conn.execute(sql.lock_source(job))  # no write may be running the old trigger function
    _hold_absorber(conn, job)
    conn.execute(sql.DELETE_VERSION, {"job_id": job.id, "version": version.version})
    _rewire(conn, name)
    conn.execute(sql.JobSQL(job, version).drop_tables())
    return version


def prune(conn: psycopg.Connection, name: str) -> list[int]:
    """Drop every retired version's tables; returns their numbers."""
    return _drop_retired(conn, _locked(conn, name))


def _drop_retired(conn: psycopg.Connection, job: Job) -> list[int]:
    dropped = []
    for v in job.versions:
        if v.state == "retired":
            conn.execute(sql.DELETE_VERSION, {"job_id": job.id, "version": v.version})
            conn.execute(sql.JobSQL(job, v).drop_tables())
            dropped.append(v.version)
    return dropped
