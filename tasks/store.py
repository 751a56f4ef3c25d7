"""Stage 3: write a batch's vectors with binary COPY and settle its queue rows.

One transaction: :meth:`vectorfill.storage.sql.JobSQL.settle` takes the queue rows whose text is
still the one that was embedded (and drops their old vectors), then one binary COPY writes
the new vectors of exactly those rows straight into the vector table. Rows edited or
deleted meanwhile are left alone: they are queued for their new text. Rows the provider
rejected go to the failures table.
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass

import numpy as np
import psycopg
from psycopg import sql as pgsql

from vectorfill.errors import TerminalProviderError
from vectorfill.records import Version
from vectorfill.storage import sql
from vectorfill.storage.db import LaneConnection, lane_error

from .claim import _fail, key_arrays
from .common import Work
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
        await conn.execute("SELECT t::regtype::oid FROM unnest(%s::text[]) AS t", (list(work.job.key_types),))
    ).fetchall()
    vec = await (await conn.execute("SELECT 'vector'::regtype::oid")).fetchone()
    int4, bytea, text = 23, 17, 25
    return [r[0] for r in rows] + [int4, vec[0], bytea, text]


_KEY_PACKERS = {
    "bigint": struct.Struct(">q").pack,
    "integer": struct.Struct(">i").pack,
    "smallint": struct.Struct(">h").pack,
    "text": lambda v: v.encode("utf-8"),
    "uuid": lambda v: v.bytes,
}
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)


#: Key types of one width: a batch's rows are then all alike, one numpy record each.
_FIXED_KEYS = {"bigint": ">i8", "integer": ">i4", "smallint": ">i2", "uuid": "S16"}


def _fixed_width_payload(key_types, items, vectors: np.ndarray, current: set, model: str) -> bytearray | None:
    """:func:`binary_copy_payload` for fixed-width keys: every row is one record of a numpy
    structured array (field counts, lengths and values, big-endian as COPY wants them),
    filled column by column. ``None`` when the rows are not all of one width."""
    hashes = [item.input_hash for item in items]
    hash_len = len(hashes[0]) if hashes else 0
    if any(len(h) != hash_len for h in hashes):
        return None
    _n, d = vectors.shape
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
        ("vec", ">f4", (d,)),
        ("hash_len", ">i4"),
        ("hash", f"S{hash_len}" if hash_len else "V0"),
        ("model_len", ">i4"),
        ("model", f"S{len(model_bytes)}" if model_bytes else "V0"),
    ]
    keep = np.fromiter((item.key in current for item in items), dtype=bool, count=len(items))
    every = bool(keep.all())
    dtype = np.dtype(fields)
    m = int(keep.sum())
    # the records are written in place, between the header and the trailer: no copy after
    payload = bytearray(len(_COPY_HEADER) + m * dtype.itemsize + len(_COPY_TRAILER))
    payload[: len(_COPY_HEADER)] = _COPY_HEADER
    payload[len(payload) - len(_COPY_TRAILER) :] = _COPY_TRAILER
    rows = np.frombuffer(payload, dtype=dtype, count=m, offset=len(_COPY_HEADER))
    rows["nfields"] = len(key_types) + 4
    for i, t in enumerate(key_types):
        column = [item.key[i] for item, k in zip(items, keep, strict=True) if k]
        rows[f"k{i}_len"] = np.dtype(_FIXED_KEYS[t]).itemsize
        rows[f"k{i}"] = [u.bytes for u in column] if t == "uuid" else column
    rows["chunk_len"] = 4
    rows["vec_len"] = 4 * d + 4
    rows["dims"] = d
    rows["vec"] = vectors if every else vectors[keep]
    rows["hash_len"] = hash_len
    if hash_len:
        packed = np.frombuffer(b"".join(hashes), dtype=f"S{hash_len}")
        rows["hash"] = packed if every else packed[keep]
    rows["model_len"] = len(model_bytes)
    if model_bytes:
        rows["model"] = model_bytes
    return payload


def binary_copy_payload(key_types, items, vectors: np.ndarray, current: set, model: str) -> bytes | bytearray | None:
    """The whole binary COPY stream for ``copy_vectors``, built at once: the vectors are
    converted to big-endian float32 in one numpy call instead of one Python object per
    row. ``None`` for key types without a fast path (the caller then uses ``write_row``)."""
    if len(items) and all(t in _FIXED_KEYS for t in key_types):
        payload = _fixed_width_payload(key_types, items, vectors, current, model)
        if payload is not None:
            return payload
    try:
        packers = [_KEY_PACKERS[t] for t in key_types]
    except KeyError:
        return None
    _n, d = vectors.shape
    big = np.ascontiguousarray(vectors, dtype=">f4").tobytes()
    width = 4 * d
    vec_prefix = struct.pack(">iHH", width + 4, d, 0)
    fields = struct.pack(">h", len(packers) + 4)
    chunk0 = struct.pack(">ii", 4, 0)
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
        parts.append(chunk0)
        parts.append(vec_prefix)
        parts.append(big[i * width : (i + 1) * width])
        parts.append(i32(len(item.input_hash)))
        parts.append(item.input_hash)
        parts.append(model_field)
    parts.append(_COPY_TRAILER)
    return b"".join(parts)


async def store_batch(work: Work, embedded: Embedded, db: LaneConnection) -> Stored:
    """Write ``embedded``'s vectors in one transaction: the rows whose text is still the one
    embedded get their vector, the others are left queued; rejected inputs become failures."""
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
                    payload = binary_copy_payload(job.key_types, items, embedded.vectors, current, embedded.model)
                    types = None if payload is not None else await _type_oids(conn, work)
                    async with conn.cursor() as cur:  # (type look-ups before COPY: it holds the connection)
                        async with cur.copy(js.copy_vectors()) as copy:
                            if payload is not None:
                                await copy.write(payload)
                            else:
                                copy.set_types(types)
                                for item, vector in zip(items, embedded.vectors, strict=True):
                                    if item.key in current:
                                        await copy.write_row((*item.key, 0, vector, item.input_hash, embedded.model))
                written = len(current)
            rejected = [
                (item.key, item.seq, "rejected", status, f"HTTP {status}: {message}" if status else message)
                for item, status, message in embedded.rejected
            ]
            await _fail(conn, js, work, rejected)
    except psycopg.Error as exc:
        raise await lane_error(db, exc, "storing a batch", job=job.name) from None
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
