"""The Prefect tasks of a run: thin wrappers around the engine (:mod:`vectorfill.engine`).

``prepare_run`` (load the job, check its source) -> ``fill_slice`` (``slice.py``: one task
run per slice of the queue, at least 4,096, running the engine's claim -> embed -> store and
resuming at the stage that failed when retried; :data:`~vectorfill.tasks.slice.BACKFILL` is
the engine's policy that runs it) -> ``switch_versions`` (to a new model's version, once
complete) -> ``report_run`` (the run summary artifact). Each returns a typed result.

Batch mode (the provider's Batch API): ``collect_batches`` (every run first: store finished
batches, reconcile unfinished submissions) and ``submit_batches`` (rows sent as batches,
leased for their life) replace the lanes; their stages are the engine's
(:mod:`vectorfill.engine.submit`, :mod:`vectorfill.engine.collect`).

The stages' own names (``claim_rows``, ``embed_request``, ``store_vectors``, ``release_rows``,
``Work``, ...) are re-exported here from the engine, where they live.
"""

from vectorfill.engine import (
    Attempts,
    Claim,
    Counts,
    Embedded,
    Filled,
    Item,
    Lanes,
    Prepared,
    Request,
    RunSummary,
    Stored,
    Tally,
    Work,
    catch_up,
    claim_rows,
    embed_request,
    fill_versions,
    keep_claims,
    release_rows,
    rows_per_slice,
    store_vectors,
)

from .collect import collect_batches
from .prepare import prepare_run
from .report import report_run
from .slice import BACKFILL, as_task_run, fill_slice, slice_task
from .submit import submit_batches
from .switch import switch_versions

__all__ = [
    "BACKFILL",
    "Attempts",
    "Claim",
    "Counts",
    "Embedded",
    "Filled",
    "Item",
    "Lanes",
    "Prepared",
    "Request",
    "RunSummary",
    "Stored",
    "Tally",
    "Work",
    "as_task_run",
    "catch_up",
    "claim_rows",
    "collect_batches",
    "embed_request",
    "fill_slice",
    "fill_versions",
    "keep_claims",
    "prepare_run",
    "release_rows",
    "report_run",
    "rows_per_slice",
    "slice_task",
    "store_vectors",
    "submit_batches",
    "switch_versions",
]
