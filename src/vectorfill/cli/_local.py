"""``vectorfill demo/serve-embeddings/db .../stop``: the pieces vectorfill can run on this
machine for users without their own (the embedded Postgres, a local model, the local
Prefect server)."""

from __future__ import annotations

import typer

from vectorfill.cli._common import DbOpt
from vectorfill.cli._output import err, out
from vectorfill.local import pgembedded

__all__ = ["db_start", "db_status", "db_stop", "db_url", "demo", "serve_embeddings", "stop"]


def serve_embeddings(
    model: str = typer.Option("all-MiniLM-L6-v2", help="all-MiniLM-L6-v2 (needs [local]) or fake-embed"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    api_key_env: str | None = typer.Option(None, help="Require this env variable's value as Bearer key"),
) -> None:
    """Serve an OpenAI-compatible /v1/embeddings endpoint from a local model."""
    from vectorfill.local.embeddings_server import run_server  # lazy: starlette and uvicorn (torch for MiniLM)

    run_server(model=model, host=host, port=port, api_key_env=api_key_env)


def demo(
    rows: int = typer.Option(2000, help="How many standard-library docstrings to embed (0: all)"),
    model: str = typer.Option("all-MiniLM-L6-v2", help="all-MiniLM-L6-v2 (needs [local]) or fake-embed"),
    db: str | None = DbOpt,
) -> None:
    """The whole product, offline: embedded Postgres, a local model, a backfill, searches."""
    from vectorfill.orchestration.demo import run_demo  # lazy: httpx, the model server and Prefect, for the demo

    run_demo(db_url=db, rows=rows or None, model=model, out=out, err=err)


def db_start() -> None:
    """Start (or reuse) the embedded Postgres; it keeps running between commands."""
    url = pgembedded.start()
    out.print(f"embedded Postgres running: {url}")


def db_stop() -> None:
    """Stop the embedded Postgres (and the local Prefect server first, if its history is there)."""
    from vectorfill.orchestration import local_server  # lazy: Prefect, for the commands that use it

    server = local_server.recorded()
    if server is not None and server.embedded_pgdata == str(pgembedded.status().data_dir) and local_server.stop():
        out.print(f"local Prefect server stopped (its database {server.database} is in the embedded Postgres)")
    out.print("stopped" if pgembedded.stop() else "was not running")


def db_status() -> None:
    """Is the embedded Postgres running, and where is its data."""
    st = pgembedded.status()
    out.print(f"{'running' if st.running else 'stopped'}; data in {st.data_dir}" + (f"; {st.url}" if st.url else ""))


def db_url() -> None:
    """Print the embedded Postgres URL (for --db or VECTORFILL_DATABASE_URL)."""
    url = pgembedded.url()
    if not url:
        err.print("the embedded Postgres is not running: `vectorfill db start`")
        raise typer.Exit(1)
    print(url)


def stop() -> None:
    """Stop what vectorfill runs in the background on this machine: the local Prefect server
    and the embedded Postgres (both start again when a command needs them)."""
    from vectorfill.orchestration import local_server  # lazy: Prefect, for the commands that use it

    server = local_server.stop()
    out.print(
        f"local Prefect server (pid {server.pid}, {server.ui_url}) stopped"
        if server
        else "local Prefect server was not running"
    )
    out.print("embedded Postgres stopped" if pgembedded.stop() else "embedded Postgres was not running")
