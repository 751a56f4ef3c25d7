"""Stage 3: write a batch's vectors with binary COPY and settle its queue rows.

One transaction: COPY the vectors into a temporary staging table, then one statement
(:meth:`vectorfill.sql.JobSQL.store`) writes exactly the rows whose text is still the one
that was embedded. Rows the provider rejected go to the failures table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import psycopg
from prefect import task
from psycopg import sql as pgsql

from vectorfill import sql
from vectorfill.db import aconnect
from vectorfill.errors import DatabaseError
from vectorfill.model import Version

from .claim import Batch, _fail, key_arrays
from .common import TASK_OPTIONS, Work, database_url
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


async def _type_oids(conn, work: Work) -> list[int]:
    rows = await (
        await conn.execute(
            "SELECT t::regtype::oid FROM unnest(%s::text[]) AS t", (list(work.job.key_types),)
        )
    ).fetchall()
    vec = await (await conn.execute("SELECT 'vector'::regtype::oid")).fetchone()
    bytea, int8 = 17, 20
    return [r[0] for r in rows] + [int8, bytea, vec[0]]


@task(name="store", **TASK_OPTIONS, retries=3, retry_delay_seconds=[1, 5, 15])
async def store_batch(work: Work, batch: Batch, embedded: Embedded) -> Stored:
    job, version = work.job, work.version
    try:
        async with aconnect(database_url()) as conn:
            async with conn.transaction():
                if len(embedded.items) and version.vector_dims is None:
                    version = await _ensure_dims(conn, work, int(embedded.vectors.shape[1]))
                js = sql.JobSQL(job, version)
                written = 0
                if len(embedded.items):
                    await conn.execute(js.create_staging())
                    types = await _type_oids(conn, work)  # before COPY: it holds the connection
                    async with conn.cursor() as cur:
                        async with cur.copy(js.copy_staging()) as copy:
                            copy.set_types(types)
                            for item, vector in zip(embedded.items, embedded.vectors):
                                await copy.write_row((*item.key, item.seq, item.input_hash, vector))
                    written = (
                        await (
                            await conn.execute(
                                js.store(),
                                {"model": embedded.model, "job_id": job.id, "version": version.version},
                            )
                        ).fetchone()
                    )[0]
                rejected = [
                    (item.key, item.seq, "rejected", status, f"HTTP {status}: {message}" if status else message)
                    for item, status, message in embedded.rejected
                ]
                await _fail(conn, js, work, rejected)
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"storing a batch failed: {exc}", job=job.name) from None
    return Stored(
        written=written,
        stale=len(embedded.items) - written,
        failed=len(embedded.rejected),
        tokens=embedded.tokens,
        requests=embedded.requests,
        truncated=embedded.truncated,
    )


async def _ensure_dims(conn, work: Work, dims: int) -> Version:
    """Type the vector column once the first response shows the model's size.

    Locks the version row so that concurrent first stores agree; the view, which depends
    on the column, is rebuilt in the same transaction.
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
