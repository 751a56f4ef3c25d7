"""``vectorfill serve --sync``: a sync run per job, one window after another, beside the schedules.

The supervisor runs in a thread of the ``serve`` process, with its own event loop: for each
job, the sync flow (``flows/sync.py``) for the current window, then the next one, so that
exactly one sync run per job works at any time. The runs are in-process flow calls, not
deployment runs: a new window starts within milliseconds (a served deployment run would
start a subprocess, seconds of imports, each hour), and stopping ``serve`` (Ctrl-C,
SIGTERM) stops them at once: each gives back its claims and shared budget and ends with
its summary.

A run that fails (an error that is not transient: a wrong key, a dropped source table)
is recorded as failed in Prefect and the next starts after :data:`RESTART_BACKOFF_S`, so a
lasting fault costs a few runs an hour, not a loop. Transient faults (the provider down,
Postgres restarting) are waited out inside the run (``engine/follow.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

__all__ = ["RESTART_BACKOFF_S", "SyncSupervisor", "run_name"]

#: Seconds before the run after a failed one (the last repeats).
RESTART_BACKOFF_S = (5.0, 15.0, 60.0, 300.0, 600.0)

log = logging.getLogger("vectorfill.sync")


def run_name(job: str, start: float) -> str:
    """``sync-<job>-2026-12-01T15:00``: the job and the window's start (UTC)."""
    return f"sync-{job}-{datetime.fromtimestamp(start, UTC):%Y-%m-%dT%H:%M}"


class SyncSupervisor:
    """Sync runs for ``jobs``, window after window, in a thread; :meth:`stop` cancels them
    and waits for them to give back what they hold."""

    def __init__(
        self, jobs: list[str], *, window_s: float | None = None, announce: Callable[[str], object] = print
    ) -> None:
        # lazy: Prefect reads its settings when imported; the caller sets them first (prefect_defaults, use_api)
        from vectorfill.flows.sync import DEFAULT_WINDOW_S

        self.jobs = list(jobs)
        self.window_s = window_s or DEFAULT_WINDOW_S
        self.announce = announce
        self.runs = 0
        self.failures = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task | None = None
        self._started = threading.Event()
        self._stops: list[asyncio.Event] = []

    def start(self) -> SyncSupervisor:
        context = contextvars.copy_context()  # Prefect's settings in force here (a test's server, say)
        self._thread = threading.Thread(target=context.run, args=(self._run,), name="vectorfill-sync", daemon=True)
        self._thread.start()
        self._started.wait(30)
        return self

    def _run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(self._supervise())

    async def _supervise(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._main = asyncio.current_task()
        self._started.set()
        async with asyncio.TaskGroup() as group:
            for job in self.jobs:
                group.create_task(self._keep_syncing(job))

    async def _keep_syncing(self, job: str) -> None:
        # lazy: Prefect reads its settings when imported; the caller sets them first (prefect_defaults, use_api)
        from vectorfill.engine.follow import STOP
        from vectorfill.flows.sync import sync, window_bounds

        stop = asyncio.Event()
        self._stops.append(stop)
        STOP.set(stop)  # this task's context: its runs see it
        failures = 0
        while not stop.is_set():
            start, _ = window_bounds(self.window_s)
            run = sync.with_options(flow_run_name=run_name(job, start))
            try:
                self.runs += 1
                await run(job=job, window_s=self.window_s)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
                failures += 1
                self.announce(f"sync of {job} stopped: {exc}; the next sync run starts in {delay:.0f} s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)

    def stop(self, timeout: float = 60.0) -> bool:
        """Stop the runs: each gives back its claims and budget and ends with its summary
        (cancelled outright if that takes more than half of ``timeout``); True when the
        thread ended within ``timeout``."""
        if self._thread is None:
            return True
        deadline = time.monotonic() + timeout
        self._call(self._set_stops)
        self._thread.join(timeout / 2)
        if self._thread.is_alive():
            self._call(lambda: self._main.cancel() if self._main else None)
            self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()

    def _set_stops(self) -> None:
        for stop in self._stops:
            stop.set()

    def _call(self, fn: Callable[[], object]) -> None:
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(fn)
