"""Stage 3: write a request's vectors with binary COPY and settle its queue rows.

One transaction: :meth:`vectorfill.storage.sql.JobSQL.settle` (or ``settle_chunks``, when
some of a row's chunks keep their stored vectors) takes the queue rows whose text is still
the one that was embedded and replaces their old chunks, then one binary COPY writes the
new chunks of exactly those rows straight into the vector table: a reader sees a row's old
chunks or its new ones, never a mix. Rows edited or deleted meanwhile are left alone: they
are queued for their new text. A row with a chunk the provider rejected goes to the
failures table (none of its chunks are written).
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import psycopg
from pgvector import HalfVector
from psycopg import sql as pgsql

from vectorfill.errors import TerminalProviderError
from vectorfill.records import Version
from vectorfill.storage import sql
from vectorfill.storage.db import LaneConnection, aone_row

from .claim import Failure, RowPlan, _fail, settle_plans
from .embed import Embedded
from .work import Work

__all__ = ["Stored", "store_vectors"]


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
    """The vector column's size after this store (known once the first request is stored)."""


async def _type_oids(conn: psycopg.AsyncConnection[Any], work: Work, vtype: str = "vector") -> list[int]:
    """OIDs for the COPY: key columns, chunk_seq, embedding, input_hash, model, chunk."""
    rows = await (
        await conn.execute("SELECT t::regtype::oid FROM unnest(%s::text[]) AS t", (list(work.job.key_types),))
    ).fetchall()
    vec = await aone_row(await conn.execute("SELECT %s::regtype::oid", (vtype,)))
    int4, bytea, text = 23, 17, 25
    return [r[0] for r in rows] + [int4, vec[0], bytea, text, text]


_KEY_PACKERS = {
    "bigint": struct.Struct(">q").pack,
    "integer": struct.Struct(">i").pack,
    "smallint": struct.Struct(">h").pack,
    "text": lambda v: v.encode("utf-8"),
    "uuid": lambda v: v.bytes,
}
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)


#: Key types of one width: a request's rows are then all alike, one numpy record each.
_FIXED_KEYS = {"bigint": ">i8", "integer": ">i4", "smallint": ">i2", "uuid": "S16"}


def _vector_format(vtype: str) -> tuple[str, int]:
    """numpy dtype and bytes per dimension of a vector column's binary format (pgvector's
    ``vector_recv``/``halfvec_recv``: int16 dims, int16 unused, then big-endian floats)."""
    return (">f2", 2) if vtype == "halfvec" else (">f4", 4)


def _fixed_width_payload(
    key_types, items, vectors: np.ndarray, current: set, model: str, vtype: str = "vector"
) -> bytearray | None:
    """:func:`binary_copy_payload` for fixed-width keys: every row's fixed-width fields are
    one record of a numpy structured array (field counts, lengths and values, big-endian as
    COPY wants them), filled column by column; the variable ``chunk`` text follows each
    record. ``None`` when the rows are not all of one width."""
    hashes = [item.input_hash for item in items]
    hash_len = len(hashes[0]) if hashes else 0
    if any(len(h) != hash_len for h in hashes):
        return None
    _n, d = vectors.shape
    vdtype, width = _vector_format(vtype)
    model_bytes = model.encode("utf-8")
    fields: list[tuple] = [("nfields", ">i2")]
    for i, t in enumerate(key_types):
        fields += [(f"k{i}_len", ">i4"), (f"k{i}", _FIXED_KEYS[t])]
    fields += [
        ("chunk_len", ">i4"),
        ("chunk", ">i4"),
        ("vec_len", ">i4"),
        ("dims", ">u2"),
        ("unused", ">u2"),
        ("vec", vdtype, (d,)),
        ("hash_len", ">i4"),
        ("hash", f"S{hash_len}" if hash_len else "V0"),
        ("model_len", ">i4"),
        ("model", f"S{len(model_bytes)}" if model_bytes else "V0"),
    ]
    keep = np.fromiter((item.key in current for item in items), dtype=bool, count=len(items))
    every = bool(keep.all())
    dtype = np.dtype(fields)
    m = int(keep.sum())
    rows = np.zeros(m, dtype=dtype)
    rows["nfields"] = len(key_types) + 5
    for i, t in enumerate(key_types):
        column = [item.key[i] for item, k in zip(items, keep, strict=True) if k]
        rows[f"k{i}_len"] = np.dtype(_FIXED_KEYS[t]).itemsize
        rows[f"k{i}"] = [u.bytes for u in column] if t == "uuid" else column
    rows["chunk_len"] = 4
    rows["chunk"] = [item.chunk_seq for item, k in zip(items, keep, strict=True) if k]
    rows["vec_len"] = width * d + 4
    rows["dims"] = d
    rows["vec"] = vectors if every else vectors[keep]
    rows["hash_len"] = hash_len
    if hash_len:
        packed = np.frombuffer(b"".join(hashes), dtype=f"S{hash_len}")
        rows["hash"] = packed if every else packed[keep]
    rows["model_len"] = len(model_bytes)
    if model_bytes:
        rows["model"] = model_bytes
    raw = memoryview(rows.tobytes())
    size = dtype.itemsize
    i32 = struct.Struct(">i").pack
    payload = bytearray(_COPY_HEADER)
    for j, item in enumerate(item for item, k in zip(items, keep, strict=True) if k):
        payload += raw[j * size : (j + 1) * size]
        text = item.text.encode("utf-8", "surrogatepass")
        payload += i32(len(text))
        payload += text
    payload += _COPY_TRAILER
    return payload


def binary_copy_payload(
    key_types, items, vectors: np.ndarray, current: set, model: str, vtype: str = "vector"
) -> bytes | bytearray | None:
    """The whole binary COPY stream for ``copy_vectors``, built at once: the vectors are
    converted to big-endian float32 (float16 for ``halfvec``) in one numpy call instead of
    one Python object per row. ``None`` for key types without a fast path (the caller then
    uses ``write_row``)."""
    if len(items) and all(t in _FIXED_KEYS for t in key_types):
        payload = _fixed_width_payload(key_types, items, vectors, current, model, vtype)
        if payload is not None:
            return payload
    try:
        packers = [_KEY_PACKERS[t] for t in key_types]
    except KeyError:
        return None
    _n, d = vectors.shape
    vdtype, size = _vector_format(vtype)
    big = np.ascontiguousarray(vectors, dtype=vdtype).tobytes()
    width = size * d
    vec_prefix = struct.pack(">iHH", width + 4, d, 0)
    fields = struct.pack(">h", len(packers) + 5)
    model_bytes = model.encode("utf-8")
    model_field = struct.pack(">i", len(model_bytes)) + model_bytes
    i32 = struct.Struct(">i").pack
    parts = [_COPY_HEADER]
    for i, item in enumerate(items):
        if item.key not in current:
            continue
        parts.append(fields)
        for pack, value in zip(packers, item.key, strict=True):
            b = pack(value)
            parts.append(i32(len(b)))
            parts.append(b)
        parts.append(struct.pack(">ii", 4, item.chunk_seq))
        parts.append(vec_prefix)
        parts.append(big[i * width : (i + 1) * width])
        parts.append(i32(len(item.input_hash)))
        parts.append(item.input_hash)
        parts.append(model_field)
        text = item.text.encode("utf-8", "surrogatepass")
        parts.append(i32(len(text)))
        parts.append(text)
    parts.append(_COPY_TRAILER)
    return b"".join(parts)


async def store_vectors(work: Work, embedded: Embedded, db: LaneConnection, rows: tuple[RowPlan, ...] = ()) -> Stored:
    """Write ``embedded``'s vectors in one transaction: the rows whose text is still the one
    embedded get their chunks (the new ones from ``embedded``, the unchanged ones kept as
    ``rows`` plans, all in place of the old ones at once), the others are left queued; a
    rejected input fails its row, with the provider's reason."""
    job, version = work.job, work.version
    written = 0
    plans = {p.key: p for p in rows}
    for item in embedded.items:  # (callers without plans: one input per row)
        plans.setdefault(item.key, RowPlan(item.key, item.seq, 1))
    rejected_keys = {item.key for item, _status, _message in embedded.rejected}
    items = tuple(i for i in embedded.items if i.key not in rejected_keys)
    vectors = embedded.vectors
    if len(items) != len(embedded.items):
        vectors = vectors[[i.key not in rejected_keys for i in embedded.items]]
    # a row is settled only with every new chunk's vector in hand: a row whose inputs are
    # copies (engine/reuse.py) not filled in (the slice fills them in) is left queued
    arrived = Counter(i.key for i in embedded.items)
    settling = [p for k, p in plans.items() if k not in rejected_keys and arrived[k] >= p.chunks - len(p.kept)]
    async with db.translating("storing vectors", job=job.name) as conn:
        # edits and deletes committed while the texts were at the provider reach the queue
        # first (their seq differs then: the stale vectors are not stored); one committed
        # after this is absorbed later and queues the row again
        await conn.execute(sql.absorb(job))
        async with conn.transaction():
            if len(items) and version.vector_dims is None:
                version = await _ensure_dims(conn, work, int(vectors.shape[1]))
            js = sql.JobSQL(job, version)
            if len(items):
                if version.vector_dims != vectors.shape[1]:
                    raise TerminalProviderError(
                        f"the provider returned {vectors.shape[1]}-dimensional vectors but "
                        f"this job version stores {version.vector_dims}; start a new model version "
                        "to change dimensions",
                        job=job.name,
                        code="dimension_mismatch",
                    )
                current = await settle_plans(conn, js, Work(job, version), settling)
                if current:
                    vtype = version.vector_type
                    payload = binary_copy_payload(job.key_types, items, vectors, current, embedded.model, vtype)
                    types = [] if payload is not None else await _type_oids(conn, work, vtype)
                    async with conn.cursor() as cur:  # (type look-ups before COPY: it holds the connection)
                        async with cur.copy(js.copy_vectors()) as copy:
                            if payload is not None:
                                await copy.write(payload)
                            else:
                                copy.set_types(types)
                                for item, vector in zip(items, vectors, strict=True):
                                    if item.key in current:
                                        value = HalfVector(vector) if vtype == "halfvec" else vector
                                        await copy.write_row(
                                            (
                                                *item.key,
                                                item.chunk_seq,
                                                value,
                                                item.input_hash,
                                                embedded.model,
                                                item.text,
                                            )
                                        )
                written = len(current)
            failed_rows: dict[tuple, Failure] = {}
            for item, status, message in embedded.rejected:
                plan = plans.get(item.key)  # (a row rejected whole, as a Batch API line, has none)
                what = f" (chunk {item.chunk_seq})" if plan is not None and plan.chunks > 1 else ""
                failed_rows.setdefault(
                    item.key,
                    Failure(
                        item.key,
                        item.seq,
                        "rejected",
                        status,
                        (f"HTTP {status}: {message}" if status else message) + what,
                    ),
                )
            await _fail(conn, js, work, list(failed_rows.values()))
    return Stored(
        written=written,
        stale=len(settling) - written,
        failed=len(rejected_keys),
        tokens=embedded.tokens,
        requests=embedded.requests,
        truncated=embedded.truncated,
        vector_dims=version.vector_dims,
    )


async def _ensure_dims(conn, work: Work, dims: int) -> Version:
    """Type the vector column once the first response shows the model's size.

    Locks the version row so that concurrent first stores agree; the view, which depends
    on the column, is rebuilt in the same transaction. Lanes carry the returned version
    forward, so this runs once per run, not once per request.
    """
    job, version = work.job, work.version
    params = {"job_id": job.id, "version": version.version, "dims": dims}
    current, state = await (await conn.execute(sql.VERSION_DIMS_FOR_UPDATE, params)).fetchone()
    if current is None:
        # the state now, not at the run's start: a switch may have made this version active
        if state == "active":
            await conn.execute(pgsql.SQL("DROP VIEW IF EXISTS {}").format(sql.view_name(job)))
        await conn.execute(sql.JobSQL(job, version).set_vector_dims(dims))
        await conn.execute(sql.SET_VERSION_DIMS, params)
        updated = Version(**{**asdict(version), "vector_dims": dims, "state": state})
        if state == "active":
            await conn.execute(sql.create_view(job, updated))
        return updated
    return Version(**{**asdict(version), "vector_dims": current})
