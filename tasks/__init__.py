"""The backfill's stage tasks, one module per stage.

``prepare`` (load the job, check its source) -> ``claim`` (lease queued rows, read their
text, pack requests) -> ``embed`` (one API request per batch) -> ``store`` (write vectors
and failures) -> ``switch`` (to a new model's version, once complete) -> ``report`` (the
run summary artifact). Each returns a typed result.
"""

from .claim import Batch, Claim, Item, claim_rows, keep_claims, release_rows
from .common import Work
from .embed import Embedded, embed_batch
from .prepare import prepare_run
from .report import RunSummary, report_run
from .store import Stored, store_batch
from .switch import switch_versions

__all__ = [
    "Work",
    "prepare_run",
    "claim_rows",
    "release_rows",
    "keep_claims",
    "embed_batch",
    "store_batch",
    "switch_versions",
    "report_run",
    "Item",
    "Batch",
    "Claim",
    "Embedded",
    "Stored",
    "RunSummary",
]
