"""The local Prefect server's process: Prefect's own ``prefect server start``, run in this
process, with an idle stop beside it.

:mod:`vectorfill.orchestration.local_server` starts it as
``python -m vectorfill.orchestration.prefect_server prefect server start --host ... --port ...``.
A daemon thread watches when the server was last used: a client connected to it (a run
in progress holds its API and events connections; a browser on the UI too), or a vectorfill
command that looked it up (the mtime of ``$VECTORFILL_HOME/prefect-local.used``, touched by
:func:`local_server.use`). Once nothing has for ``VECTORFILL_PREFECT_IDLE_HOURS`` (default :data:`DEFAULT_IDLE_HOURS`; 0 never),
and no ``vectorfill serve`` runs on it, it stops the server as SIGTERM does. The next
command that needs the server starts it again (its state file then names a dead process).
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["DEFAULT_IDLE_HOURS", "IDLE_HOURS_ENV", "idle_hours", "main", "should_stop"]

IDLE_HOURS_ENV = "VECTORFILL_PREFECT_IDLE_HOURS"
DEFAULT_IDLE_HOURS = 4.0
"""A working day's pauses keep it; a laptop left overnight does not keep it running."""


def idle_hours() -> float:
    """The idle stop's hours from the environment (0 or less: never)."""
    try:
        return float(os.environ.get(IDLE_HOURS_ENV, DEFAULT_IDLE_HOURS))
    except ValueError:
        return DEFAULT_IDLE_HOURS


def should_stop(*, last_used: float, now: float, idle_s: float, serving: bool) -> bool:
    """Whether the server has been idle long enough to stop: nothing used it for ``idle_s``
    seconds (> 0) and no ``vectorfill serve`` relies on it."""
    return idle_s > 0 and not serving and now - last_used >= idle_s


def _connected(port: int | None) -> bool:
    """Whether a client holds a connection to this server now (a run in progress keeps its
    API and events connections open; so does a browser on the UI)."""
    import psutil

    if port is None:
        return False
    try:
        conns = psutil.Process().net_connections("tcp")
    except psutil.Error:
        return True  # cannot tell: count it as used
    return any(c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port for c in conns)


def _watch(used: Path, idle_s: float, serving: Callable[[], bool], started: float, port: int | None) -> None:
    poll = min(60.0, max(idle_s / 10, 0.5))
    seen = started
    while True:
        time.sleep(poll)
        if _connected(port):
            seen = time.time()
        try:
            last = max(used.stat().st_mtime, seen)
        except OSError:
            last = seen
        if should_stop(last_used=last, now=time.time(), idle_s=idle_s, serving=serving()):
            print(f"vectorfill: no command used this server for {idle_s / 3600:g} h: stopping", flush=True)
            os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down as on `vectorfill stop`
            return


def _serving() -> bool:
    from vectorfill.orchestration.api import served_api_url

    try:
        return served_api_url() is not None
    except Exception:  # never stop a server because the check failed
        return True


def main(argv: list[str]) -> None:
    """Run ``prefect ARGV...`` (``argv[0]`` is ``prefect``) in this process, with the idle stop."""
    from vectorfill.orchestration.local_server import used_path

    hours = idle_hours()
    if hours > 0:
        port = int(argv[argv.index("--port") + 1]) if "--port" in argv else None
        watcher = threading.Thread(
            target=_watch, args=(used_path(), hours * 3600, _serving, time.time(), port), daemon=True, name="idle-stop"
        )
        watcher.start()
    sys.argv = argv
    runpy.run_module("prefect", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
