"""vectorfill: keep pgvector embeddings in step with the text in Postgres.

The command line (``vectorfill``) is the main interface; these names are the library's
public face. The backfill flow is :func:`vectorfill.flows.backfill.backfill` (imported on
demand: it brings Prefect in).
"""

from vectorfill.config import JobSettings
from vectorfill.errors import (
    AuthenticationError,
    ConfigError,
    DatabaseError,
    InputError,
    JobError,
    ModelNotFound,
    ProviderError,
    QuotaExceeded,
    SecretMissing,
    SourceError,
    TerminalProviderError,
    TransientProviderError,
    VectorfillError,
)
from vectorfill.provider.client import Embeddings, EmbeddingsClient

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "DatabaseError",
    "Embeddings",
    "EmbeddingsClient",
    "InputError",
    "JobError",
    "JobSettings",
    "ModelNotFound",
    "ProviderError",
    "QuotaExceeded",
    "SecretMissing",
    "SourceError",
    "TerminalProviderError",
    "TransientProviderError",
    "VectorfillError",
    "__version__",
]
