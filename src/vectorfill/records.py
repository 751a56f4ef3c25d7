"""The records vectorfill keeps about a job, as plain frozen dataclasses.

A **job** names a source table, its key, the text to embed (columns or a template) and
its settings. A job has one or more **versions**: each is one model (and dimensions) with
its own queue and vector table. The *active* version is what the job's view
``vectorfill.<job>`` shows; a *filling* version is being built beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from vectorfill.config import ChunkSettings, JobSettings

__all__ = ["HNSW_MAX_DIMS", "VECTOR_HNSW_MAX_DIMS", "VERSION_STATES", "Caps", "Grant", "Job", "Version"]

#: The most dimensions pgvector's HNSW indexes, per column type.
HNSW_MAX_DIMS = {"vector": 2000, "halfvec": 4000}
VECTOR_HNSW_MAX_DIMS = HNSW_MAX_DIMS["vector"]

VERSION_STATES = ("filling", "active", "paused", "retired")
"""A job has at most one ``active`` version and at most one ``filling``/``paused`` one."""


@dataclass(frozen=True)
class Version:
    job_id: int
    version: int
    model: str
    base_url: str
    api_key_env: str | None
    dimensions: int | None
    """The ``dimensions`` request parameter, or None to use the model's native size."""
    vector_dims: int | None
    """The vector column's size, known once the first request is stored."""
    state: str
    """``active`` (what the view shows), ``filling`` (being built beside it), ``paused``
    (a filling version that runs skip) or ``retired`` (replaced; kept until pruned)."""
    created_at: datetime | None = None
    activated_at: datetime | None = None
    storage: str = "auto"
    """``auto``, ``vector`` (float32) or ``halfvec`` (float16): see :attr:`vector_type`."""
    chunking: ChunkSettings = field(default_factory=ChunkSettings)
    """How each row's text is cut into inputs (a change of it is a new version, like a model's)."""

    @property
    def vector_type(self) -> str:
        """The column type: ``halfvec`` when asked, or under ``auto`` when the dimensions
        exceed what HNSW indexes on ``vector``; else ``vector``."""
        if self.storage == "halfvec":
            return "halfvec"
        if self.storage == "auto" and self.vector_dims and self.vector_dims > VECTOR_HNSW_MAX_DIMS:
            return "halfvec"
        return "vector"

    @property
    def options(self) -> dict:
        """What ``vectorfill.versions.options`` stores for this version."""
        return {"storage": self.storage, "chunking": self.chunking.model_dump()}

    @property
    def queue_table(self) -> str:
        return f"_q_{self.job_id}_{self.version}"

    @property
    def vector_table(self) -> str:
        return f"_v_{self.job_id}_{self.version}"


@dataclass(frozen=True)
class Job:
    id: int
    name: str
    source_schema: str
    source_table: str
    key_columns: tuple[str, ...]
    key_types: tuple[str, ...]
    text_columns: tuple[str, ...]
    template: str | None
    settings: JobSettings
    versions: tuple[Version, ...]

    @property
    def source(self) -> str:
        return f"{self.source_schema}.{self.source_table}"

    @property
    def active(self) -> Version | None:
        return next((v for v in self.versions if v.state == "active"), None)

    @property
    def next(self) -> Version | None:
        """The version being built to replace the active one (filling or paused), if any."""
        return next((v for v in self.versions if v.state in ("filling", "paused")), None)

    @property
    def live_versions(self) -> tuple[Version, ...]:
        """Versions whose vectors are kept in step with the source (all but retired)."""
        return tuple(v for v in self.versions if v.state != "retired")

    def version(self, number: int) -> Version:
        for v in self.versions:
            if v.version == number:
                return v
        raise KeyError(number)


@dataclass(frozen=True)
class Caps:
    """What is remembered about an endpoint (None: nothing learnt)."""

    max_inputs: int | None = None
    max_request_tokens: int | None = None
    encoding_format: str | None = None
    max_input_tokens: int | None = None
    """The most tokens one input may have (the model's limit, as the server said it)."""
    input_token_ratio: float | None = None
    """The server's tokens per estimated token (bytes/3) of ASCII text, from the count it named
    for an input it refused: what inputs are cut by when the model's tokenizer is unknown."""


@dataclass(frozen=True)
class Grant:
    """What one lease from a shared budget (:class:`vectorfill.provider.ratelimit.SharedBudget`) gave and saw."""

    requests: float
    """Requests granted (what was asked, or less when the bucket held less)."""
    tokens: float
    """Tokens granted, likewise."""
    left_requests: float | None
    """Requests left in the shared bucket after the grant (None: no request limit)."""
    left_tokens: float | None
    """Tokens left in the shared bucket after the grant (None: no token limit)."""
    rpm: float | None
    """The request limit in force for the endpoint (the lowest asserted lately)."""
    tpm: float | None
    """The token limit in force, likewise."""
    paused_s: float = 0.0
    """Seconds of a pause that a 429 asked for and that are not over yet."""
