"""Looks at a home's local Prefect server, shared by the local-server modules: the state file
`vectorfill` keeps for it, and whether a server answers."""

from __future__ import annotations

import json
from pathlib import Path

import httpx


def state(home: Path) -> dict:
    return json.loads((home / "prefect-local.json").read_text())


def answers(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
