"""The backfill flow: embed every queued row of a job, then report.

It only sequences the stages: prepare -> collect (finished Batch API batches, if any) ->
fill (the engine, :func:`vectorfill.engine.fill.fill_versions`, under the
:data:`~vectorfill.tasks.slice.BACKFILL` policy: lanes of slice task runs, each claim ->
embed -> store, until the queue is drained) or, in batch mode, submit (rows sent as Batch
API batches; with ``wait``, collect again until they are all done) -> switch (a re-embed
only; if another run made rows fresh in the active version meanwhile, the new version is
filled again first) -> report. The flow holds no transaction and no secret: the database
URL and the API key come from the environment of the process that runs it
(``VECTORFILL_DATABASE_URL`` and the job's ``api_key_env``).
"""

from __future__ import annotations

import asyncio
import time

from prefect import flow

from vectorfill.engine import Prepared, RunSummary, Tally, catch_up, fill_versions
from vectorfill.engine.collect import Collected, batch_counts
from vectorfill.engine.counts import Counts
from vectorfill.engine.work import frozen_heap
from vectorfill.tasks import BACKFILL, prepare_run, report_run, switch_versions
from vectorfill.tasks.collect import collect_batches
from vectorfill.tasks.common import plain_parameters
from vectorfill.tasks.report import final_state, progress_artifact, run_name
from vectorfill.tasks.submit import batch_mode, submit_batches

__all__ = ["CATCH_UP_PASSES", "RESUBMIT_ROUNDS", "backfill", "batch_round", "switch_caught_up"]

#: Passes over the new version after a refused switch, each while the last one found rows.
CATCH_UP_PASSES = 5
#: How often a waiting batch run submits again the rows its batches gave back.
RESUBMIT_ROUNDS = 3


@flow(name="vectorfill-backfill", flow_run_name=run_name, persist_result=False, log_prints=False)
async def backfill(
    job: str,
    max_rows: int | None = None,
    batch: bool | None = None,
    wait: bool = False,
    poll_s: float = 30.0,
    run_part: str | None = None,
) -> RunSummary:
    """Embed every pending row of ``job`` (or at most ``max_rows`` of them), for its active
    version and the new model's version, if one is filling; switch to the latter once complete.

    Batches submitted earlier are collected first. ``batch`` (default: the job's setting)
    submits the rows to the provider's Batch API instead of embedding them now; ``wait``
    then waits for them (polling every ``poll_s`` seconds) and stores them. ``run_part``
    names one of several runs of one backfill (``w1``, ``w2``...: ``--workers``, ``--pool``):
    the run is named ``<job>-<start>-<part>``.

    Returns the run's summary; when rows failed, the run ends Failed and calling the flow
    raises :class:`~vectorfill.errors.RowsFailed`, whose ``summary`` is the same summary."""
    with frozen_heap():  # full GC passes skip the heap that was there before the run
        started = time.monotonic()
        prepared = await prepare_run(job)
        collected = await collect_batches(job)
        if batch_mode(prepared, batch):
            counts = await batch_round(job, prepared, collected, max_rows, wait=wait, poll_s=poll_s)
            switched = await switch_versions(job) if prepared.filling else None  # only a re-embed switches
            return final_state(await report_run(job, counts, time.monotonic() - started, switched))
        tally = Tally.for_run(prepared, max_rows, job)
        async with progress_artifact(lambda: tally.progress, job, enabled=tally.pending > 0) as finish:
            await fill_versions(prepared, tally, job, BACKFILL)
            finish()  # the progress artifact's last update goes on beside the switch
            switched = await switch_caught_up(prepared, tally, job) if prepared.filling else None  # a re-embed
        summary = await report_run(job, tally.counts + batch_counts(collected), time.monotonic() - started, switched)
        return final_state(summary)  # Failed when rows failed: RowsFailed carries the summary


backfill.serialize_parameters = plain_parameters(backfill.serialize_parameters)  # type: ignore[method-assign]


async def switch_caught_up(prepared: Prepared, tally: Tally, job: str) -> int | None:
    """The switch of a re-embed: to the new model's version once it lacks nothing the active
    one has up to date. Refused because another run (``serve --sync``, say) made rows fresh
    in the active version meanwhile, the new version is filled again (the engine's
    :func:`~vectorfill.engine.fill.catch_up`) and the switch tried again, up to
    :data:`CATCH_UP_PASSES` times. The version switched to, or None."""
    switched = await switch_versions(job)
    for _ in range(CATCH_UP_PASSES):
        if switched is not None or not await catch_up(prepared, tally, job, BACKFILL):
            break
        switched = await switch_versions(job)
    return switched


async def batch_round(
    job: str, prepared: Prepared, collected: Collected, max_rows: int | None, *, wait: bool, poll_s: float
) -> Counts:
    """Batch mode's part of a run: submit the pending rows as Batch API batches and, with
    ``wait``, collect until every open batch is done (submitting again, a bounded number of
    times, the rows that batches gave back). Returns the run's counts."""
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
    return batch_counts(collected, submitted, collected_since=wait)
