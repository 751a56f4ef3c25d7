"""Running the embeddings server: ``run_server`` for the CLI, ``main`` for ``python -m``.

::

    python -m vectorfill.local.embeddings_server --model all-MiniLM-L6-v2 --port 8000 --api-key-env EMBED_KEY
    python -m vectorfill.local.embeddings_server --model fake-embed        # deterministic fake, no torch needed
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import uvicorn

from vectorfill.errors import SecretMissing, VectorfillError
from vectorfill.local.embeddings_server.app import create_app
from vectorfill.local.embeddings_server.encoders import LOCAL_MODEL, load_encoder

__all__ = ["ServerThread", "main", "run_server"]


def run_server(model: str, host: str, port: int, api_key_env: str | None) -> None:
    """Serve ``model`` on ``host:port`` until interrupted.

    ``model`` is ``all-MiniLM-L6-v2`` (needs the ``[local]`` extra), ``fake-embed``, or
    the path of a sentence-transformers model directory. With ``api_key_env``, clients
    must send ``Authorization: Bearer`` with the key read from that environment
    variable; the key itself is never printed or logged.
    """
    api_key: str | None = None
    if api_key_env:
        api_key = os.environ.get(api_key_env) or None
        if api_key is None:
            raise SecretMissing(
                f"--api-key-env names {api_key_env}, but that environment variable is not set "
                f"or empty: export {api_key_env}=<key> or leave out --api-key-env to serve without auth"
            )
    encoder = load_encoder(model)
    app = create_app(encoder, api_key=api_key)
    auth = f"Bearer key from ${api_key_env}" if api_key_env else "none"
    print(
        f"vectorfill: serving {encoder.name} ({encoder.dimensions} dims, max {encoder.max_tokens} "
        f"tokens per input) at http://{host}:{port}/v1, auth: {auth}",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vectorfill.local.embeddings_server",
        description="Serve OpenAI-compatible embeddings on /v1/embeddings.",
    )
    parser.add_argument("--model", default=LOCAL_MODEL, help=f"model to serve (default {LOCAL_MODEL}; or fake-embed)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key-env", default=None, help="environment variable holding the API key to require")
    args = parser.parse_args(argv)
    try:
        run_server(args.model, args.host, args.port, args.api_key_env)
    except VectorfillError as exc:
        print(f"vectorfill: {exc}", file=sys.stderr)
        return 2
    return 0


class ServerThread:
    """Runs an ASGI app with uvicorn on a background thread, on a free loopback port."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._socket = sock
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the embeddings server on port {self.port} did not start")
            time.sleep(0.005)

    def stop(self, timeout: float = 10.0, *, wait: bool = True) -> None:
        """Stop serving. With ``wait=False`` return at once and let the thread wind down by
        itself (uvicorn notices within ~0.2 s): for callers that need the server gone, not
        the port closed before they go on."""
        server, thread, sock = self._server, self._thread, self._socket
        self._server = self._thread = self._socket = None
        if server is not None:
            server.should_exit = True

        def finish() -> None:
            if thread is not None:
                thread.join(timeout)
            if sock is not None:
                sock.close()

        if wait:
            finish()
        else:
            threading.Thread(target=finish, name="uvicorn-stop", daemon=True).start()

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
