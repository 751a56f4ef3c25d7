"""Typed, bounded configuration: per-job settings and where the database is.

A job's settings live in ``vectorfill.jobs.settings`` (JSON) and are validated by
:class:`JobSettings` on the way in and out::

    JobSettings(max_inputs=512, encoding_format="float", concurrency=8)

Secrets are never part of a setting: a job stores only the *name* of the environment
variable that holds its API key (``api_key_env``); the key itself is read when a request
is made, kept in a :class:`pydantic.SecretStr`, and never printed, logged or stored.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from vectorfill.errors import ConfigError, SecretMissing

__all__ = [
    "DATABASE_URL_ENV",
    "RESERVED_JOB_NAMES",
    "STORAGE_TYPES",
    "ChunkSettings",
    "DocumentSettings",
    "JobSettings",
    "database_url_from_env",
    "read_api_key",
    "validate_job_name",
]

DATABASE_URL_ENV = "VECTORFILL_DATABASE_URL"

#: Relations in the vectorfill schema that a job's view must never shadow.
RESERVED_JOB_NAMES = frozenset(
    {
        "jobs",
        "versions",
        "failures",
        "budgets",
        "endpoint_caps",
        "alembic_version",
        "batches",
        "batch_items",
        "document_hashes",
    }
)

_JOB_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


class DocumentSettings(BaseModel):
    """A document job's input: the object that a column names (a path, ``file://`` or
    ``s3://`` URI), loaded and parsed to text in the claim (:mod:`vectorfill.documents`)::

        DocumentSettings(uri="uri", max_document_bytes=64 * 2**20)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str = Field(min_length=1, max_length=63)
    """The column holding each row's document URI."""
    max_document_bytes: int = Field(64 * 2**20, ge=1024, le=2**34)
    """A larger document is not read: its row fails with the reason (``too_large``)."""
    max_batch_bytes: int = Field(256 * 2**20, ge=1024, le=2**36)
    """Most bytes of documents one claim reads; the rest of its rows are given back to the
    queue (their attempt not counted) for the next claim. One document is read at a time, so
    a batch holds at most one document's bytes and the text parsed from this many bytes."""


class JobSettings(BaseModel):
    """How a job talks to its endpoint and packs its work. All fields have safe defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_inputs: int = Field(2048, ge=1, le=100_000)
    """Most inputs in one request (OpenAI accepts 2048)."""
    max_request_tokens: int = Field(300_000, ge=1, le=10_000_000)
    """Most tokens in one request, counted before sending (OpenAI accepts 300,000)."""
    encoding_format: Literal["base64", "float"] = "base64"
    """``base64`` is ~4x smaller on the wire; use ``float`` for servers that lack it."""
    concurrency: int = Field(4, ge=1, le=256)
    """Most requests in flight at once within one run (the run adapts below it: fewer after
    429s, more while latency, not the rate budget, holds requests back)."""
    rpm: int | None = Field(None, ge=1, le=100_000_000)
    """Requests per minute the endpoint allows (the account's limit): every run on the
    endpoint, on any machine using this database, shares it through ``vectorfill.budgets``,
    so give each job the whole limit, not a share. Jobs on one endpoint with different
    limits are held to the lowest. None: no shared budget; each run follows what the
    endpoint announces in ``x-ratelimit-limit-requests``, if anything."""
    tpm: int | None = Field(None, ge=1, le=10_000_000_000)
    """Tokens per minute, likewise (``x-ratelimit-limit-tokens``); requests are packed to fit."""
    timeout_s: float = Field(60.0, gt=0, le=3600)
    """Seconds to wait for one response before treating it as a transient failure."""
    max_attempts: int = Field(5, ge=1, le=100)
    """Claims of one row before it is moved to the failures table."""
    lease_s: int = Field(600, ge=10, le=86_400)
    """Seconds a claimed row stays reserved for its worker; after that any worker may take it."""
    retries: int = Field(4, ge=0, le=20)
    """Retries of one request after a transient error (exponential backoff with jitter, at least
    the provider's Retry-After); the database stages of a slice have their own."""
    max_input_tokens: int | None = Field(None, ge=1, le=10_000_000)
    """Most tokens in one input; default: the model's known limit (8191 for OpenAI's)."""
    on_too_long: Literal["truncate", "fail"] = "truncate"
    """An input over the limit is cut to fit (token-exact where the tokenizer is known),
    or recorded as a failure."""
    update_trigger: Literal["statement", "row"] = "statement"
    """How UPDATEs of the source table are watched. ``statement``: one trigger per statement
    compares old and new rows (cheap for bulk updates of the embedded columns; an UPDATE of
    other columns still has its rows compared). ``row``: a row-level trigger that fires only
    when a key or embedded column really changed (nothing for other columns; a function
    call per changed row in bulk updates). INSERT, DELETE and TRUNCATE are statement-level
    either way."""
    prune_on_switch: bool = False
    """Drop the old version's tables as soon as a new model's version replaces it (default:
    keep them until ``vectorfill job prune``)."""
    api_key_header: Literal["bearer", "api-key"] = "bearer"
    """How the key is sent: ``Authorization: Bearer KEY`` (OpenAI and most servers) or
    ``api-key: KEY`` (Azure OpenAI)."""
    api_version: str | None = Field(None, min_length=1, max_length=40, pattern=r"^[A-Za-z0-9._-]+$")
    """Sent as the ``api-version`` query parameter (Azure OpenAI, e.g. ``2024-02-01``)."""
    prices: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    """USD per million input tokens by model, for estimates and run summaries, over the
    table in :mod:`vectorfill.provider.prices` (a model in neither has an unknown cost)."""
    max_usd_per_day: float | None = Field(None, gt=0, le=1_000_000)
    """Most USD this job may spend a UTC day (at its prices: ``prices``, and ``batch_prices``
    for the Batch API), checked before each request: the request that would pass it is not
    sent and the run stops with the rows queued (``serve`` waits for midnight UTC). None: no cap."""
    endpoint_max_usd_per_day: float | None = Field(None, gt=0, le=1_000_000)
    """The same, shared by every job on this endpoint and model (``vectorfill.spend``, like
    the rpm/tpm budget): give each job the endpoint's whole cap."""
    matryoshka: bool = False
    """The model's vectors may be shortened: a vector at fewer ``dimensions`` is the full one
    cut to its first values and L2-normalised again (a self-hosted Matryoshka model). The
    models known to work so (:data:`vectorfill.provider.matryoshka.SHORTENS`) need not say
    it. A model change to fewer dimensions is then derived from the active version's vectors
    with no request."""
    # -- the Batch API (vectorfill.provider.batches)
    batch: bool = False
    """Backfills go through the provider's Batch API (half price at OpenAI, results within
    24 h) unless ``vectorfill backfill --online`` says otherwise."""
    batch_max_inputs: int = Field(50_000, ge=1, le=50_000)
    """Most inputs in one provider batch (OpenAI's limit for /v1/embeddings is 50,000)."""
    batch_prices: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    """USD per million input tokens sent through the Batch API, by model, over the table
    (half the online price for OpenAI's embedding models)."""
    documents: DocumentSettings | None = None
    """A document job (``job create --uri COL``): each row's input is the document its URI
    column names, parsed and chunked; None for a job that embeds the text in its columns."""


#: How a version stores its vectors: ``auto`` is ``halfvec`` when the dimensions exceed
#: what HNSW indexes on ``vector`` (2,000), else ``vector``.
STORAGE_TYPES = ("auto", "vector", "halfvec")


class ChunkSettings(BaseModel):
    """How a version cuts each row's text into inputs (one vector each). Sizes are in tokens
    of the version's model's tokenizer (exact for cl100k and the bundled MiniLM; for other
    models a byte estimate, 1 token per 3 UTF-8 bytes, which over-counts: chunks come out
    smaller than asked, never larger)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chunker: Literal["none", "tokens", "recursive"] = "none"
    """``none``: the whole text is one input (as before chunking existed); ``tokens``:
    windows of ``size`` tokens, ``overlap`` tokens apart; ``recursive``: paragraphs, then
    lines, sentences, words, merged up to ``size`` tokens."""
    size: int = Field(400, ge=8, le=100_000)
    """Most tokens of one chunk (the template's tokens included)."""
    overlap: int = Field(0, ge=0, le=50_000)
    """Tokens a chunk repeats from the end of the one before it (``tokens``; for
    ``recursive``: whole pieces up to this many tokens)."""
    template: str | None = None
    """A chunk's input, e.g. ``"{title}: {chunk}"``: source columns and ``{chunk}``."""
    max_chunks: int = Field(10_000, ge=1, le=10_000_000)
    """A row that would produce more chunks than this is failed with the reason, not cut."""

    @property
    def enabled(self) -> bool:
        return self.chunker != "none"


def validate_job_name(name: str) -> str:
    if not _JOB_NAME.match(name or ""):
        raise ConfigError(
            f"job name {name!r} is not allowed: use 1-40 lowercase letters, digits and "
            "underscores, starting with a letter (it becomes the view vectorfill.<name>)"
        )
    if name in RESERVED_JOB_NAMES:
        raise ConfigError(f"job name {name!r} is reserved by vectorfill; choose another name")
    return name


def database_url_from_env() -> str | None:
    return os.environ.get(DATABASE_URL_ENV) or None


def read_api_key(env_var: str | None, *, job: str | None = None) -> SecretStr | None:
    """The API key from the named environment variable, or None when the job needs none."""
    if not env_var:
        return None
    value = os.environ.get(env_var)
    if not value:
        raise SecretMissing(
            f"the API key variable {env_var} is not set in this environment; "
            f"export {env_var}=... (the key is read from the environment, never stored)",
            job=job,
        )
    return SecretStr(value)


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape_template(template: str) -> str:
    """A template as typed on a command line, with ``\\n``, ``\\t``, ``\\r`` and ``\\\\`` turned
    into the characters they name; every other character, non-ASCII included, is kept as
    it is (``"Über {title} — {body}\\n\\nEnde"`` keeps its "Ü" and "—")."""
    return re.sub(r"\\([ntr\\])", lambda m: _ESCAPES[m.group(1)], template)
