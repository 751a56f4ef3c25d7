"""The binary COPY stream of the store stage, built without a database."""

from __future__ import annotations

import hashlib
import uuid

import numpy as np
import pytest

from vectorfill.engine import store
from vectorfill.engine.claim import Item


def _items(keys, hash_len=32):
    return [Item(k, 0, "t", hashlib.sha256(repr(k).encode()).digest()[:hash_len], 1) for k in keys]


def _row_by_row(monkeypatch, *args):
    """The stream as the per-row builder makes it (the one every key type can use)."""
    with monkeypatch.context() as m:
        m.setattr(store, "_FIXED_KEYS", {})
        return store.binary_copy_payload(*args)


@pytest.mark.parametrize(
    "key_types, make_key",
    [
        (["bigint"], lambda i: (i * 7_000_000_001 - 3,)),
        (["integer"], lambda i: (-i,)),
        (["smallint"], lambda i: (i,)),
        (["uuid"], lambda i: (uuid.UUID(int=i * 2**70 + 5),)),
        (["integer", "bigint", "uuid"], lambda i: (i % 3, i, uuid.UUID(int=i))),
    ],
)
@pytest.mark.parametrize("stale", [set(), {1, 4, 5}, set(range(9))])
def test_fixed_width_keys_give_the_same_stream_as_row_by_row(monkeypatch, key_types, make_key, stale):
    keys = [make_key(i) for i in range(9)]
    items = _items(keys)
    vectors = np.random.default_rng(len(key_types)).standard_normal((9, 5)).astype(np.float32)
    current = {k for i, k in enumerate(keys) if i not in stale}
    args = (key_types, items, vectors, current, "text-embedding-3-small")
    fast = store.binary_copy_payload(*args)
    assert fast == _row_by_row(monkeypatch, *args)
    assert bytes(fast).startswith(b"PGCOPY\n\xff\r\n\x00") and bytes(fast).endswith(b"\xff\xff")


def test_rows_with_hashes_of_different_lengths_go_row_by_row(monkeypatch):
    items = _items([(1,)], 32) + _items([(2,)], 20)
    vectors = np.ones((2, 3), np.float32)
    args = (["bigint"], items, vectors, {(1,), (2,)}, "m")
    assert store._fixed_width_payload(*args) is None
    assert store.binary_copy_payload(*args) == _row_by_row(monkeypatch, *args)
