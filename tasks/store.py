"""Stage 3: write a batch's vectors with binary COPY and settle its queue rows.

One transaction: :meth:`vectorfill.sql.JobSQL.settle` takes the queue rows whose text is
still the one that was embedded (and drops their old vectors), then one binary COPY writes
the new vectors of exactly those rows straight into the vector table. Rows edited or
deleted meanwhile are left alone: they are queued for their new text. Rows the provider
rejected go to the failures table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import psycopg
from prefect import task
from psycopg import sql as pgsql

from vectorfill import sql
from vectorfill.db import LaneConnection
from vectorfill.errors import DatabaseError, TerminalProviderError
from vectorfill.model import Version

from .claim import Batch, _fail, key_arrays
from .common import TASK_OPTIONS, Work
from .embed import Embedded

__all__ = ["Stored", "store_batch"]


@dataclass(frozen=True)
class Stored:
    written: int
    stale: int
    """Rows edited (or deleted) while their old text was being embedded: not written, still queued."""
    failed: int
    tokens: int
    requests: int
    truncated: int = 0
    vector_dims: int | None = None
    """The vector column's size after this store (known once the first batch is stored)."""


async def _type_oids(conn, work: Work) -> list[int]:
    """OIDs for the COPY: key columns, chunk_seq, embedding, input_hash, model."""
    rows = await (
        await conn.execute(
            "SELECT t::regtype::oid FROM unnest(%s::text[]) AS t", (list(work.job.key_types),)
        )
    ).fetchall()
    vec = await (await conn.execute("SELECT 'vector'::regtype::oid")).fetchone()
    int4, bytea, text = 23, 17, 25
    return [r[0] for r in rows] + [int4, vec[0], bytea, text]


@task(name="store", **TASK_OPTIONS, retries=3, retry_delay_seconds=[1, 5, 15])
async def store_batch(work: Work, batch: Batch, embedded: Embedded, db: LaneConnection) -> Stored:
    job, version = work.job, work.version
    written = 0
    try:
        conn = await db.get()
        async with conn.transaction():
            if len(embedded.items) and version.vector_dims is None:
                version = await _ensure_dims(conn, work, int(embedded.vectors.shape[1]))
            js = sql.JobSQL(job, version)
            if len(embedded.items):
                if version.vector_dims != embedded.vectors.shape[1]:
                    raise TerminalProviderError(
                        f"the provider returned {embedded.vectors.shape[1]}-dimensional vectors but "
                        f"this job version stores {version.vector_dims}; start a new model version "
                        "to change dimensions",
                        job=job.name,
                        code="dimension_mismatch",
                    )
                items = embedded.items
                rows = await (
                    await conn.execute(
                        js.settle(),
                        key_arrays(work, [i.key for i in items]) + [[i.seq for i in items], job.id, version.version],
                    )
                ).fetchall()
                current = {tuple(r) for r in rows}
                if current:
                    types = await _type_oids(conn, work)  # before COPY: it holds the connection
                    async with conn.cursor() as cur:
                        async with cur.copy(js.copy_vectors()) as copy:
                            copy.set_types(types)
                            model = embedded.model
                            for item, vector in zip(items, embedded.vectors):
                                if item.key in current:
                                    await copy.write_row((*item.key, 0, vector, item.input_hash, model))
                written = len(current)
            rejected = [
                (item.key, item.seq, "rejected", status, f"HTTP {status}: {message}" if status else message)
                for item, status, message in embedded.rejected
            ]
            await _fail(conn, js, work, rejected)
    except psycopg.OperationalError as exc:
        await db.discard()
        raise DatabaseError(f"storing a batch failed: {str(exc).strip().splitlines()[0]}", job=job.name) from None
    return Stored(
        written=written,
        stale=len(embedded.items) - written,
        failed=len(embedded.rejected),
        tokens=embedded.tokens,
        requests=embedded.requests,
        truncated=embedded.truncated,
        vector_dims=version.vector_dims,
    )


async def _ensure_dims(conn, work: Work, dims: int) -> Version:
    """Type the vector column once the first response shows the model's size.

    Locks the version row so that concurrent first stores agree; the view, which depends
    on the column, is rebuilt in the same transaction. Lanes carry the returned version
    forward, so this runs once per run, not once per batch.
    """
    job, version = work.job, work.version
    current = (
        await (
            await conn.execute(
                "SELECT vector_dims FROM vectorfill.versions WHERE job_id = %s AND version = %s FOR UPDATE",
                (job.id, version.version),
            )
        ).fetchone()
    )[0]
    if current is None:
        if version.state == "active":
            await conn.execute(pgsql.SQL("DROP VIEW IF EXISTS {}").format(sql.view_name(job)))
        await conn.execute(sql.JobSQL(job, version).set_vector_dims(dims))
        await conn.execute(
            "UPDATE vectorfill.versions SET vector_dims = %s WHERE job_id = %s AND version = %s",
            (dims, job.id, version.version),
        )
        updated = Version(**{**asdict(version), "vector_dims": dims})
        if version.state == "active":
            await conn.execute(sql.create_view(job, updated))
        return updated
    return Version(**{**asdict(version), "vector_dims": current})
