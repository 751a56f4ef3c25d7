"""Running flows from the CLI: Prefect settings that suit vectorfill, and a progress bar.

The CLI runs flows on ``PREFECT_API_URL`` or the local Prefect server
(:func:`vectorfill.orchestration.api.use_api`). A program that runs the flow itself, with
neither set nor running, gets Prefect's temporary server for the run; these defaults make
that reliable (a generous start-up timeout, task-run history kept, no telemetry). Any value
already in the environment wins.

Logs: Prefect's own loggers stay at WARNING, but the run loggers (``prefect.flow_runs``,
``prefect.task_runs``) are at INFO, so that the per-slice and summary lines reach the
run's Logs tab in the UI; the console shows them only with ``--verbose``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from pathlib import Path

from vectorfill.config import DATABASE_URL_ENV
from vectorfill.errors import ConfigError
from vectorfill.jobs.registry import job_status
from vectorfill.local.pgembedded import default_data_dir
from vectorfill.orchestration.api import use_running_api
from vectorfill.orchestration.settings import PREFECT_DEFAULTS
from vectorfill.storage.db import connect

__all__ = [
    "Progress",
    "RunErrorsOffConsole",
    "keep_sigterm_handler",
    "prefect_defaults",
    "prepare_run",
    "quiet_run_errors",
    "run_backfill",
]


def prefect_defaults(*, verbose: bool = False, use_served: bool = True) -> None:
    """Set vectorfill's Prefect defaults for this process (call before importing prefect).

    With no ``PREFECT_API_URL`` set and the local Prefect server running on this machine
    (and ``use_served``), runs go to it (so they show up in its history and UI); nothing is
    started here (the CLI's :func:`~vectorfill.orchestration.api.use_api` does that)."""
    _ensure_prefect_home()
    if use_served:
        use_running_api()
    if not os.environ.get("PREFECT_API_URL"):
        # Prefect's temporary server: its event log feeds nothing after the run (automations
        # need `vectorfill serve` or a real server) and persisting it was ~45% of the server's
        # CPU in bench/bench_throughput.py; flow runs, task runs, logs and artifacts are kept.
        os.environ.setdefault("PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED", "false")
    for key, value in PREFECT_DEFAULTS.items():
        if key in ("PREFECT_LOGGING_LEVEL", "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL") and verbose:
            value = "INFO"
        os.environ.setdefault(key, value)


class RunErrorsOffConsole(logging.Filter):
    """Keeps the ERROR records of flow and task runs (``prefect.flow_runs``,
    ``prefect.task_runs``: "Encountered exception", "Finished in state Failed", each with
    its traceback) off the console. They still reach the run's logs in the Prefect API, so
    the UI keeps the full traceback; the command prints the error once itself. Warnings and
    everything else pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno >= logging.ERROR and record.name.startswith(("prefect.flow_runs", "prefect.task_runs"))
        )


def quiet_run_errors(verbose: bool = False) -> None:
    """Put :class:`RunErrorsOffConsole` on the root logger's console handlers (Prefect's),
    unless ``verbose``. Call after importing prefect (which configures logging)."""
    if verbose:
        return
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not any(
            isinstance(f, RunErrorsOffConsole) for f in handler.filters
        ):
            handler.addFilter(RunErrorsOffConsole())


def prepare_run(*, verbose: bool = False) -> None:
    """What a run needs before its first claim that does not need the Prefect server to
    answer: vectorfill's Prefect settings (:func:`prefect_defaults`), then the imports of
    Prefect and the backfill flow (most of a small run's start). Call once the API URL is
    set (:func:`vectorfill.orchestration.api.use_api_while` calls it while the local server
    starts)."""
    prefect_defaults(verbose=verbose)
    import vectorfill.flows.backfill  # noqa: F401  (lazy: Prefect reads its settings when imported)


def _writable_dir(path: Path) -> str | None:
    """None when ``path`` is (now) a writable directory, else why not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None if os.access(path, os.W_OK | os.X_OK) else "not writable"


def _ensure_prefect_home() -> None:
    """Give Prefect a directory it can write, or fail at once with one sentence.

    Prefect keeps its profiles and local state in ``PREFECT_HOME`` (``~/.prefect``). Where
    ``HOME`` cannot hold it (containers with ``HOME=/nonexistent``, systemd's DynamicUser),
    Prefect would time out for minutes starting a server on a database it cannot open; so
    without ``PREFECT_HOME`` we fall back to ``prefect/`` in vectorfill's own state directory
    (``VECTORFILL_HOME``), and when neither can be written we say so before starting anything.
    """
    given = os.environ.get("PREFECT_HOME")
    if given:
        why = _writable_dir(Path(given).expanduser())
        if why:
            raise ConfigError(f"PREFECT_HOME={given} cannot be used ({why}): set it to a writable directory")
        return
    default = Path("~/.prefect").expanduser()
    if _writable_dir(default) is None:
        return
    fallback = default_data_dir().parent / "prefect"
    why = _writable_dir(fallback)
    if why:
        raise ConfigError(
            f"Prefect needs a writable directory: {default} cannot be created (HOME={os.environ.get('HOME')}) "
            f"and neither can {fallback} ({why}); set PREFECT_HOME or VECTORFILL_HOME to a writable directory"
        )
    os.environ["PREFECT_HOME"] = str(fallback)


class Progress:
    """The progress bar's numbers, ``(embedded, embedded + pending)`` of the job's active version.

    Exact (:func:`~vectorfill.jobs.registry.job_status`) when made, at every ``tick(exact=True)``
    and whenever ``recount_s`` has passed (or 50 times what the last exact count took, if
    longer: on a million-row table a count costs a few hundred milliseconds of Postgres, not
    something to pay every half second). Between exact counts, the counts of this process's
    own run of the job (:data:`vectorfill.engine.fill.LIVE_TALLIES`, free to read) are added
    to the last exact ones; rows that other workers store show at the next exact count.
    """

    def __init__(self, conn, job: str, *, recount_s: float = 10.0) -> None:
        self.conn, self.job, self.recount_s = conn, job, recount_s
        self._recount()

    def _live(self) -> tuple[int, int]:
        """Rows embedded, and rows deleted or failed, by this process's runs of the job so far."""
        # lazy: Prefect reads its settings when imported; the caller sets them first (prefect_defaults, use_api)
        from vectorfill.engine.fill import LIVE_TALLIES

        embedded = gone = 0
        for tally in list(LIVE_TALLIES.get(self.job, ())):  # only appended to: a sum that only grows
            t = tally.counts  # one read: a consistent record
            embedded += t.embedded
            gone += t.deleted + t.failed
        return embedded, gone

    def _recount(self) -> None:
        t0 = time.monotonic()
        st = job_status(self.conn, self.job)
        took = time.monotonic() - t0
        self.embedded, self.total = st.embedded, st.embedded + st.pending
        self._base = self._live()
        self._next = time.monotonic() + max(self.recount_s, 50 * took)

    def tick(self, *, exact: bool = False) -> tuple[int, int]:
        if exact or time.monotonic() >= self._next:
            self._recount()
            return self.embedded, self.total
        embedded, gone = self._live()
        return self.embedded + embedded - self._base[0], max(self.total - (gone - self._base[1]), 0)


def _poll_progress(url: str, job: str, stop: threading.Event, console, max_rows: int | None = None) -> None:
    """A progress bar of this run: its total is what the run will embed (the rows pending
    when it starts, plus any queued meanwhile; at most ``max_rows``), not the job's size.
    Exact counts at the start, the end and every few seconds; this run's own counts between
    (:class:`Progress`)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    try:
        with connect(url, autocommit=True) as conn:
            counts = Progress(conn, job)
            embedded, total = counts.tick(exact=True)
            base = embedded  # the job's vectors before this run: not this run's to count

            def this_run(embedded: int, total: int) -> tuple[int, int]:
                done, todo = embedded - base, total - base
                if max_rows is not None:
                    todo = min(todo, max_rows)
                return done, max(todo, done, 1)

            with Bar(
                TextColumn(job, style="bold", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            ) as bar:
                done, todo = this_run(embedded, total)
                task = bar.add_task("embedding", total=todo, completed=done, rate="")
                started = time.monotonic()
                while True:
                    finished = stop.wait(0.5)
                    done, todo = this_run(*counts.tick(exact=finished))
                    elapsed = max(time.monotonic() - started, 1e-6)
                    bar.update(task, total=todo, completed=done, rate=f"{done / elapsed:,.0f} rows/s")
                    if finished:
                        break
    except Exception:  # the bar is a convenience; the flow reports its own errors
        return


def keep_sigterm_handler() -> None:
    """Keep this process's own SIGTERM handler (the command line's: a run stops as on
    Ctrl-C and gives its claims back) in force while a flow runs here.

    Prefect's flow engine swaps SIGTERM, for the length of a flow run, for a handler that
    raises ``TerminationSignal`` in whatever frame is running. Out of the event loop's
    ``select`` it ends the process with a traceback; inside one of the run's tasks (a lane
    busy with a request's vectors) it only ends that task, and the run goes on as if no
    signal had come. Prefect installs the handler it names ``_prefect_sigterm_handler`` at
    the start of each flow run: naming ours so keeps ours. Flow runs that Prefect's own
    workers start (``--pool``) are not run here and keep Prefect's handling."""
    import prefect.utilities.engine as engine

    try:
        ours = signal.getsignal(signal.SIGTERM)
    except ValueError:  # not the main thread: signals are the main thread's
        return
    if callable(ours) and ours is not engine._prefect_sigterm_handler:
        engine._prefect_sigterm_handler = ours  # type: ignore[assignment]


def run_backfill(
    url: str,
    job: str,
    *,
    max_rows: int | None = None,
    progress: bool = True,
    console=None,
    workers: int = 1,
    verbose: bool = False,
    **flow_kw,
):
    """Run the backfill flow in this process (``workers`` flow runs of it side by side:
    :func:`vectorfill.orchestration.fanout.run_here`) and return its :class:`RunSummary`.
    ``flow_kw``: the flow's other parameters (``batch``, ``wait``, ``poll_s``), the same
    for every flow run."""
    os.environ[DATABASE_URL_ENV] = url
    # lazy: Prefect reads its settings when imported; the caller sets them first (prefect_defaults, use_api)
    from vectorfill.flows.backfill import backfill

    quiet_run_errors(verbose)
    keep_sigterm_handler()
    stop = threading.Event()
    poller = None
    if progress:
        poller = threading.Thread(target=_poll_progress, args=(url, job, stop, console, max_rows), daemon=True)
        poller.start()
    try:
        if workers > 1:
            # lazy: Prefect reads its settings when imported; the caller sets them first (prefect_defaults, use_api)
            from vectorfill.orchestration.fanout import run_here

            return asyncio.run(run_here(job, workers, max_rows, flow_kw))
        return asyncio.run(backfill(job, max_rows=max_rows, **flow_kw))
    finally:
        stop.set()
        if poller is not None:
            poller.join(timeout=5)
