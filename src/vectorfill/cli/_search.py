"""``vectorfill search/index/check``: reading the vectors, and checking a job's endpoint
(also before ``job create`` and ``job set-model``: :func:`check_before`)."""

from __future__ import annotations

import asyncio
import json
import os
import time

import typer

from vectorfill.cli._common import DbOpt, conn, url
from vectorfill.cli._output import err, out, print_check, print_hits
from vectorfill.config import JobSettings

__all__ = ["check", "check_before", "index", "search"]


def search(
    job: str,
    query: str,
    k: int = typer.Option(10, "-k", help="How many hits"),
    per_row: bool = typer.Option(False, "--per-row", help="Chunked jobs: the best chunk of each row only"),
    db: str | None = DbOpt,
) -> None:
    """Embed QUERY with JOB's model and show the nearest rows (cosine distance); for a chunked
    job the nearest chunks, with their row ids."""
    from vectorfill.jobs.search import search as run  # lazy: numpy and httpx, for the commands that embed

    with conn(db) as c:
        hits = run(c, job, query, k, per_row=per_row)
    print_hits(query, hits)


def index(
    job: str,
    memory: str | None = typer.Option(
        None, "--memory", help="maintenance_work_mem for the build, e.g. 2GB (default: the server's)"
    ),
    db: str | None = DbOpt,
) -> None:
    """Create an HNSW index (cosine) on JOB's vectors; search uses it."""
    from vectorfill.jobs.search import create_index  # lazy: numpy and httpx, for the commands that embed

    started = time.monotonic()
    notices: list[str] = []
    name = create_index(url(db), job, memory=memory, notices=notices)
    out.print(f"index {name} ready (built in {time.monotonic() - started:,.1f} s)")
    if any("maintenance_work_mem" in n for n in notices):
        out.print(
            "Tip: the graph outgrew maintenance_work_mem during the build (pgvector said so); "
            "a rebuild with --memory set higher (e.g. --memory 2GB) is much faster."
        )


def check(
    job: str,
    forget: bool = typer.Option(False, "--forget", help="Forget what was learnt about the endpoint first"),
    json_out: bool = typer.Option(False, "--json"),
    db: str | None = DbOpt,
) -> None:
    """Send one small request through JOB's real path (key, model, dimensions, encoding, two
    inputs) and say what works and what to change. Exit 0 only when a backfill would work.

    What the endpoint was found to accept (base64 or float, inputs and tokens per request)
    is remembered for every run; --forget starts over (after upgrading the server)."""
    from vectorfill.jobs.check import check_job  # lazy: numpy and httpx, for the commands that embed

    reports = check_job(url(db), job, forget=forget)
    if json_out:
        out.print_json(json.dumps([r.as_dict() for r in reports]))
    else:
        for report in reports:
            print_check(report)
    if not all(r.ok for r in reports):
        raise typer.Exit(1)


def check_before(
    name: str,
    *,
    url: str,
    base_url: str,
    model: str,
    api_key_env: str | None,
    dimensions: int | None,
    settings: JobSettings,
    version: int | None = None,
    adopt_base_url: bool = False,
) -> str:
    """The check that `job create` and `job set-model` run unless --no-check; exits 1 (the
    job or version is then not created) when it fails. A key variable not set in this shell
    (a job made on one machine for workers on another) skips it with a note. Returns the base
    URL that answered (with ``adopt_base_url``, the other form of ``base_url`` when only that
    one did: with or without ``/v1``)."""
    from vectorfill.jobs.check import check_endpoint  # lazy: numpy and httpx, for the commands that embed

    if api_key_env and not os.environ.get(api_key_env):
        err.print(
            f"not checked: ${api_key_env} is not set in this shell; run `vectorfill check {name}` "
            "where it is, before a long backfill"
        )
        return base_url
    report = asyncio.run(
        check_endpoint(
            job=name,
            version=version,
            db_url=url,
            base_url=base_url,
            model=model,
            api_key_env=api_key_env,
            dimensions=dimensions,
            settings=settings,
            adopt_base_url=adopt_base_url,
        )
    )
    if not report.ok:
        print_check(report)
        err.print("nothing was created; fix the setting, or pass --no-check to create it anyway (offline setups)")
        raise typer.Exit(1)
    details = {line.what: line.detail for line in report.lines}
    out.print(f"endpoint check passed: {details.get('dimensions')}, {details.get('encoding')}", highlight=False)
    for line in report.lines:
        if line.note:
            out.print(f"endpoint check: {line.detail}", highlight=False)
    return report.base_url
