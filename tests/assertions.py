"""Assertions that several test modules make."""

from __future__ import annotations

import numpy as np


def assert_vectors_match_texts(env, job="docs", table="articles"):
    """Every source row has exactly the provider's vector for its current text."""
    texts = env.texts(table)
    vectors = env.vectors(job)
    assert set(vectors) == set(texts)
    for key, text in texts.items():
        np.testing.assert_allclose(vectors[key], env.provider.expected_vector(text), rtol=0, atol=1e-6)
