"""Content-addressed reuse: an input whose vector exists already is copied, not sent.

An input is identified by its version's model and dimensions and the sha256 of its exact
text (:attr:`~vectorfill.engine.claim.Item.input_hash`, stored with every vector). Within
one version two inputs with the same hash have the same vector, bit for bit, so:

- :func:`find_vectors` (one index probe per hash, one query per source) looks a claim's
  inputs up in the version's own vectors, then in the active version's when
  :func:`vectorfill.jobs.reuse.sources` says its vectors serve (same model and dimensions;
  or fewer dimensions of a model whose vectors shorten: the vector is then *derived*, cut
  and renormalised, never sent);
- :func:`mark_reused` marks every input found, and every input another one of the claim
  sends already, so that each distinct input goes out once;
- :func:`fill_in` gives the inputs of a request their vectors, the copies included, once
  the inputs they copy are answered (by their request, perhaps another of the claim).

The rest of the engine is unchanged by it: the row's plan, the ``seq`` guard and the
one-transaction chunk swap of the store apply to copied vectors as to sent ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
import psycopg

from vectorfill.jobs.reuse import sources
from vectorfill.provider.matryoshka import shorten
from vectorfill.records import Job, Version
from vectorfill.storage import sql

__all__ = ["Found", "fill_in", "find_vectors", "mark_reused"]


@dataclass(frozen=True)
class Found:
    """The vectors a claim's inputs have already (by input hash)."""

    vectors: dict[bytes, np.ndarray] = field(default_factory=dict)
    model: str | None = None
    """The model the provider named for them (stored with each vector)."""
    derived: frozenset[bytes] = frozenset()
    """Hashes whose vector was derived (shortened) from another version's."""
    derived_from: int | None = None
    """That version."""
    texts: dict[bytes, str] = field(default_factory=dict)
    """The exact text each vector was made from (the stored ``chunk``): the input itself,
    or its start when it was cut to the model's limit before it was sent."""


def _as_array(value: Any) -> np.ndarray:
    """A stored vector as float32 (pgvector returns ``vector`` as an array, ``halfvec`` as
    an object with ``to_numpy``)."""
    arr = value if isinstance(value, np.ndarray) else value.to_numpy()
    return np.asarray(arr, dtype=np.float32)


async def find_vectors(conn: psycopg.AsyncConnection, job: Job, version: Version, hashes: Sequence[bytes]) -> Found:
    """The stored vectors of ``hashes`` (distinct), looked up in each of :func:`sources`
    in turn (a hash found in one is not asked of the next): one query per source."""
    want = list(dict.fromkeys(hashes))
    vectors: dict[bytes, np.ndarray] = {}
    texts: dict[bytes, str] = {}
    derived: set[bytes] = set()
    model = derived_from = None
    for source in sources(job, version):
        if not want:
            break
        statement = sql.JobSQL(job, source.version).find_vectors()
        rows = await (await conn.execute(statement, {"hashes": sql.digests(want)}, binary=True)).fetchall()
        if not rows:
            continue
        got = [bytes(r[0]) for r in rows]
        matrix = np.vstack([_as_array(r[1]) for r in rows])
        if source.shorten_to is not None:
            matrix = shorten(matrix, source.shorten_to)
            derived.update(got)
            derived_from = source.version.version
        vectors.update(zip(got, matrix, strict=True))
        texts.update((h, r[3]) for h, r in zip(got, rows, strict=True))
        model = model or rows[0][2]
        want = [h for h in want if h not in vectors]
    return Found(vectors, model, frozenset(derived), derived_from, texts)


class _Input(Protocol):
    @property
    def input_hash(self) -> bytes: ...
    @property
    def text(self) -> str: ...
    @property
    def reuse(self) -> bool: ...


T = TypeVar("T", bound=_Input)


def mark_reused(items: Sequence[T], found: Mapping[bytes, object]) -> list[T]:
    """``items`` with :attr:`reuse` set on each whose vector is ``found``, or is the input
    of an earlier item (which alone is sent): each distinct input goes out once."""
    seen: set[bytes] = set()
    out = []
    for item in items:
        h = item.input_hash
        copy = h in found or h in seen
        seen.add(h)
        out.append(dataclasses.replace(item, reuse=True) if copy else item)  # type: ignore[type-var]
    return out


R = TypeVar("R")


def fill_in(
    items: Sequence[T],
    answered: Sequence[T],
    vectors: np.ndarray,
    known: Mapping[bytes, np.ndarray],
    refused: Mapping[bytes, R],
    texts: Mapping[bytes, str] | None = None,
) -> tuple[list[T], np.ndarray, list[tuple[T, R]]] | None:
    """A request's inputs with their vectors: those sent as ``answered`` (with ``vectors``),
    the others (:attr:`reuse`) from ``known``; an input whose copy was refused (``refused``,
    by hash) is refused too. A copy takes the text its vector was made from (``texts``, by
    hash: the stored or sent input, which was cut when it was over the model's limit), so
    that the stored text is always the vector's. Returns (items, their vectors, refused
    items), or None while an input copied is neither known nor refused yet (its request is
    not answered)."""
    texts = texts or {}
    if not any(i.reuse for i in items):
        return list(answered), vectors, []
    sent = {i.input_hash: n for n, i in enumerate(answered)}
    out: list[T] = []
    rows: list[np.ndarray] = []
    rejected: list[tuple[T, R]] = []
    for item in items:
        h = item.input_hash
        if not item.reuse:
            if h in sent:  # (an input the provider refused is not in ``answered``)
                out.append(answered[sent[h]])
                rows.append(vectors[sent[h]])
            continue
        if h in known:
            made_from = texts.get(h, item.text)
            out.append(item if made_from == item.text else dataclasses.replace(item, text=made_from))  # type: ignore[type-var]
            rows.append(known[h])
        elif h in refused:
            rejected.append((item, refused[h]))
        else:
            return None
    matrix = np.vstack(rows).astype(np.float32, copy=False) if rows else np.zeros((0, 0), np.float32)
    return out, matrix, rejected
