"""Running flows from the CLI: Prefect settings that suit vectorfill, and a progress bar.

With no ``PREFECT_API_URL`` set, Prefect starts a temporary local server for the run; these
defaults make that reliable (a generous start-up timeout, task-run history kept, no
telemetry). Any value already in the environment wins: point ``PREFECT_API_URL`` at a real
Prefect server to keep run history there.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import threading
import time
from collections.abc import Iterator

from vectorfill.config import DATABASE_URL_ENV

__all__ = ["frozen_heap", "prefect_defaults", "run_backfill"]

PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "100",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
}


def prefect_defaults(*, verbose: bool = False, use_served: bool = True) -> None:
    """Set vectorfill's Prefect defaults for this process (call before importing prefect).

    With no ``PREFECT_API_URL`` set and ``vectorfill serve`` running on this machine, runs
    go to its Prefect server (so they show up in its history and UI)."""
    if use_served:
        from vectorfill.orchestration.api import use_served_api

        use_served_api()
    if not os.environ.get("PREFECT_API_URL"):
        # Prefect's temporary server: its event log feeds nothing after the run (automations
        # need `vectorfill serve` or a real server) and persisting it was ~45% of the server's
        # CPU in bench/bench_throughput.py; flow runs, task runs, logs and artifacts are kept.
        os.environ.setdefault("PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED", "false")
    for key, value in PREFECT_DEFAULTS.items():
        if key == "PREFECT_LOGGING_LEVEL" and verbose:
            value = "INFO"
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Leave the objects that exist now out of the garbage collector's full passes while
    the block runs (:func:`gc.freeze`), and give them back to it afterwards.

    A backfill process holds a large, long-lived heap (Prefect, pydantic, SQLAlchemy and
    their modules): each full (generation 2) collection walks all of it, about 150 ms on
    these machines with the event loop stopped, and a run makes several. Frozen, those
    passes walk only what the run itself allocated. Nothing is leaked: garbage that
    existed before the block is collected after it, by the next full pass.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _poll_progress(url: str, job: str, stop: threading.Event, console) -> None:
    """A progress bar fed by the job's exact counts in Postgres (the source of truth)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vectorfill.jobs.registry import job_status
    from vectorfill.storage.db import connect

    try:
        with connect(url, autocommit=True) as conn:
            first = job_status(conn, job)
            total = first.embedded + first.pending
            with Progress(
                TextColumn(f"[bold]{job}[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            ) as bar:
                task = bar.add_task("embedding", total=max(total, 1), completed=first.embedded, rate="")
                started, base = time.monotonic(), first.embedded
                while True:
                    done = stop.wait(0.5)
                    now = job_status(conn, job)
                    elapsed = max(time.monotonic() - started, 1e-6)
                    bar.update(
                        task,
                        total=max(now.embedded + now.pending, 1),
                        completed=now.embedded,
                        rate=f"{(now.embedded - base) / elapsed:,.0f} rows/s",
                    )
                    if done:
                        break
    except Exception:  # the bar is a convenience; the flow reports its own errors
        return


def run_backfill(url: str, job: str, *, max_rows: int | None = None, progress: bool = True, console=None, **flow_kw):
    """Run the backfill flow in this process and return its :class:`RunSummary`."""
    os.environ[DATABASE_URL_ENV] = url
    from vectorfill.flows.backfill import backfill

    stop = threading.Event()
    poller = None
    if progress:
        poller = threading.Thread(target=_poll_progress, args=(url, job, stop, console), daemon=True)
        poller.start()
    try:
        return asyncio.run(backfill(job, max_rows=max_rows, **flow_kw))
    finally:
        stop.set()
        if poller is not None:
            poller.join(timeout=5)
