"""An OpenAI-compatible embeddings server: a real local model or a deterministic fake.

::

    from vectorfill.local.embeddings_server import HashEncoder, create_app
    app = create_app(HashEncoder(dimensions=384), api_key="sk-test")

``run_server`` is what ``vectorfill serve-embeddings`` calls.
"""

from vectorfill.local.embeddings_server.app import EmbeddingCall, EmbeddingResult, Interceptor, create_app
from vectorfill.local.embeddings_server.encoders import (
    FAKE_MODEL,
    LOCAL_MODEL,
    Encoder,
    HashEncoder,
    SentenceTransformerEncoder,
    expected_vector,
    load_encoder,
)
from vectorfill.local.embeddings_server.runner import ServerThread, main, run_server

__all__ = [
    "FAKE_MODEL",
    "LOCAL_MODEL",
    "EmbeddingCall",
    "EmbeddingResult",
    "Encoder",
    "HashEncoder",
    "Interceptor",
    "SentenceTransformerEncoder",
    "ServerThread",
    "create_app",
    "expected_vector",
    "load_encoder",
    "main",
    "run_server",
]
