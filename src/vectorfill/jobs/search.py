"""Semantic search over a job's vectors, and the HNSW index that makes it fast."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import numpy as np
import psycopg

from vectorfill.errors import DatabaseError, JobError, first_line
from vectorfill.jobs.registry import load_job
from vectorfill.provider.client import EmbeddingsClient
from vectorfill.records import HNSW_MAX_DIMS
from vectorfill.storage import sql
from vectorfill.storage.db import connect, one_row, scalar
from vectorfill.storage.errors import translated

__all__ = ["INDEX_SUGGESTION_ROWS", "Hit", "check_indexable", "create_index", "has_index", "index_suggested", "search"]

#: Above this many vectors, a backfill suggests `vectorfill index`.
INDEX_SUGGESTION_ROWS = 10_000


@dataclass(frozen=True)
class Hit:
    id: object
    distance: float
    text: str | None
    chunk_seq: int = 0
    chunk: str | None = None
    """The exact input of the matching vector (a chunk of the row's text, for chunked jobs)."""


#: With ``per_row``, the nearest ``k * PER_ROW_FAN`` chunks are collapsed to their rows.
PER_ROW_FAN = 10


def _embed_query(version, job_name: str, query: str) -> np.ndarray:
    async def run() -> np.ndarray:
        async with EmbeddingsClient.for_version(version, job=job_name) as client:
            return (await client.embed([query])).vectors[0]

    return asyncio.run(run())


def search(conn: psycopg.Connection, job_name: str, query: str, k: int = 10, *, per_row: bool = False) -> list[Hit]:
    """Embed ``query`` with the job's active model and return the ``k`` nearest vectors (the
    best chunks, with their rows' ids, for a chunked job); ``per_row``: the best chunk of
    each of the ``k`` nearest rows."""
    if not query.strip():
        raise JobError("the search query is empty; pass some text to search for", job=job_name)
    job = load_job(conn, job_name)
    version = job.active
    if version is None or version.vector_dims is None:
        raise JobError(f"has no vectors yet; run `vectorfill backfill {job_name}` first", job=job_name)
    vector = _embed_query(version, job_name, query)
    js = sql.JobSQL(job, version)
    n = len(job.key_columns)
    # an HNSW scan returns at most hnsw.ef_search candidates (40 by default): ask for enough
    candidates = k * PER_ROW_FAN if per_row else k
    if candidates > 40:
        conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(min(candidates, 1000)),))
    rows = conn.execute(js.search(per_row), {"q": vector, "k": k, "fan": PER_ROW_FAN}).fetchall()
    return [
        Hit(
            id=r[0] if n == 1 else tuple(r[:n]), distance=float(r[n]), text=r[n + 1], chunk_seq=r[n + 2], chunk=r[n + 3]
        )
        for r in rows
    ]


def index_suggested(conn: psycopg.Connection, job_name: str) -> bool:
    """True when the job's active vectors are many enough to want an HNSW index and have none."""
    job = load_job(conn, job_name)
    version = job.active
    if version is None or version.vector_dims is None:
        return False
    js = sql.JobSQL(job, version)
    indexed, estimate = one_row(conn.execute(js.index_facts()))
    if indexed:
        return False
    if estimate is None or estimate < 0:  # never analysed: count
        estimate = scalar(conn.execute(js.count_vectors()))
    return estimate >= INDEX_SUGGESTION_ROWS


def has_index(conn: psycopg.Connection, job, version) -> bool:
    return bool(scalar(conn.execute(sql.JobSQL(job, version).index_facts())))


def check_indexable(job_name: str, version) -> None:
    """Refuse, before anything is built, an HNSW index pgvector cannot build: one sentence
    naming the limit and the fix."""
    dims, vtype = version.vector_dims, version.vector_type
    limit = HNSW_MAX_DIMS[vtype]
    if dims is None or dims <= limit:
        return
    if vtype == "vector" and dims <= HNSW_MAX_DIMS["halfvec"]:
        fix = (
            f"store them as halfvec (`vectorfill job set-model {job_name} --model {version.model} "
            "--storage halfvec`, or --storage auto) or ask the model for fewer with --dimensions"
        )
    else:
        fix = f"ask the model for at most {HNSW_MAX_DIMS['halfvec']} with --dimensions (a new version)"
    raise JobError(
        f"cannot build an HNSW index on version {version.version}'s {dims}-dimensional {vtype} column: "
        f"pgvector's HNSW indexes {vtype} of at most {limit:,} dimensions; {fix}",
        job=job_name,
    )


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
    so (a notice, appended to ``notices``) when it stops fitting.

    An index that cannot be built is refused before it starts (:func:`check_indexable`).
    ``CREATE INDEX CONCURRENTLY`` that fails midway (cancelled, out of memory, a timeout)
    leaves an INVALID index behind, which a later ``IF NOT EXISTS`` would take for done:
    it is dropped on failure, and an invalid one left by an earlier crash is dropped first."""
    with connect(url, autocommit=True, vector_types=False) as conn:  # CONCURRENTLY needs autocommit
        if notices is not None:
            conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        if memory is not None:
            conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (memory,))
        job = load_job(conn, job_name)
        version = job.version(version_number) if version_number else job.active
        if version is None or version.vector_dims is None:
            raise JobError(f"has no typed vectors yet; run `vectorfill backfill {job_name}` first", job=job_name)
        check_indexable(job_name, version)
        js = sql.JobSQL(job, version)
        if scalar(conn.execute(js.index_valid())) is False:
            conn.execute(js.drop_index())
        try:
            with translated("building the HNSW index"):
                conn.execute(js.create_index())
        except DatabaseError as exc:
            with contextlib.suppress(DatabaseError), translated():
                conn.execute(js.drop_index())
            raise JobError(
                f"building the HNSW index failed ({first_line(exc.__cause__ or exc)}); the partial index was "
                f"dropped: run `vectorfill index {job_name}` again",
                job=job_name,
            ) from exc
        return f"vectorfill.{js.index_name()}"
