"""The unit of work every stage takes (one job version filled by one run), and what every
run shares: its database URL, its logger, a heap left out of full GC passes."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from prefect import get_run_logger
from prefect.exceptions import MissingContextError

from vectorfill.config import JobSettings
from vectorfill.database import resolve_database_url
from vectorfill.records import Job, Version

__all__ = ["Work", "database_url", "frozen_heap", "run_logger"]


@dataclass(frozen=True)
class Work:
    """One job version being filled by one run."""

    job: Job
    version: Version

    @property
    def settings(self) -> JobSettings:
        return self.job.settings

    @property
    def label(self) -> str:
        return f"{self.job.name} v{self.version.version}"


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The run's logger (its lines go to the run's Logs tab in the UI), or a plain one when
    the engine runs outside a Prefect run (a test, or the benchmark's bare run)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("vectorfill.run")


def database_url() -> str:
    """The run's database, from ``VECTORFILL_DATABASE_URL`` (the CLI sets it); never a parameter,
    so a password in the URL never reaches Prefect's run records."""
    return resolve_database_url(None, start_embedded=True)


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Leave the objects that exist now out of the garbage collector's full passes while
    the block runs (:func:`gc.freeze`), and give them back to it afterwards.

    A backfill process holds a large, long-lived heap (Prefect, pydantic, SQLAlchemy and
    their modules): each full (generation 2) collection walks all of it, about 150 ms on
    these machines with the event loop stopped, and a run makes several. Frozen, those
    passes walk only what the run itself allocated. Nothing is leaked: garbage that
    existed before the block is collected after it, by the next full pass.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
