"""Stage 5: the run summary (:class:`~vectorfill.engine.counts.RunSummary`), as a Prefect table artifact.

The artifact (key ``backfill-<job>``, one per run) is what the Prefect UI shows for the run
and what ``vectorfill runs`` reads back: one row per figure, ``{"figure", "value"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import re
from collections.abc import AsyncIterator, Callable

from prefect import task
from prefect.artifacts import acreate_progress_artifact, acreate_table_artifact, aupdate_progress_artifact
from prefect.client.schemas.objects import State
from prefect.states import Completed, Failed

from vectorfill.engine.counts import Counts, RunSummary
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
    "run_label",
    "run_name",
]

#: Seconds between updates of the progress artifact (each is an API round trip).
PROGRESS_EVERY_S = 2.0


@task(name="report", **TASK_OPTIONS, retries=2, retry_delay_seconds=[2, 10])
async def report_run(
    job_name: str, counts: Counts, duration_s: float, switched_to: int | None = None, kind: str = "backfill"
) -> RunSummary:
    """The run's summary (its ``counts``, and the rows pending and failed after it), as a
    table artifact keyed ``<kind>-<job>`` (``backfill``, or ``sync`` for a window of
    ``serve --sync``)."""
    pending, failed = await asyncio.to_thread(_counts, job_name)
    summary = RunSummary.of(
        job_name,
        counts,
        duration_s=round(duration_s, 3),
        pending=pending,
        failed_total=failed,
        switched_to=switched_to,
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


def run_label(job: str, start: datetime.datetime, part: str | None = None) -> str:
    """A flow run's name: its job, its start (UTC, to the minute) and, for one of several
    runs of one backfill, its part: ``docs-2026-12-07T00:22``, ``docs-2026-12-07T00:22-w1``."""
    name = f"{job}-{start.astimezone(datetime.UTC):%Y-%m-%dT%H:%M}"
    return f"{name}-{part}" if part else name


def run_name() -> str:
    """The flow run's name (:func:`run_label`) from its ``job`` and ``run_part`` parameters
    and its scheduled start (Prefect's ``flow_run_name``; called inside the run, also for
    runs created from a deployment: on a pool, by a schedule, by a trigger)."""
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return run_label(params.get("job", "backfill"), flow_run.scheduled_start_time, params.get("run_part"))


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

    It is created beside the first slices (not before them), updated every
    :data:`PROGRESS_EVERY_S` seconds (not once per slice) from ``progress()`` (a percent),
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
