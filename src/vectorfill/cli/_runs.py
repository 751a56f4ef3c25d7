"""``vectorfill estimate/backfill/retry``: running a job (here, with ``--workers``, or on a
Prefect work pool); what each flow run gets is one dict, :func:`flow_kw`."""

from __future__ import annotations

import json
import time

import typer
from rich.table import Table

from vectorfill.cli._common import DbOpt, conn, url
from vectorfill.cli._output import err, failed_line, note, out, print_summary
from vectorfill.errors import ConfigError, RowsFailed
from vectorfill.jobs.registry import WorkLeft, job_status, retry_failures, work_left

__all__ = ["SUMMARY_KEYS", "backfill", "estimate", "flow_kw", "nothing_to_do_summary", "retry"]


def estimate(
    job: str,
    model: str | None = typer.Option(None, help="Estimate re-embedding every row with this model"),
    price: float | None = typer.Option(None, help="USD per million tokens (default: the price table)"),
    batch_price: float | None = typer.Option(
        None, help="USD per million tokens through the Batch API (default: half the online price for OpenAI's)"
    ),
    json_out: bool = typer.Option(False, "--json"),
    db: str | None = DbOpt,
) -> None:
    """Count the tokens the next backfill (or a re-embed with --model) would send, and their cost
    online and through the Batch API.

    Nothing is claimed or sent: rows are read and counted with the run's own tokenizer.
    """
    from vectorfill.jobs.estimate import estimate as run  # lazy: the tokenizers and numpy, for estimates

    with conn(db) as c:
        rows = run(c, job, model=model, price=price, batch_price=batch_price)
    if json_out:
        out.print_json(json.dumps([r.as_dict() for r in rows]))
        return
    table = Table(
        "version",
        "model",
        "rows to send",
        "tokens",
        "USD / 1M",
        "cost USD",
        "batch USD / 1M",
        "batch cost USD",
        "skipped",
    )
    for r in rows:
        skipped = f"{r.unchanged:,} unchanged, {r.empty:,} empty" + (f", {r.too_long:,} too long" if r.too_long else "")
        skipped += f", {r.failing:,} too many chunks" if r.failing else ""
        skipped += f", {r.reused:,} inputs reused (copied, not sent)" if r.reused else ""
        skipped += f", of which {r.derived:,} derived from the active version" if r.derived else ""
        table.add_row(
            str(r.version) if r.version is not None else "(new)",
            r.model,
            f"{r.rows:,}" + (f" ({r.chunks:,} chunks)" if r.chunks != r.rows else ""),
            f"{r.tokens:,}" + ("" if r.exact else " (est.)"),
            "?" if r.price_per_million is None else f"{r.price_per_million:g}",
            "unknown" if r.cost_usd is None else f"{r.cost_usd:,.4f}",
            "?" if r.batch_price_per_million is None else f"{r.batch_price_per_million:g}",
            "unknown" if r.batch_cost_usd is None else f"{r.batch_cost_usd:,.4f}",
            skipped,
        )
    out.print(table)
    for r in rows:
        if r.days_under_cap is not None:
            out.print(
                f"version {r.version if r.version is not None else '(new)'}: {r.days_under_cap:,} day(s) under the daily spend cap."
            )
    if any(r.cost_usd is None for r in rows):
        out.print("No price known for a model here: pass --price USD_PER_1M_TOKENS.")
    if any(not r.exact for r in rows):
        out.print("(est.): this model's tokenizer is not known here; tokens are over-counted at 1 per 3 bytes.")


def backfill(
    job: str,
    max_rows: int | None = typer.Option(None, help="Stop after this many rows"),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's run logs, and an error's traceback"),
    workers: int = typer.Option(1, "--workers", help="Flow runs side by side, all claiming from the job's queue"),
    pool: str | None = typer.Option(
        None, "--pool", help="Run the --workers flow runs on this Prefect work pool (its workers), not here"
    ),
    batch: bool | None = typer.Option(
        None,
        "--batch/--online",
        help="Submit the rows to the provider's Batch API (half price, within 24 h), or embed them now "
        "(default: the job's setting, online unless set with `job create --batch`)",
    ),
    wait: bool | None = typer.Option(
        None,
        "--wait/--no-wait",
        help="With --pool: wait for the flow runs to end (the default); with --batch: wait for the batches "
        "and store their vectors (by default it returns once they are submitted)",
    ),
    poll: float = typer.Option(30.0, help="With --batch --wait: seconds between polls of the batches"),
    db: str | None = DbOpt,
) -> None:
    """Embed every pending row of JOB through the Prefect backfill flow (batches submitted
    earlier are collected first). With nothing pending, leased or at the Batch API, it says
    so at once, without starting a flow run."""
    started = time.monotonic()
    db_url = url(db)
    if pool is None:
        with conn(db_url) as c:
            left = work_left(c, job)
        if left is not None and left.nothing:
            _nothing_to_do(left, json_out, time.monotonic() - started)
            return
    # lazy: Prefect, for the commands that use it
    from vectorfill.orchestration.api import use_api_while
    from vectorfill.orchestration.runtime import prepare_run, run_backfill

    # a local server to start: imports and the like go on while it starts
    use_api_while(db_url, lambda: prepare_run(verbose=verbose), announce=note)
    params = flow_kw(batch=batch, wait=wait, poll=poll)
    if pool is not None:
        pool_wait = True if wait is None else wait
        _backfill_on_pool(
            job, workers, pool, max_rows=max_rows, flow_params=params, wait=pool_wait, json_out=json_out, db=db
        )
        return
    try:
        summary = run_backfill(
            db_url,
            job,
            max_rows=max_rows,
            progress=not json_out and not batch,
            console=err,
            workers=workers,
            verbose=verbose,
            **params,
        )
        failed = None
    except RowsFailed as exc:  # the run went through, but rows failed: summary, then exit 3
        summary, failed = exc.summary, exc
    if json_out:
        out.print_json(json.dumps(summary.as_dict()))
    else:
        print_summary(summary)
    if failed is not None:
        raise failed
    if json_out:
        return
    from vectorfill.jobs.search import index_suggested  # lazy: numpy and httpx, for the commands that embed

    with conn(db_url) as c:
        if index_suggested(c, job):
            out.print(
                f"Tip: {job} has enough vectors for an HNSW index: `vectorfill index {job}` "
                "makes searches fast (it is built without blocking writes)."
            )


#: The keys of a run's summary (``RunSummary.as_dict``), for the summary of a backfill that
#: had nothing to do, printed without importing the engine (a unit test keeps them in step).
SUMMARY_KEYS = (
    "job",
    "embedded",
    "unchanged",
    "deleted",
    "failed",
    "truncated",
    "stale",
    "requests",
    "tokens",
    "tokens_estimated",
    "cost_usd",
    "duration_s",
    "pending",
    "failed_total",
    "switched_to",
    "derived_from",
    "batches_submitted",
    "batch_rows_submitted",
    "batches_collected",
    "batches_open",
    "batch_rows",
    "batch_tokens",
    "batch_cost_usd",
    "batch_retried",
    "sent",
    "reused",
    "derived",
    "maybe_truncated",
    "rows_per_s",
)


def nothing_to_do_summary(left: WorkLeft, duration_s: float) -> dict[str, object]:
    """The ``--json`` summary of a backfill that found nothing to do: every figure 0, the
    failed rows those of earlier runs, and ``nothing_to_do`` true."""
    summary: dict[str, object] = dict.fromkeys(SUMMARY_KEYS, 0)
    summary.update(
        job=left.job,
        cost_usd=0.0,
        batch_cost_usd=0.0,
        switched_to=None,
        derived_from=None,
        duration_s=round(duration_s, 3),
        failed_total=left.failed,
        rows_per_s=0.0,
        nothing_to_do=True,
    )
    return summary


def _nothing_to_do(left: WorkLeft, json_out: bool, duration_s: float) -> None:
    """A backfill with nothing to do: said from one query, no flow run (so none in the run
    history; ``vectorfill serve``'s scheduled runs do record one each)."""
    if json_out:
        out.print_json(json.dumps(nothing_to_do_summary(left, duration_s)))
        return
    out.print(f"{left.job}: nothing to embed (no row pending or leased, no batch at the provider); no run was started")
    if left.failed:
        out.print(failed_line(left.job, 0, left.failed))


def flow_kw(*, batch: bool | None, wait: bool | None, poll: float) -> dict[str, object]:
    """The backfill flow's parameters besides the job and ``max_rows``, from ``--batch/--online``,
    ``--wait/--no-wait`` and ``--poll``: the same for a run here, for each of ``--workers``
    and for each flow run on a ``--pool`` (whose own wait, for the flow runs to end, is
    ``--wait`` too, by default on)."""
    return {"batch": batch, "wait": bool(wait), "poll_s": poll}


def _backfill_on_pool(
    job: str,
    workers: int,
    pool: str,
    *,
    max_rows: int | None,
    flow_params: dict[str, object],
    wait: bool,
    json_out: bool,
    db: str | None,
) -> None:
    from vectorfill.orchestration.fanout import run_on_pool  # lazy: Prefect, for the commands that use it

    with conn(db) as c:
        job_status(c, job)  # a clear error for a job that does not exist, before any flow run
    if not json_out:
        err.print(f"{workers} flow run(s) of {job} on work pool {pool}" + (", waiting for them" if wait else ""))
    runs = run_on_pool(job, workers, pool, max_rows=max_rows, flow_kw=flow_params, wait=wait)
    with conn(db) as c:
        st = job_status(c, job)
    if json_out:
        out.print_json(json.dumps({"flow_runs": [r.__dict__ for r in runs], "status": st.as_dict()}))
        return
    table = Table("flow run", "id", "state")
    for r in runs:
        table.add_row(r.name, r.flow_run_id, r.state)
    out.print(table)
    out.print(f"{job}: {st.embedded:,} embedded, {st.pending:,} pending, {st.failed:,} failed of {st.total:,} rows")


def retry(
    job: str,
    ids: list[str] | None = typer.Argument(None, help="Keys of the rows to retry ([1,2] for a composite key)"),
    all_rows: bool = typer.Option(False, "--all", help="Retry every failed row"),
    db: str | None = DbOpt,
) -> None:
    """Queue failed rows of JOB again (attempts reset): --all, or the rows named by key."""
    if bool(ids) == all_rows:
        raise ConfigError("name the rows to retry by key, or pass --all (not both)", job=job)
    with conn(db) as c:
        n = retry_failures(c, job, None if all_rows else ids)
    out.print(f"{n} failed rows of {job} queued again; run `vectorfill backfill {job}`")
