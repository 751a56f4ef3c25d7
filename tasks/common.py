"""What every stage task shares: the unit of work and the retry policy."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.exceptions import MissingContextError

from vectorfill.config import JobSettings
from vectorfill.database import resolve_database_url
from vectorfill.errors import is_transient
from vectorfill.records import Job, Version

if TYPE_CHECKING:
    from prefect import Task
    from prefect.client.schemas.objects import State, TaskRun

__all__ = ["TASK_OPTIONS", "TaskOptions", "Work", "database_url", "retry_transient", "run_logger"]


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


def retry_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect ``retry_condition_fn``: retry only errors marked transient."""
    return isinstance(state.data, BaseException) and is_transient(state.data)


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The run's logger (its lines go to the run's Logs tab in the UI), or a plain one when
    the stages run outside a Prefect run (their ``.fn``, as the benchmark's bare run does)."""
    from prefect import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("vectorfill.run")


def database_url() -> str:
    """The run's database, from ``VECTORFILL_DATABASE_URL`` (the CLI sets it); never a parameter,
    so a password in the URL never reaches Prefect's run records."""
    return resolve_database_url(None, start_embedded=True)


class TaskOptions(TypedDict):
    """The keyword arguments of ``@task`` in :data:`TASK_OPTIONS`, typed as ``@task`` takes them."""

    cache_policy: CachePolicy
    persist_result: bool
    retry_condition_fn: Callable[[Task[..., Any], TaskRun, State[Any]], bool]
    retry_jitter_factor: float


#: Options every stage task shares: no caching, no result persistence (results are large
#: arrays that live only in memory for the next stage), retries only for transient errors.
TASK_OPTIONS: TaskOptions = {
    "cache_policy": NO_CACHE,
    "persist_result": False,
    "retry_condition_fn": retry_transient,
    "retry_jitter_factor": 0.5,
}
