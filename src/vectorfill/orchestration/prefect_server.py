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
from datetime import timedelta
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_IDLE_HOURS",
    "IDLE_HOURS_ENV",
    "idle_hours",
    "main",
    "pubsub_queue_get",
    "quiet_background_worker",
    "quiet_web_server",
    "should_stop",
    "web_server_main_loop",
]

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
    # lazy: the server's own process imports only what its idle watch needs, when it runs
    from vectorfill.orchestration.api import served_api_url

    try:
        return served_api_url() is not None
    except Exception:  # never stop a server because the check failed
        return True


QUIET_ENV = "VECTORFILL_PREFECT_QUIET"
"""``0`` runs the server with its libraries' own polling intervals (to compare)."""
WEB_SERVER_TICK_S = 1.0
"""uvicorn's main loop wakes every 0.1 s to refresh its Date header (once a second) and see
whether it should exit; here every second."""

DOCKET_POLL = timedelta(seconds=2)
"""How often the server's background-task worker polls its in-memory queue (Prefect leaves
pydocket's 0.25 s) and how often it moves due tasks: the services vectorfill keeps run every
5-60 s, so two seconds more or less do not matter, and an idle server wakes 8 times less."""
DOCKET_HEARTBEAT = timedelta(seconds=30)
"""The worker's liveness heartbeat (pydocket's 2 s); only docket's own worker list reads it."""


def quiet_background_worker() -> None:
    """Slow down the polling of the server's background-task worker (pydocket, which every
    Prefect 3 server runs, services or not, and no Prefect setting configures): an idle server
    spent most of its CPU in these loops. Prefect builds ``Docket(...)`` and ``Worker(docket)``
    with the library's defaults; this sets other defaults, before the server starts."""
    import docket

    worker_init = docket.Worker.__init__
    docket_init = docket.Docket.__init__

    def worker(self: docket.Worker, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("minimum_check_interval", DOCKET_POLL)
        kwargs.setdefault("scheduling_resolution", DOCKET_POLL)
        worker_init(self, *args, **kwargs)

    def docket_(self: docket.Docket, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("heartbeat_interval", DOCKET_HEARTBEAT)
        docket_init(self, *args, **kwargs)

    docket.Worker.__init__ = worker  # type: ignore[method-assign]
    docket.Docket.__init__ = docket_  # type: ignore[method-assign]
    _quiet_memory_pubsub()


def _quiet_memory_pubsub() -> None:
    """The worker's cancellation listener reads the in-memory Redis's pub/sub with a 0.1 s
    timeout, forever, and each read is a hop to a thread (``asyncio.to_thread``): 10 hops a
    second, most of an idle server's wakeups. Here a blocking read looks at the queue on the
    event loop every :data:`DOCKET_POLL` instead (a read with a shorter timeout waits that
    long). Only docket's cancellations travel there, which Prefect's server does not send."""
    import importlib

    try:
        pubsub = importlib.import_module("burner_redis.pubsub")
    except ImportError:  # docket on a real Redis: nothing to quiet
        return
    if not hasattr(pubsub.PubSub, "_queue_get"):
        return  # another burner_redis: leave it as it is
    pubsub.PubSub._queue_get = pubsub_queue_get


async def pubsub_queue_get(self: Any, timeout: float | None) -> object:  # noqa: ASYNC109 (the method's signature)
    """burner_redis's ``PubSub._queue_get`` without a thread: the next message of
    ``self._queue`` (a :class:`queue.Queue`) or None; 0 looks once, None waits for one, any
    other timeout waits ``max(timeout, DOCKET_POLL)`` once."""
    import asyncio
    import queue

    while True:
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            if timeout == 0.0:
                return None
        await asyncio.sleep(DOCKET_POLL.total_seconds())
        if timeout is not None:
            try:
                return self._queue.get_nowait()
            except queue.Empty:
                return None


def quiet_web_server() -> None:
    """uvicorn's main loop: one tick a second instead of ten (its work happens once a second
    anyway; a stop is noticed within a second instead of 0.1 s)."""
    from uvicorn.server import Server

    Server.main_loop = web_server_main_loop  # type: ignore[method-assign]


async def web_server_main_loop(self: Any) -> None:
    """uvicorn's ``Server.main_loop``, ticking every :data:`WEB_SERVER_TICK_S`."""
    import asyncio

    counter = 0
    should_exit = await self.on_tick(counter)
    while not should_exit:
        counter = (counter + 10) % 864000  # on_tick's once-a-second work (counter % 10 == 0) runs at each tick
        await asyncio.sleep(WEB_SERVER_TICK_S)
        should_exit = await self.on_tick(counter)


def main(argv: list[str]) -> None:
    """Run ``prefect ARGV...`` (``argv[0]`` is ``prefect``) in this process, with the idle stop."""
    # lazy: the server's own process imports only what its idle watch needs, when it runs
    from vectorfill.orchestration.local_server import used_path

    hours = idle_hours()
    if hours > 0:
        port = int(argv[argv.index("--port") + 1]) if "--port" in argv else None
        watcher = threading.Thread(
            target=_watch, args=(used_path(), hours * 3600, _serving, time.time(), port), daemon=True, name="idle-stop"
        )
        watcher.start()
    if os.environ.get(QUIET_ENV) != "0":
        quiet_background_worker()
        quiet_web_server()
    sys.argv = argv
    runpy.run_module("prefect", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
