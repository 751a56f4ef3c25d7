"""The run engine: one piece of code fills a job version, for every kind of run.

One module per stage: ``work`` (the unit of work), ``prepare`` (what a run fills),
``claim`` (lease rows, pack requests; give claims back, renew leases), ``embed`` (one API
request each), ``store`` (binary COPY and settle), ``slice`` (one slice:
claim -> embed -> store, with its retry policy), ``fill`` (the :class:`Filler`: lanes,
client, learnt caps, throttle, claims keeper, give-backs and counts, under a stop
:class:`Policy` and a row :class:`Budget`), ``follow`` (sync: follow what keeps
arriving), ``submit`` and ``collect`` (the provider's Batch API, on the same claim and
store), ``counts`` (one typed record of a run's figures). Prefect's tasks around it are in
:mod:`vectorfill.tasks`; nothing here imports them.
"""

from .claim import Claim, Item, Request, claim_rows, keep_claims, release_rows
from .counts import Counts, RunSummary
from .embed import Embedded, embed_request
from .fill import DRAIN, LIVE_TALLIES, Budget, Filler, Policy, Tally, catch_up, fill_versions
from .prepare import Prepared, prepare
from .slice import Attempts, Filled, Lanes, SliceRunner, fill_slice, rows_per_slice, run_slice
from .store import Stored, store_vectors
from .work import Work, database_url

__all__ = [
    "DRAIN",
    "LIVE_TALLIES",
    "Attempts",
    "Budget",
    "Claim",
    "Counts",
    "Embedded",
    "Filled",
    "Filler",
    "Item",
    "Lanes",
    "Policy",
    "Prepared",
    "Request",
    "RunSummary",
    "SliceRunner",
    "Stored",
    "Tally",
    "Work",
    "catch_up",
    "claim_rows",
    "database_url",
    "embed_request",
    "fill_slice",
    "fill_versions",
    "keep_claims",
    "prepare",
    "release_rows",
    "rows_per_slice",
    "run_slice",
    "store_vectors",
]
