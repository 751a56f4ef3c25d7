"""Stage 5: the run summary, as a typed result and a Prefect table artifact.

The artifact (key ``backfill-<job>``, one per run) is what the Prefect UI shows for the run
and what ``vectorfill runs`` reads back: one row per figure, ``{"figure", "value"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass

from prefect import task
from prefect.artifacts import acreate_progress_artifact, acreate_table_artifact, aupdate_progress_artifact
from prefect.client.schemas.objects import State
from prefect.states import Completed, Failed

from vectorfill.errors import RowsFailed
from vectorfill.jobs.registry import absorb, load_job
from vectorfill.storage import sql
from vectorfill.storage.db import connect, one_row

from .common import TASK_OPTIONS, database_url, run_logger

__all__ = [
    "PROGRESS_EVERY_S",
    "RunSummary",
    "artifact_key",
    "final_state",
    "progress_artifact",
    "report_run",
    "run_name",
]

#: Seconds between updates of the progress artifact (each is an API round trip).
PROGRESS_EVERY_S = 2.0


@dataclass(frozen=True)
class RunSummary:
    job: str
    embedded: int
    """Vectors written."""
    unchanged: int
    """Queued rows whose text was unchanged: nothing sent."""
    deleted: int
    failed: int
    truncated: int
    """Inputs cut to the model's limit (job setting on_too_long=truncate)."""
    stale: int
    """Rows edited while in flight: their old vector was discarded, they stay queued."""
    requests: int
    tokens: int
    """Tokens billed, as the provider reported them (``usage``), else as counted."""
    tokens_estimated: int
    """Of those, tokens counted here because the endpoint's answers had no ``usage`` (an
    estimate where the model's tokenizer is not known)."""
    cost_usd: float | None
    """Those tokens at the model's price (:mod:`vectorfill.provider.prices`); None when unknown."""
    duration_s: float
    pending: int
    """Rows still queued after the run (all versions)."""
    failed_total: int
    """Rows in the failures table after the run."""
    switched_to: int | None = None
    """The version this run made active (a new model's, now complete), if any."""
    # -- the Batch API (tasks/submit.py, tasks/collect.py); included in the figures above
    batches_submitted: int = 0
    batch_rows_submitted: int = 0
    batches_collected: int = 0
    batches_open: int = 0
    """Batches still running at the provider after the run (collected by a later run)."""
    batch_rows: int = 0
    """Vectors written from batch results (part of ``embedded``)."""
    batch_tokens: int = 0
    batch_cost_usd: float | None = 0.0
    """Those tokens at the batch price (part of ``cost_usd``)."""
    batch_retried: int = 0
    """Rows a batch did not embed (expired, failed lines, refused batch), queued again."""

    @property
    def rows_per_s(self) -> float:
        return self.embedded / self.duration_s if self.duration_s > 0 else 0.0

    def as_dict(self) -> dict:
        d = {**asdict(self), "rows_per_s": round(self.rows_per_s, 1)}
        for key in ("cost_usd", "batch_cost_usd"):
            if d[key] is not None:
                d[key] = round(d[key], 6)
        return d

    def log_line(self) -> str:
        """The run's summary as one line, for the run's logs (counts only: no URL, no text)."""
        cost = "unknown cost" if self.cost_usd is None else f"${self.cost_usd:,.4f}"
        switched = f"; switched readers to version {self.switched_to}" if self.switched_to is not None else ""
        return (
            f"{self.job}: {self.embedded:,} rows embedded in {self.duration_s:,.1f} s ({self.rows_per_s:,.0f} rows/s), "
            f"{self.tokens:,} tokens in {self.requests:,} requests ({cost}); {self.unchanged:,} unchanged, "
            f"{self.deleted:,} deleted, {self.failed:,} failed, {self.truncated:,} truncated, {self.stale:,} stale; "
            f"{self.pending:,} still pending, {self.failed_total:,} failed in all{switched}"
        )

    def table(self) -> list[dict]:
        """The figures as artifact rows (``vectorfill runs`` reads them back by name)."""
        return [{"figure": k, "value": v} for k, v in self.as_dict().items()]


@task(name="report", **TASK_OPTIONS, retries=2, retry_delay_seconds=[2, 10])
async def report_run(
    job_name: str, totals: dict, duration_s: float, switched_to: int | None = None, kind: str = "backfill"
) -> RunSummary:
    """The run's summary, as a table artifact keyed ``<kind>-<job>`` (``backfill``, or
    ``sync`` for a window of ``serve --sync``)."""
    pending, failed = await asyncio.to_thread(_counts, job_name)
    summary = RunSummary(
        job=job_name,
        duration_s=round(duration_s, 3),
        pending=pending,
        failed_total=failed,
        switched_to=switched_to,
        **totals,
    )
    run_logger().info("%s", summary.log_line())
    await acreate_table_artifact(
        table=summary.table(),
        key=artifact_key(job_name, kind),
        description=f"vectorfill {kind} summary for job {job_name}",
    )
    return summary


def final_state(summary: RunSummary) -> State:
    """The flow run's final state: Completed when every row the run settled is embedded,
    unchanged or deleted; Failed (with :class:`~vectorfill.errors.RowsFailed`, which carries
    the summary) when some rows failed, so that Prefect, a scheduler or a cron job can tell
    it from a clean run."""
    if summary.failed:
        error = RowsFailed(summary, summary.failed, summary.job)
        return Failed(message=str(error), data=error)
    return Completed(message=f"{summary.embedded:,} rows embedded", data=summary)


def run_name() -> str:
    """The flow run's name: its job and scheduled start (UTC, to the minute), e.g.
    ``docs-2026-12-01T02:00`` (Prefect's ``flow_run_name``; called inside the run)."""
    from prefect.runtime import flow_run

    job = flow_run.parameters.get("job", "backfill")
    start = flow_run.scheduled_start_time
    return f"{job}-{start.astimezone(datetime.UTC):%Y-%m-%dT%H:%M}"


def artifact_key(job_name: str, kind: str = "backfill") -> str:
    return f"{kind}-" + re.sub(r"[^a-z0-9-]", "-", job_name)


def _counts(job_name: str) -> tuple[int, int]:
    """Rows still queued and rows failed, over the job's live versions."""
    pending = failed = 0
    with connect(database_url()) as conn:
        job = load_job(conn, job_name)
        absorb(conn, job)
        conn.commit()
        for version in job.live_versions:
            counts = one_row(
                conn.execute(sql.JobSQL(job, version).counts(), {"job_id": job.id, "version": version.version})
            )
            pending += counts[2]
            failed += counts[3]
    return pending, failed


@contextlib.asynccontextmanager
async def progress_artifact(
    progress: Callable[[], float], job: str, *, enabled: bool = True
) -> AsyncIterator[Callable[[], object]]:
    """The run's progress artifact, kept up to date while the block runs.

    It is created beside the first batches (not before them), updated every
    :data:`PROGRESS_EVERY_S` seconds (not once per batch) from ``progress()`` (a percent),
    and the block gets a ``finish`` function: call it when the work is done to have the
    last update sent beside what follows (the switch); the block's exit awaits it. An error
    in the block cancels the reporter. With ``enabled`` False (nothing queued) there is no
    artifact.
    """
    if not enabled:
        yield lambda: None
        return
    done = asyncio.Event()
    reporter = asyncio.create_task(_report_progress(progress, job, done))

    def finish() -> asyncio.Future:
        done.set()
        return reporter

    try:
        yield finish
    except BaseException:
        reporter.cancel()
        raise
    done.set()
    await reporter


async def _report_progress(progress: Callable[[], float], job: str, done: asyncio.Event) -> None:
    last = progress()
    artifact = await acreate_progress_artifact(progress=last, description=f"vectorfill backfill of {job}")
    while True:
        finished = done.is_set()
        if progress() != last:
            last = progress()
            await aupdate_progress_artifact(artifact, progress=last)
        if finished:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), PROGRESS_EVERY_S)
