"""The backfill flow: embed every queued row of a job, then report.

It only sequences the stages (``tasks/``): prepare -> collect (finished Batch API
batches, if any) -> fill (lanes of batch tasks, each claim -> embed -> store) or, in
batch mode, submit (rows sent as Batch API batches; with ``wait``, collect again until
they are all done) -> switch (a re-embed only) -> report. The flow holds no
transaction and no secret: the database URL and the API key come from the environment of
the process that runs it (``VECTORFILL_DATABASE_URL`` and the job's ``api_key_env``).
"""

from __future__ import annotations

import asyncio
import time

from prefect import flow

from vectorfill.orchestration.runtime import frozen_heap
from vectorfill.tasks import RunSummary, Tally, fill_versions, prepare_run, report_run, switch_versions
from vectorfill.tasks.collect import add_batch_totals, collect_batches
from vectorfill.tasks.fill import _zero_totals
from vectorfill.tasks.report import progress_artifact
from vectorfill.tasks.submit import batch_mode, submit_batches

__all__ = ["RESUBMIT_ROUNDS", "backfill"]

#: How often a waiting batch run submits again the rows its batches gave back.
RESUBMIT_ROUNDS = 3


@flow(name="vectorfill-backfill", persist_result=False, log_prints=False)
async def backfill(
    job: str, max_rows: int | None = None, batch: bool | None = None, wait: bool = False, poll_s: float = 30.0
) -> RunSummary:
    """Embed every pending row of ``job`` (or at most ``max_rows`` of them), for its active
    version and the new model's version, if one is filling; switch to the latter once complete.

    Batches submitted earlier are collected first. ``batch`` (default: the job's setting)
    submits the rows to the provider's Batch API instead of embedding them now; ``wait``
    then waits for them (polling every ``poll_s`` seconds) and stores them."""
    with frozen_heap():  # full GC passes skip the heap that was there before the run
        started = time.monotonic()
        prepared = await prepare_run(job)
        collected = await collect_batches(job)
        if batch_mode(prepared, batch):
            submitted = await submit_batches(prepared, max_rows)
            rounds = 0  # resubmissions of rows given back, bounded (a batch refused again and again)
            while wait and (collected.open or submitted.batches) and not collected.busy:
                await asyncio.sleep(poll_s)
                collected = collected.then(await collect_batches(job))
                if not collected.open and collected.retried and rounds < RESUBMIT_ROUNDS:  # send them again
                    rounds += 1
                    submitted = submitted + await submit_batches(await prepare_run(job), max_rows)
                    collected = collected.then(await collect_batches(job))
                if not collected.open:
                    break
            totals = add_batch_totals(_zero_totals(), collected, submitted, collected_since=wait)
            switched = await switch_versions(job) if prepared.filling else None  # only a re-embed switches
            return await report_run(job, totals, time.monotonic() - started, switched)
        tally = Tally.for_run(prepared, max_rows)
        async with progress_artifact(lambda: tally.progress, job, enabled=tally.pending > 0) as finish:
            await fill_versions(prepared, tally, job)
            finish()  # the progress artifact's last update goes on beside the switch
            switched = await switch_versions(job) if prepared.filling else None  # only a re-embed switches
        return await report_run(job, add_batch_totals(tally.totals, collected), time.monotonic() - started, switched)
