"""What every Prefect task shares: its options and the retry condition."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypedDict

from prefect.cache_policies import NO_CACHE, CachePolicy

from vectorfill.engine.work import Work, database_url, run_logger
from vectorfill.errors import is_transient

if TYPE_CHECKING:
    from prefect import Task
    from prefect.client.schemas.objects import State, TaskRun

__all__ = ["TASK_OPTIONS", "TaskOptions", "Work", "database_url", "plain_parameters", "retry_transient", "run_logger"]

_PLAIN = (str, int, float, bool, type(None))


def plain_parameters(
    serialize: Callable[[dict[str, Any]], dict[str, Any]],
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A flow's ``serialize_parameters`` that sends parameters of plain JSON types (all of
    vectorfill's: a job name, counts, flags) as they are, and anything else through
    Prefect's own (``serialize``). Prefect's imports FastAPI for its ``jsonable_encoder`` on
    every flow run: 0.3-0.6 s of a small run's start, to encode strings and integers."""

    def serialize_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
        if all(isinstance(v, _PLAIN) for v in parameters.values()):
            return dict(parameters)
        return serialize(parameters)

    return serialize_parameters


def retry_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect ``retry_condition_fn``: retry only errors marked transient."""
    return isinstance(state.data, BaseException) and is_transient(state.data)


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
