"""The backfill's stages, one module per stage, and the tasks that run them.

``prepare`` (load the job, check its source) -> per batch: ``claim`` (lease queued rows,
read their text, pack requests) -> ``embed`` (one API request per batch) -> ``store``
(write vectors and failures) -> ``switch`` (to a new model's version, once complete) ->
``report`` (the run summary artifact). Each returns a typed result. ``fill`` runs the
batch tasks in ``concurrency`` lanes per version until the queue is drained.

Prefect tasks: ``prepare_run``, ``switch_versions``, ``report_run``, and ``fill_batch``
(``batch.py``), one task run per batch of rows (at least 4,096, sent as one or more
requests side by side) that runs claim, embed and store and resumes at the stage that
failed when retried. The stage functions themselves are plain.

Batch mode (the provider's Batch API): ``collect`` (every run first: store finished batches,
reconcile unfinished submissions) and ``submit`` (rows sent as batches, leased for their
life) replace the lanes; see ``tasks/submit.py`` and ``tasks/collect.py``.
"""

from .batch import Attempts, Filled, Lanes, batch_task, fill_batch, rows_per_task
from .claim import Batch, Claim, Item, claim_rows, keep_claims, release_rows
from .common import Work
from .embed import Embedded, embed_batch
from .fill import Tally, catch_up, fill_versions
from .prepare import Prepared, prepare_run
from .report import RunSummary, report_run
from .store import Stored, store_batch
from .switch import switch_versions

__all__ = [
    "Attempts",
    "Batch",
    "Claim",
    "Embedded",
    "Filled",
    "Item",
    "Lanes",
    "Prepared",
    "RunSummary",
    "Stored",
    "Tally",
    "Work",
    "batch_task",
    "catch_up",
    "claim_rows",
    "embed_batch",
    "fill_batch",
    "fill_versions",
    "keep_claims",
    "prepare_run",
    "release_rows",
    "report_run",
    "rows_per_task",
    "store_batch",
    "switch_versions",
]
