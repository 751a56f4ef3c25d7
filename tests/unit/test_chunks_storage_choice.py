"""The storage a chunked job's vectors get: halfvec above 2,000 dimensions (the chunked jobs
end to end: test_chunks_store.py)."""

from __future__ import annotations


def test_auto_storage_is_halfvec_above_2000_dimensions():
    from vectorfill.records import Version

    def v(storage, dims):
        return Version(1, 1, "m", "u", None, None, dims, "active", storage=storage)

    assert v("auto", 3072).vector_type == "halfvec"
    assert v("auto", 2000).vector_type == "vector"
    assert v("auto", None).vector_type == "vector"
    assert v("vector", 3072).vector_type == "vector"
    assert v("halfvec", 384).vector_type == "halfvec"
