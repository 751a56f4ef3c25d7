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

from vectorfill.errors import ConfigError
from vectorfill.orchestration import local_server
from vectorfill.orchestration.local_server import healthy, home

__all__ = ["served_api_url", "use_api", "use_api_while", "use_running_api", "use_served_api"]

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


def use_api_while(
    db_url: str | None, prepare: Callable[[], object], *, announce: Callable[[str], object] = print
) -> str:
    """:func:`use_api`, and ``prepare()`` run as early as it can: when the local server must
    be started, as soon as its address is known, while it starts (a server start is seconds
    of work in another process; ``prepare`` is the caller's own, such as importing Prefect,
    which needs ``PREFECT_API_URL`` set first). Returns the API URL once the server answers.

    Raises what starting the server raised; a :class:`~vectorfill.errors.ConfigError` if the
    server came up on another address than first announced (another process took the port
    meanwhile: running the command again finds it)."""
    import threading

    if os.environ.get("PREFECT_API_URL") or local_server.running() is not None:
        api = use_api(db_url, announce=announce)
        prepare()
        return api
    known = threading.Event()
    address: list[str] = []
    result: list[local_server.LocalServer] = []
    failure: list[BaseException] = []

    def told(api_url: str) -> None:
        if not address:
            address.append(api_url)
            known.set()

    def start() -> None:
        try:
            result.append(local_server.ensure(db_url, announce=announce, on_address=told))
        except BaseException as exc:
            failure.append(exc)
        finally:
            known.set()

    starter = threading.Thread(target=start, name="prefect-server-start", daemon=True)
    starter.start()
    known.wait()
    if address:
        local_server.use_address(address[0])
        prepare()
    starter.join()
    if failure:
        raise failure[0]
    api = local_server.use(result[0])
    if address and api != address[0]:
        raise ConfigError(f"the local Prefect server started on {api}, not {address[0]}: run the command again")
    if not address:
        prepare()
    return api
