"""Semantic search over a job's vectors, and the HNSW index that makes it fast."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import psycopg

from vectorfill.errors import JobError
from vectorfill.jobs.registry import load_job
from vectorfill.provider.client import EmbeddingsClient
from vectorfill.storage import sql

__all__ = ["INDEX_SUGGESTION_ROWS", "Hit", "create_index", "has_index", "index_suggested", "search"]

#: Above this many vectors, a backfill suggests `vectorfill index`.
INDEX_SUGGESTION_ROWS = 10_000


@dataclass(frozen=True)
class Hit:
    id: object
    distance: float
    text: str | None


def _embed_query(version, job_name: str, query: str) -> np.ndarray:
    async def run() -> np.ndarray:
        async with EmbeddingsClient.for_version(version, job=job_name) as client:
            return (await client.embed([query])).vectors[0]

    return asyncio.run(run())


def search(conn: psycopg.Connection, job_name: str, query: str, k: int = 10) -> list[Hit]:
    """Embed ``query`` with the job's active model and return the ``k`` nearest rows."""
    if not query.strip():
        raise JobError("the search query is empty; pass some text to search for", job=job_name)
    job = load_job(conn, job_name)
    version = job.active
    if version is None or version.vector_dims is None:
        raise JobError(f"has no vectors yet; run `vectorfill backfill {job_name}` first", job=job_name)
    vector = _embed_query(version, job_name, query)
    js = sql.JobSQL(job, version)
    n = len(job.key_columns)
    rows = conn.execute(js.search(), {"q": vector, "k": k}).fetchall()
    return [Hit(id=r[0] if n == 1 else tuple(r[:n]), distance=float(r[n]), text=r[n + 1]) for r in rows]


def index_suggested(conn: psycopg.Connection, job_name: str) -> bool:
    """True when the job's active vectors are many enough to want an HNSW index and have none."""
    job = load_job(conn, job_name)
    version = job.active
    if version is None or version.vector_dims is None:
        return False
    js = sql.JobSQL(job, version)
    indexed, estimate = conn.execute(js.index_facts()).fetchone()
    if indexed:
        return False
    if estimate is None or estimate < 0:  # never analysed: count
        estimate = conn.execute(js.count_vectors()).fetchone()[0]
    return estimate >= INDEX_SUGGESTION_ROWS


def has_index(conn: psycopg.Connection, job, version) -> bool:
    return bool(conn.execute(sql.JobSQL(job, version).index_facts()).fetchone()[0])


def create_index(
    url: str,
    job_name: str,
    version_number: int | None = None,
    *,
    memory: str | None = None,
    notices: list[str] | None = None,
) -> str:
    """Build the HNSW index of the job's active vectors (or of another version); returns its name.

    ``memory`` is the build's ``maintenance_work_mem`` (e.g. ``"1GB"``; default: the
    server's): pgvector builds the graph in memory and much faster while it fits, and says
    so (a notice, appended to ``notices``) when it stops fitting."""
    with psycopg.connect(url, autocommit=True) as conn:  # CONCURRENTLY needs autocommit
        if notices is not None:
            conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        if memory is not None:
            conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (memory,))
        job = load_job(conn, job_name)
        version = job.version(version_number) if version_number else job.active
        if version is None or version.vector_dims is None:
            raise JobError(f"has no typed vectors yet; run `vectorfill backfill {job_name}` first", job=job_name)
        js = sql.JobSQL(job, version)
        conn.execute(js.create_index())
        return f"vectorfill.{js.index_name()}"
