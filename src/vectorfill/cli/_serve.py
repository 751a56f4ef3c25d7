"""``vectorfill serve``: vectorfill's deployments, served from this machine."""

from __future__ import annotations

import typer

from vectorfill.cli._common import DbOpt, conn, url
from vectorfill.cli._output import note
from vectorfill.errors import ConfigError
from vectorfill.jobs.registry import list_jobs

__all__ = ["serve"]


def serve(
    jobs: list[str] | None = typer.Argument(None, help="Jobs to schedule (default: every job)"),
    cron: str = typer.Option("0 2 * * *", help="Schedule of each job's backfill (cron, UTC); '' for none"),
    port: int | None = typer.Option(
        None, help="Port of the local Prefect server (and its UI) if it must be started (default: 4200 if free)"
    ),
    sync: bool = typer.Option(
        False, "--sync", help="Also embed rows as they are written (a sync run per job and hour)"
    ),
    sync_window: float = typer.Option(3600.0, "--sync-window", help="Seconds each sync run covers", hidden=True),
    documents: list[str] | None = typer.Option(
        None,
        "--documents",
        help="SOURCE=TABLE: also list SOURCE (s3://BUCKET/PREFIX or a directory) into TABLE every 10 minutes",
    ),
    db: str | None = DbOpt,
) -> None:
    """Serve vectorfill's deployments from this machine: a scheduled backfill per job and a
    re-embed triggered by `job set-model`, on the local Prefect server (history in Postgres).
    With --sync, every job is also kept in step continuously (re-embeds included).
    """
    # lazy: Prefect, for the commands that use it
    from vectorfill.orchestration.runtime import prefect_defaults
    from vectorfill.orchestration.serve import serve as run

    pairs = []
    for spec in documents or []:
        source, sep, table = spec.rpartition("=")
        if not sep or not source or not table:
            raise ConfigError(f"--documents {spec!r}: give SOURCE=TABLE, e.g. s3://my-bucket/docs/=documents")
        pairs.append((source, table))
    db_url = url(db)
    with conn(db_url) as c:
        names = jobs or list_jobs(c)
    prefect_defaults(use_served=False)
    run(
        db_url,
        jobs=names,
        cron=cron or None,
        port=port,
        announce=note,
        sync=sync,
        sync_window_s=sync_window,
        documents=pairs,
    )
