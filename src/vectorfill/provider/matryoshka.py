"""Shortened (Matryoshka) embeddings: a vector at fewer dimensions, derived locally.

OpenAI documents that a ``text-embedding-3`` vector requested at ``dimensions`` = D is the
full vector cut to its first D values and L2-normalised again; so a version at D follows
from a version at more dimensions of the same model, with no request
(:mod:`vectorfill.engine.reuse`). Other models shorten so only when the job says so
(:attr:`vectorfill.config.JobSettings.matryoshka`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["SHORTENS", "shorten", "shortens"]

#: Models whose vectors at ``dimensions`` = D are their full vectors cut to D and renormalised.
SHORTENS = frozenset({"text-embedding-3-small", "text-embedding-3-large"})


def shortens(model: str, settings: object) -> bool:
    """Whether ``model``'s shorter vectors may be derived from its longer ones."""
    return model in SHORTENS or bool(getattr(settings, "matryoshka", False))


def shorten(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """The first ``dimensions`` values of each row of ``vectors``, L2-normalised again, in
    float32 (row-wise, as a provider computes a batch of them)."""
    out = np.array(np.atleast_2d(vectors)[:, :dimensions], dtype=np.float32, order="C")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.maximum(norms, np.finfo(np.float32).tiny, out=norms)
    out /= norms
    return out
