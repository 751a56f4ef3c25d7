"""Which Prefect API this process talks to: ``PREFECT_API_URL``, else the server that a
running ``vectorfill serve`` uses on this machine (found through its state file)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx

__all__ = ["served_api_url", "use_served_api"]

_STATE_FILE = "prefect-server.json"


def _home() -> Path:
    from vectorfill.local.pgembedded import default_data_dir

    return default_data_dir().parent


def _state_path() -> Path:
    return _home() / _STATE_FILE


def _healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


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
    """The Prefect API this process uses: ``PREFECT_API_URL``, else (and then set as it) the
    one a running ``vectorfill serve`` uses; None when neither is there."""
    api = os.environ.get("PREFECT_API_URL") or served_api_url()
    if api:
        os.environ["PREFECT_API_URL"] = api
    return api
