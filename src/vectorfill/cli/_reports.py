"""``vectorfill status/failures/runs/batches``: what a job's runs did and where it stands."""

from __future__ import annotations

import json
import os

import typer
from rich.table import Table

from vectorfill.cli._common import DbOpt, conn, url
from vectorfill.cli._output import err, note, out
from vectorfill.jobs.batches import cancel_batches, list_batches
from vectorfill.jobs.registry import job_status, list_failures, load_job, maybe_truncated
from vectorfill.jobs.versions import version_status

__all__ = ["batches", "failures", "runs", "status"]


def status(job: str, json_out: bool = typer.Option(False, "--json"), db: str | None = DbOpt) -> None:
    """Exact counts for JOB: total / embedded / pending / failed."""
    with conn(db) as c:
        st = job_status(c, job)
        loaded = load_job(c, job)  # a re-embed in progress gets counted too; no other version
        building = [version_status(c, loaded, loaded.next)] if loaded.next else []
    if json_out:
        out.print_json(json.dumps({**st.as_dict(), "next": building[0].as_dict() if building else None}))
        return
    out.print(
        f"{st.job} (v{st.version}, {st.model}, {st.dimensions or '?'} dims) on {st.source}: "
        f"total {st.total:,}  embedded {st.embedded:,}  pending {st.pending:,}  failed {st.failed:,}  "
        f"-> {st.target}"
    )
    if st.maybe_truncated:
        out.print(_maybe_truncated_note(job, st.maybe_truncated))
    for v in building:
        out.print(
            f"  re-embed: v{v.version} ({v.model}) {v.state}, {v.embedded:,} of {v.total:,} done, "
            f"{v.pending:,} pending, {v.failed:,} failed; readers switch to it when complete"
        )


def failures(job: str, limit: int = typer.Option(50), db: str | None = DbOpt) -> None:
    """List JOB's failed rows with the reason."""
    with conn(db) as c:
        rows = list_failures(c, job, limit)
        cut = maybe_truncated(c, job)
    table = Table("row", "reason", "status", "attempts", "failed at", "message")
    for r in rows:
        table.add_row(
            json.dumps(r["row_key"]),
            r["reason"],
            str(r["status"] or ""),
            str(r["attempts"]),
            r["failed_at"].isoformat(timespec="seconds"),
            r["message"],
        )
    out.print(table if rows else f"no failed rows in {job}")
    if cut:
        out.print(_maybe_truncated_note(job, cut))


def _maybe_truncated_note(job: str, n: int) -> str:
    return (
        f"{n:,} stored rows (or chunks) of {job} may have been truncated by the server, where vectorfill "
        "cannot know: they are longer than the smallest common model limit (256 tokens) and the model's "
        "limit is not known here, so a server that cuts silently embedded only their start. Chunk them into "
        f"inputs it takes whole (`vectorfill job set-model {job} --model <the same model> --chunker recursive "
        "--chunk-size 200`: a new version), or give a new job `--max-input-tokens N`"
    )


def runs(
    job: str | None = typer.Argument(None, help="Only this job's runs"),
    limit: int = typer.Option(20, help="How many runs"),
    json_out: bool = typer.Option(False, "--json"),
    db: str | None = DbOpt,
) -> None:
    """Recent backfill runs from Prefect: start, duration, state, rows, tokens, cost, failures."""
    # lazy: Prefect, for the commands that use it
    from vectorfill.orchestration.api import use_api
    from vectorfill.orchestration.history import recent_runs
    from vectorfill.orchestration.runtime import prefect_defaults

    if not os.environ.get("PREFECT_API_URL"):
        from vectorfill.orchestration.local_server import running  # lazy: Prefect, for the commands that use it

        use_api(None if running() else url(db), announce=note)
    prefect_defaults()
    records = recent_runs(job, limit)
    if json_out:
        out.print_json(json.dumps([r.as_dict() for r in records]))
        return
    table = Table(
        "start", "job", "deployment", "state", "duration s", "rows", "tokens", "cost USD", "failed", "via batches"
    )
    for r in records:
        table.add_row(
            r.start.isoformat(timespec="seconds") if r.start else "",
            r.job or "",
            r.deployment or "",
            r.state,
            "" if r.duration_s is None else f"{r.duration_s:,.1f}",
            "" if r.rows is None else f"{r.rows:,}",
            "" if r.tokens is None else f"{r.tokens:,}" + (" (est.)" if r.tokens_estimated else ""),
            "" if r.cost_usd is None else f"{r.cost_usd:,.4f}" + (" (est.)" if r.tokens_estimated else ""),
            "" if r.failed is None else str(r.failed),
            _via_batches(r),
        )
    out.print(table if records else "no backfill runs recorded yet")
    if any(r.tokens_estimated for r in records):
        out.print(
            "(est.): tokens counted here, not by the server (its answers had no usage, or one that was not tokens)"
        )
    if any(r.maybe_truncated for r in records):
        out.print(
            "some runs sent rows longer than their model may take, its limit unknown here: the server may have "
            "truncated them (`vectorfill backfill` said how many)"
        )


def _via_batches(r) -> str:
    """What a run did through the Batch API: rows stored from batches, batches submitted."""
    parts = []
    if r.batch_rows:
        parts.append(f"{r.batch_rows:,} rows")
    if r.batches_submitted:
        parts.append(f"{r.batches_submitted} submitted")
    return ", ".join(parts)


def batches(
    job: str,
    limit: int = typer.Option(50, help="How many submissions"),
    json_out: bool = typer.Option(False, "--json"),
    cancel: bool = typer.Option(
        False, "--cancel", help="Cancel the running batches (the next backfill stores what they finished)"
    ),
    db: str | None = DbOpt,
) -> None:
    """JOB's Batch API submissions, newest first: state, rows, tokens, submitted, finished."""
    with conn(db) as c:
        if cancel:
            ids = cancel_batches(c, job)
            err.print(f"cancelling {len(ids)} batch(es) of {job}; the next `vectorfill backfill {job}` collects them")
        rows = list_batches(c, job, limit)
    if json_out:
        out.print_json(json.dumps([r.as_dict() for r in rows]))
        return
    table = Table(
        "submission",
        "v",
        "state",
        "provider",
        "rows",
        "tokens",
        "written",
        "failed",
        "retried",
        "submitted",
        "finished",
    )
    for r in rows:
        table.add_row(
            r.id[:8],
            str(r.version),
            r.state,
            f"{r.provider_batch_id or ''} {r.provider_status or ''}".strip(),
            f"{r.rows:,}",
            f"{r.billed_tokens if r.billed_tokens is not None else r.tokens:,}",
            "" if r.written is None else f"{r.written:,}",
            "" if r.failed is None else f"{r.failed:,}",
            "" if r.retried is None else f"{r.retried:,}",
            r.submitted_at.isoformat(timespec="seconds") if r.submitted_at else "",
            r.finished_at.isoformat(timespec="seconds") if r.finished_at else "",
        )
    out.print(table if rows else f"no batches submitted for {job}")
