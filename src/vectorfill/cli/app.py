"""The ``vectorfill`` command: its typer apps, the commands in the order ``--help`` lists them,
and :func:`main`, which maps errors and signals to exit codes.

The commands live by group, each module thin (parse options, call the library, print
results): ``_jobs`` (the schema and jobs), ``_versions`` (model changes), ``_runs``
(estimates and backfills), ``_reports`` (status, failures, runs, batches), ``_search``
(search, index, check), ``_serve`` and ``_local`` (what runs on this machine); ``_output``
prints, ``_common`` holds the ``--db`` option. An import inside a command is deliberately
lazy (its ``# lazy:`` comment says what it brings): Prefect, numpy and httpx, the
tokenizers, the model server; only the commands that use them pay for them at start-up.

Every :class:`vectorfill.errors.VectorfillError` is printed once, as one block (the error
naming the job, then the setting at fault and the fix when known: exit 1), without
traceback unless ``--verbose``; nothing here prints a secret. Exit codes: 0 all done, 1 could not proceed, 3 a backfill
finished with failed rows, 130/143 interrupted.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import signal
import sys
import threading

import typer

from vectorfill.cli import _documents, _jobs, _local, _reports, _runs, _search, _serve, _versions
from vectorfill.cli._output import err, print_error
from vectorfill.errors import RowsFailed, SpendCapReached, VectorfillError

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_ROWS_FAILED",
    "EXIT_USAGE",
    "app",
    "db_app",
    "documents_app",
    "job_app",
    "main",
]

app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,  # help texts as written: rich markup would eat "[local]" and the like
    help="Keep pgvector embeddings in step with the text in Postgres (Prefect + any OpenAI-compatible endpoint).",
)
job_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Create, list and drop jobs; change their model (blue/green versions).",
)
db_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None, help="The embedded Postgres, for users without their own."
)
documents_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Document tables: keep one in step with an S3 prefix or a directory.",
)
app.add_typer(job_app, name="job")
app.add_typer(db_app, name="db")
app.add_typer(documents_app, name="documents")

# the order of `vectorfill --help`
app.command()(_jobs.migrate)
job_app.command("create")(_jobs.job_create)
job_app.command("list")(_jobs.job_list)
job_app.command("set")(_jobs.job_set)
job_app.command("drop")(_jobs.job_drop)
job_app.command("set-model")(_versions.job_set_model)
job_app.command("versions")(_versions.job_versions)
job_app.command("switch")(_versions.job_switch)
job_app.command("pause")(_versions.job_pause)
job_app.command("resume")(_versions.job_resume)
job_app.command("abandon")(_versions.job_abandon)
job_app.command("prune")(_versions.job_prune)
app.command()(_runs.estimate)
app.command()(_runs.backfill)
app.command()(_reports.status)
app.command()(_reports.failures)
app.command()(_runs.retry)
app.command()(_search.search)
app.command()(_search.index)
app.command()(_search.check)
app.command()(_serve.serve)
app.command()(_reports.runs)
app.command("serve-embeddings")(_local.serve_embeddings)
app.command()(_local.demo)
app.command()(_reports.batches)
documents_app.command("sync")(_documents.documents_sync)
db_app.command("start")(_local.db_start)
db_app.command("stop")(_local.db_stop)
db_app.command("status")(_local.db_status)
db_app.command("url")(_local.db_url)
app.command()(_local.stop)


def _stop_on_sigterm() -> threading.Event:
    """Make SIGTERM stop the process as Ctrl-C does; the event says whether it came.

    SIGTERM is how Prefect's runners and workers, systemd, Docker and Kubernetes stop a
    process; by default it kills Python on the spot, so a run could not give its claims
    back (they waited for their lease to expire) and Prefect's temporary server was left
    running. Here it goes to the Ctrl-C handler that ``asyncio.run`` installs, which
    cancels the run so that it gives its claims back; outside a run, it raises
    KeyboardInterrupt. When SIGINT is ignored (a process started in the background),
    there is no such handler: the running loop's tasks are cancelled instead.
    """
    terminated = threading.Event()

    def on_sigterm(signum, frame) -> None:
        terminated.set()
        on_sigint = signal.getsignal(signal.SIGINT)
        if callable(on_sigint):  # asyncio.run's Ctrl-C handler, or Python's default one
            on_sigint(signal.SIGINT, frame)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise KeyboardInterrupt from None
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.call_soon_threadsafe(lambda: None)  # wake the loop up to see it

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)
    return terminated


def _interrupted(terminated: threading.Event, released: str) -> None:
    if terminated.is_set():
        err.print(f"terminated (SIGTERM); claimed rows {released} or expire with their lease")
        sys.exit(128 + signal.SIGTERM)
    err.print(f"interrupted; claimed rows {released} or expire with their lease")
    sys.exit(130)


#: Exit codes (the README's table): 0 done; 1 the command could not proceed (a setting, the
#: database, the provider: the message says which and what to do); 2 a usage mistake;
#: 3 a run went through but rows failed; 130/143 stopped by Ctrl-C/SIGTERM.
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_ROWS_FAILED, EXIT_SPEND_CAP = 0, 1, 2, 3, 4


def _usage_error_types() -> tuple[type[BaseException], ...]:
    """Click's usage exceptions, as typer ships them (its own copy of click in typer >= 0.16
    or so, click itself before)."""
    types: list[type[BaseException]] = []
    try:
        from typer._click.exceptions import ClickException as vendored

        types.append(vendored)
    except ImportError:
        pass
    import click

    types.append(click.ClickException)
    return tuple(types)


def main(argv: list[str] | None = None) -> None:
    """The ``vectorfill`` command: run it, then exit at once (see :func:`_exit_now`)."""
    try:
        _main(argv)
    except SystemExit as exc:
        _exit_now(exc.code)
    _exit_now(0)


def _exit_now(code: object) -> None:
    """Run the exit handlers (Prefect's drain its log and event queues to the server there),
    flush the output and end the process without tearing the interpreter down.

    After a run the heap holds Prefect, pydantic, SQLAlchemy and their modules; freeing it
    object by object at exit took 0.5-1 s of wall time per command on these machines, for
    nothing. Threads still running are daemons by then (Prefect's workers, drained above).
    """
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)


def _prefect_termination(exc: BaseException) -> bool:
    """Whether ``exc`` is Prefect's ``TerminationSignal`` for a SIGTERM (checked without
    importing Prefect, which a command may not have loaded)."""
    exceptions = sys.modules.get("prefect.exceptions")
    kind = getattr(exceptions, "TerminationSignal", None)
    return kind is not None and isinstance(exc, kind) and getattr(exc, "signal", None) == signal.SIGTERM


def _verbose(argv: list[str] | None) -> bool:
    """Whether the command line asks for everything (``--verbose``/``-v``, wherever it is)."""
    args = sys.argv[1:] if argv is None else argv
    if "--" in args:
        args = args[: args.index("--")]
    return any(a in ("--verbose", "-v") for a in args)


def _main(argv: list[str] | None) -> None:
    terminated = _stop_on_sigterm()
    try:
        code = app(args=argv, prog_name="vectorfill", standalone_mode=False)  # the exit code of Exit/Ctrl-C
    except RowsFailed as exc:
        print_error(exc, label="warning", style="yellow")
        sys.exit(EXIT_ROWS_FAILED)
    except SpendCapReached as exc:  # a planned stop, not a fault: rows stay queued
        print_error(exc, label="stopped", style="yellow", verbose=_verbose(argv))
        sys.exit(EXIT_SPEND_CAP)
    except VectorfillError as exc:  # one block (error, setting, fix); the traceback only with --verbose
        print_error(exc, verbose=_verbose(argv))
        sys.exit(EXIT_ERROR)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        if terminated.is_set():
            _interrupted(terminated, "were given back")
        err.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        _interrupted(terminated, "are released")
    except asyncio.CancelledError:
        if not terminated.is_set():
            raise
        _interrupted(terminated, "were given back")
    except Exception as exc:  # usage mistakes: the usage line, one sentence, exit 2, no traceback
        if isinstance(exc, _usage_error_types()):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(getattr(exc, "exit_code", EXIT_USAGE))
        raise
    except BaseException as exc:
        if not _prefect_termination(exc):
            raise
        # SIGTERM landed while a flow run held Prefect's own handler, which raises this
        # through the run (whose claims are given back on the way) and passes the signal
        # on to ours: the same stop as any SIGTERM
        terminated.set()
        _interrupted(terminated, "were given back")
    if code == 130 or terminated.is_set():
        _interrupted(terminated, "were given back")
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
