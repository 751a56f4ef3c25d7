"""``vectorfill job set-model/versions/switch/pause/resume/abandon/prune``: model changes
(blue/green versions). The sequencing is :mod:`vectorfill.jobs.model_change`'s and
:mod:`vectorfill.jobs.versions`'; here, options and what is printed."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from vectorfill.cli._common import DbOpt, chunk_options, conn, url
from vectorfill.cli._output import out
from vectorfill.cli._search import check_before
from vectorfill.config import JobSettings
from vectorfill.jobs import versions
from vectorfill.jobs.model_change import change_model
from vectorfill.records import Version

__all__ = ["job_abandon", "job_pause", "job_prune", "job_resume", "job_set_model", "job_switch", "job_versions"]


def job_set_model(
    name: str,
    model: str = typer.Option(..., help="The new embedding model"),
    dimensions: int | None = typer.Option(None, help="Pass `dimensions` to models that support it"),
    base_url: str | None = typer.Option(None, help="Endpoint base URL (default: the active version's)"),
    api_key_env: str | None = typer.Option(
        None, help="NAME of the env variable holding the key (default: the active version's; '' for none)"
    ),
    no_check: bool = typer.Option(False, "--no-check", help="Do not send the check request (offline setups)"),
    storage: str | None = typer.Option(
        None, help="auto (halfvec above 2,000 dims, so HNSW can index them), vector (float32) or halfvec (float16)"
    ),
    chunker: str | None = typer.Option(None, help="none (whole text, the default), tokens or recursive"),
    chunk_size: int | None = typer.Option(None, help="Most tokens per chunk, template included (default 400)"),
    chunk_overlap: int | None = typer.Option(None, help="Tokens a chunk repeats from the one before (default 0)"),
    chunk_template: str | None = typer.Option(None, help='Each chunk\'s input, e.g. "{title}: {chunk}"'),
    max_chunks: int | None = typer.Option(None, help="A row with more chunks fails (default 10,000)"),
    batch: bool = typer.Option(
        False, "--batch", help="Make the Batch API the job's default mode, so the re-embed runs at half price"
    ),
    db: str | None = DbOpt,
) -> None:
    """Start re-embedding JOB with another model (or the same model with other storage or
    chunking options), beside the vectors readers use now.

    Searches keep using the active version until the new one is complete; the backfill
    that completes it switches the job's view over in one transaction. Chunk options not
    given keep the active version's.
    """
    db_url = url(db)

    def check(version: Version, settings: JobSettings) -> None:
        check_before(
            name,
            base_url=version.base_url,
            model=version.model,
            api_key_env=version.api_key_env,
            dimensions=version.dimensions,
            settings=settings,
            url=db_url,
            version=version.version,
        )

    with conn(db_url) as c:
        change = change_model(
            c,
            name,
            model=model,
            dimensions=dimensions,
            base_url=base_url,
            api_key_env=api_key_env,
            storage=storage,
            chunk_options=chunk_options(chunker, chunk_size, chunk_overlap, chunk_template, max_chunks),
            batch=batch,
            check=None if no_check else check,
        )
    out.print(
        f"job {name}: version {change.version.version} ({model}) is filling, {change.queued:,} rows queued; "
        f"vectorfill.{name} keeps showing the current version until it is complete."
    )
    from vectorfill.orchestration.events import emit_model_changed  # lazy: Prefect, for the commands that use it

    sent = emit_model_changed(name, change.version)
    if sent:
        out.print(
            f"Event vectorfill.model.changed sent to {sent}: a served re-embed deployment (or `serve --sync`) starts it."
        )
    else:
        out.print(f"Next: `vectorfill estimate {name}` for its cost, then `vectorfill backfill {name}`.")


def job_versions(name: str, json_out: bool = typer.Option(False, "--json"), db: str | None = DbOpt) -> None:
    """Show JOB's versions: model, dimensions, rows done / total, state."""
    with conn(db) as c:
        rows = versions.list_versions(c, name)
    if json_out:
        out.print_json(json.dumps([r.as_dict() for r in rows]))
        return
    table = Table("version", "model", "dims", "done / total", "pending", "failed", "state", "since")
    for r in rows:
        since = r.activated_at or r.created_at
        table.add_row(
            str(r.version),
            r.model,
            str(r.dimensions or "?"),
            f"{r.embedded:,} / {r.total:,}",
            f"{r.pending:,}",
            f"{r.failed:,}",
            r.state,
            since.isoformat(timespec="seconds") if since else "",
        )
    out.print(table)


def job_switch(
    name: str,
    force: bool = typer.Option(False, "--force", help="Switch even with rows still missing"),
    db: str | None = DbOpt,
) -> None:
    """Make JOB's new version the one readers see now (normally a backfill does it when complete)."""
    with conn(db) as c:
        version = versions.switch(c, name, force=force)
    out.print(f"job {name}: vectorfill.{name} now shows version {version.version} ({version.model})")


def job_pause(name: str, db: str | None = DbOpt) -> None:
    """Pause JOB's re-embed: backfills skip the new version (its queue stays in step)."""
    with conn(db) as c:
        version = versions.pause(c, name)
    out.print(f"job {name}: version {version.version} ({version.model}) paused; `vectorfill job resume {name}`")


def job_resume(name: str, db: str | None = DbOpt) -> None:
    """Resume JOB's paused re-embed."""
    with conn(db) as c:
        version = versions.resume(c, name)
    out.print(f"job {name}: version {version.version} ({version.model}) filling again")


def job_abandon(name: str, db: str | None = DbOpt) -> None:
    """Drop JOB's new (filling or paused) version and its vectors; the active one stays."""
    with conn(db) as c:
        version = versions.abandon(c, name)
    out.print(f"job {name}: version {version.version} ({version.model}) abandoned and dropped")


def job_prune(name: str, db: str | None = DbOpt) -> None:
    """Drop JOB's retired versions (the vectors of models it no longer uses)."""
    with conn(db) as c:
        dropped = versions.prune(c, name)
    out.print(
        f"job {name}: dropped version {', '.join(map(str, dropped))}"
        if dropped
        else f"job {name} has no retired version"
    )
