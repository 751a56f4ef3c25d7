"""The backfill flow: embed every queued row of a job, then report.

It only sequences the stages (``tasks/``): prepare -> fill (lanes of batch tasks, each
claim -> embed -> store) -> switch (a re-embed only; if another run made rows fresh in the
active version meanwhile, the new version is filled again first) -> report. The flow holds no
transaction and no secret: the database URL and the API key come from the environment of
the process that runs it (``VECTORFILL_DATABASE_URL`` and the job's ``api_key_env``).
"""

from __future__ import annotations

import time

from prefect import flow

from vectorfill.orchestration.runtime import frozen_heap
from vectorfill.tasks import RunSummary, Tally, catch_up, fill_versions, prepare_run, report_run, switch_versions
from vectorfill.tasks.report import progress_artifact

__all__ = ["CATCH_UP_PASSES", "backfill"]

#: Passes over the new version after a refused switch, each while the last one found rows.
CATCH_UP_PASSES = 5


@flow(name="vectorfill-backfill", persist_result=False, log_prints=False)
async def backfill(job: str, max_rows: int | None = None) -> RunSummary:
    """Embed every pending row of ``job`` (or at most ``max_rows`` of them), for its active
    version and the new model's version, if one is filling; switch to the latter once complete."""
    with frozen_heap():  # full GC passes skip the heap that was there before the run
        started = time.monotonic()
        prepared = await prepare_run(job)
        tally = Tally.for_run(prepared, max_rows)
        async with progress_artifact(lambda: tally.progress, job, enabled=tally.pending > 0) as finish:
            await fill_versions(prepared, tally, job)
            finish()  # the progress artifact's last update goes on beside the switch
            switched = None
            if prepared.filling:  # only a re-embed switches: once the new version lacks nothing
                switched = await switch_versions(job)  # the active one has up to date
                for _ in range(CATCH_UP_PASSES):  # another run made rows fresh in the active one meanwhile
                    if switched is not None or not await catch_up(prepared, tally, job):
                        break
                    switched = await switch_versions(job)
        return await report_run(job, tally.totals, time.monotonic() - started, switched)
