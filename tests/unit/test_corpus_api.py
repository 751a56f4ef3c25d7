"""The offline demo corpus's public names (reading it: test_corpus.py)."""

from __future__ import annotations

import pytest

from vectorfill.local import corpus

pytestmark = pytest.mark.xdist_group("corpus")  # its module-scoped fixture is made once, on one worker


def test_public_api_is_what_all_says():
    assert sorted(corpus.__all__) == sorted(["DocRow", "MAX_BODY_CHARS", "load_stdlib_docs", "write_corpus"])
