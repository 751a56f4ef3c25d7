"""A job's Batch API submissions (``vectorfill batches JOB``) and its batch-mode setting."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from datetime import datetime

import psycopg

from vectorfill.errors import TerminalProviderError
from vectorfill.jobs.registry import load_job
from vectorfill.storage import sql

__all__ = ["BatchRecord", "cancel_batches", "list_batches", "set_batch_mode"]


@dataclass(frozen=True)
class BatchRecord:
    id: str
    """The submission id (also in the provider batch's metadata, ``vectorfill_submission``)."""
    version: int
    state: str
    """``claiming``/``uploading`` (being sent), ``submitted`` (at the provider), ``done``
    (collected), ``released`` (never created; its rows were given back)."""
    provider_status: str | None
    provider_batch_id: str | None
    rows: int
    requests: int
    tokens: int
    """Counted before sending."""
    billed_tokens: int | None
    written: int | None
    stale: int | None
    failed: int | None
    retried: int | None
    error: str | None
    submitted_at: datetime | None
    finished_at: datetime | None

    def as_dict(self) -> dict:
        d = asdict(self)
        for key in ("submitted_at", "finished_at"):
            d[key] = d[key].isoformat() if d[key] else None
        return d


def list_batches(conn: psycopg.Connection, name: str, limit: int = 100) -> list[BatchRecord]:
    """The job's submissions, newest first."""
    job = load_job(conn, name)
    cur = conn.execute(sql.BATCH_ROWS, {"job_id": job.id, "limit": limit})
    names = [d.name for d in cur.description or ()]
    out = []
    for values in cur.fetchall():
        r = dict(zip(names, values, strict=True))
        out.append(
            BatchRecord(
                id=str(r["id"]),
                version=r["version"],
                state=r["state"],
                provider_status=r["provider_status"],
                provider_batch_id=r["provider_batch_id"],
                rows=r["rows"],
                requests=r["requests"],
                tokens=r["tokens"],
                billed_tokens=r["billed_tokens"],
                written=r["written"],
                stale=r["stale"],
                failed=r["failed"],
                retried=r["retried"],
                error=r["error"],
                submitted_at=r["submitted_at"],
                finished_at=r["finished_at"],
            )
        )
    return out


def set_batch_mode(conn: psycopg.Connection, name: str, on: bool = True) -> None:
    """Make the Batch API the job's default mode for backfills (or not)."""
    load_job(conn, name)  # a clear error for an unknown job
    conn.execute(sql.SET_JOB_BATCH, {"name": name, "batch": on})


def cancel_batches(conn: psycopg.Connection, name: str) -> list[str]:
    """Ask the provider to cancel the job's running batches; returns their provider ids.

    The rows stay claimed until the next backfill collects the cancelled batches: what they
    finished is stored, the rest goes back to the queue (not counted as an attempt)."""
    # lazy: httpx, only to cancel batches at the provider
    from vectorfill.provider.batches import BatchesClient

    job = load_job(conn, name)
    cur = conn.execute(sql.BATCH_OPEN, {"job_id": job.id})
    names = [d.name for d in cur.description or ()]
    running = [r for r in (dict(zip(names, v, strict=True)) for v in cur.fetchall()) if r["provider_batch_id"]]

    async def cancel() -> list[tuple[object, str, str]]:
        done = []
        for r in running:
            async with BatchesClient.for_version(job.version(r["version"]), job=name) as api:
                try:
                    info = await api.cancel(r["provider_batch_id"])
                except TerminalProviderError:  # finished meanwhile: collected as it is
                    continue
                done.append((r["id"], info.id, info.status))
        return done

    cancelled = asyncio.run(cancel())
    for sub, _, status in cancelled:
        conn.execute(sql.BATCH_STATUS, {"id": sub, "status": status})
    conn.commit()
    return [batch_id for _, batch_id, _ in cancelled]
