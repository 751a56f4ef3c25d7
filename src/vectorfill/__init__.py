"""vectorfill: keep pgvector embeddings in step with the text in Postgres.

The command line (``vectorfill``) is the main interface; these names are the library's
public face. The backfill flow is :func:`vectorfill.flows.backfill.backfill` (imported on
demand: it brings Prefect in).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from vectorfill.config import JobSettings
    from vectorfill.provider.client import Embeddings, EmbeddingsClient

# Imported on first use (PEP 562): pydantic, numpy and httpx cost ~0.4 s, which commands
# such as `vectorfill status` do not need.
_LAZY = {
    "JobSettings": "vectorfill.config",
    "Embeddings": "vectorfill.provider.client",
    "EmbeddingsClient": "vectorfill.provider.client",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vectorfill' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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
