"""The sync flow: keep a job's vectors in step with its source for one window of time.

``vectorfill serve --sync`` runs it for each job, one window after another (an hour by
default, aligned on the clock: the run of 15:00 to 16:00 is named ``sync-<job>-...T15:00``),
so that the history holds one run per job and hour, each with its summary, whatever the
number of writes. It only sequences the stages: follow (``engine/follow.py``: wait for
work -> claim -> embed -> store, each version, switching to a new model's version once it
lacks nothing: :func:`vectorfill.engine.follow.follow_job`, the engine under its follow
policy) -> report.
"""

from __future__ import annotations

import math
import time

from prefect import flow

from vectorfill.engine import RunSummary, Tally
from vectorfill.engine.follow import follow_job
from vectorfill.engine.work import frozen_heap
from vectorfill.tasks import report_run, switch_versions

__all__ = ["DEFAULT_WINDOW_S", "sync", "window_bounds"]

DEFAULT_WINDOW_S = 3600.0


def window_bounds(window_s: float, *, aligned: bool = True, now: float | None = None) -> tuple[float, float]:
    """(start, end) in epoch seconds of the window that holds ``now``: aligned on multiples
    of ``window_s`` (an hour: 15:00 to 16:00), or starting now."""
    now = time.time() if now is None else now
    if not aligned:
        return now, now + window_s
    start = math.floor(now / window_s) * window_s
    return start, start + window_s


@flow(name="vectorfill-sync", persist_result=False, log_prints=False)
async def sync(job: str, window_s: float = DEFAULT_WINDOW_S, aligned: bool = True) -> RunSummary:
    """Embed ``job``'s rows as they are written, until the end of the current window (then
    at the end of the cycle running at that moment); summarise the window."""
    with frozen_heap():
        started = time.monotonic()
        _, until = window_bounds(window_s, aligned=aligned)
        tally = Tally()
        followed = await follow_job(job, until, tally, switch_versions)
        return await report_run(job, tally.counts, time.monotonic() - started, followed.switched_to, kind="sync")
