"""Which Prefect API this process talks to: ``PREFECT_API_URL`` when set (nothing is
started then), else the local Prefect server of this machine
(:mod:`vectorfill.orchestration.local_server`), started on first need.

``vectorfill serve`` also writes ``$VECTORFILL_HOME/prefect-server.json`` while it runs, so
that ``job set-model`` knows whether a served re-embed deployment will hear its event.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from vectorfill.orchestration import local_server
from vectorfill.orchestration.local_server import healthy, home

__all__ = ["served_api_url", "use_api", "use_running_api", "use_served_api"]

_STATE_FILE = "prefect-server.json"


def _home() -> Path:
    return home()


def _state_path() -> Path:
    return _home() / _STATE_FILE


def _healthy(api_url: str, timeout: float = 2.0) -> bool:
    return healthy(api_url, timeout)


def served_api_url() -> str | None:
    """The API URL of the Prefect server a running ``vectorfill serve`` uses, if any."""
    try:
        state = json.loads(_state_path().read_text())
    except (OSError, ValueError):
        return None
    try:
        os.kill(int(state["serve_pid"]), 0)
    except (OSError, KeyError, ValueError):
        return None
    api = state.get("api_url")
    return api if api and _healthy(api) else None


def use_served_api() -> str | None:
    """``PREFECT_API_URL``, else (and then set as it) the API a running ``vectorfill serve``
    uses; None when neither is there. For ``job set-model``: its event only matters to a
    served re-embed deployment."""
    api = os.environ.get("PREFECT_API_URL") or served_api_url()
    if api:
        os.environ["PREFECT_API_URL"] = api
    return api


def use_running_api() -> str | None:
    """``PREFECT_API_URL``, else (and then set as it) the local server if it is running;
    None otherwise. Starts nothing."""
    api = os.environ.get("PREFECT_API_URL")
    if api:
        return api
    server = local_server.running()
    return local_server.use(server) if server else None


def use_api(db_url: str | None, *, port: int | None = None, announce: Callable[[str], object] = print) -> str:
    """The Prefect API for this process, set as ``PREFECT_API_URL``: that variable when set,
    else the local server, started now (its history beside ``db_url``) if it is not running."""
    api = os.environ.get("PREFECT_API_URL")
    if api:
        return api
    return local_server.use(local_server.ensure(db_url, port=port, announce=announce))
