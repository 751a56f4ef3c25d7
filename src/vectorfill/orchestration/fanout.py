"""``vectorfill backfill JOB --workers N``: one backfill fanned out into N flow runs.

Every flow run of the backfill flow claims rows from the job's queue with ``FOR UPDATE SKIP
LOCKED`` and a lease (:meth:`vectorfill.storage.sql.JobSQL.claim`), so any number of them can
drain one queue side by side: no row is claimed by two runs, a run that dies leaves its rows
to the others once its leases expire, and the shared RPM/TPM budget in Postgres
(:mod:`vectorfill.provider.budgets`) holds across all of them, on any machine.

* Without a pool the N flow runs run in this process, on one event loop
  (:func:`run_here`): more requests in flight, one Python process.
* With ``--pool NAME`` the deployment ``vectorfill-backfill/backfill-workers`` is registered
  on that work pool (entrypoint: the installed module, so a worker needs only
  ``pip install vectorfill``) and N flow runs of it are created (:func:`run_on_pool`); the
  workers (``prefect worker start --pool NAME`` on each machine, with
  ``VECTORFILL_DATABASE_URL`` and the API key variable in their environment) pick them up.
  No parameter carries a secret: only the job's name, a row budget and the flow's options
  (``batch``, ``wait``, ``poll_s``), the same for every run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import time
from dataclasses import dataclass

from vectorfill.engine.counts import Counts, RunSummary
from vectorfill.errors import ConfigError

__all__ = ["DEPLOYMENT", "PoolRun", "arun_on_pool", "combine", "run_here", "run_on_pool", "split_rows"]

DEPLOYMENT = "backfill-workers"
FLOW = "vectorfill-backfill"


def split_rows(max_rows: int | None, workers: int) -> list[int | None]:
    """Each run's share of ``--max-rows`` (None: no limit), the first ones taking the rest."""
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {workers}")
    if max_rows is None:
        return [None] * workers
    base, rest = divmod(max_rows, workers)
    shares = [base + (1 if i < rest else 0) for i in range(workers)]
    return [n for n in shares if n > 0] or [0]


def combine(summaries: list[RunSummary]) -> RunSummary:
    """One :class:`~vectorfill.engine.counts.RunSummary` for runs of one job side by side:
    their counts added, and what each found after it taken as the last run found it."""
    first = summaries[0]
    if len(summaries) == 1:
        return first
    counts = sum((s.counts for s in summaries), Counts())
    return RunSummary.of(
        first.job,
        # batches still open are counted for the job by each run: not added
        dataclasses.replace(counts, batches_open=min(s.batches_open for s in summaries)),
        duration_s=max(s.duration_s for s in summaries),
        pending=min(s.pending for s in summaries),  # counted after each run: the last is the least
        failed_total=max(s.failed_total for s in summaries),
        switched_to=next((s.switched_to for s in summaries if s.switched_to is not None), None),
    )


async def run_here(job: str, workers: int, max_rows: int | None = None, flow_kw: dict | None = None) -> RunSummary:
    """``workers`` flow runs of the backfill flow in this process; their combined summary.
    ``flow_kw``: the flow's other parameters (``batch``, ``wait``, ``poll_s``), the same for
    every run. Each runs to its end even when another fails; then the first error is raised."""
    # lazy: Prefect reads its settings when imported; the caller sets them first (prefect_defaults, use_api)
    from vectorfill.flows.backfill import backfill

    kw = dict(flow_kw or {})
    shares = split_rows(max_rows, workers)
    results = await asyncio.gather(
        *(
            backfill(job, max_rows=m, **kw, **({"run_part": f"w{i}"} if len(shares) > 1 else {}))
            for i, m in enumerate(shares, 1)
        ),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise errors[0]
    return combine([r for r in results if isinstance(r, RunSummary)])


@dataclass(frozen=True)
class PoolRun:
    flow_run_id: str
    name: str
    state: str
    """Prefect's state name when last read (``Scheduled``, ``Running``, ``Completed``, ...)."""


def run_on_pool(
    job: str,
    workers: int,
    pool: str,
    *,
    max_rows: int | None = None,
    flow_kw: dict | None = None,
    wait: bool = True,
    poll_s: float = 2.0,
    timeout_s: float | None = None,
) -> list[PoolRun]:
    """Register the backfill deployment on ``pool`` and create ``workers`` flow runs of it for
    ``job``, with ``flow_kw`` (the flow's other parameters: ``batch``, ``wait``, ``poll_s``)
    as parameters of each; with ``wait``, return once every run is in a final state (or
    ``timeout_s``). (``wait`` and ``poll_s`` here are this call's, not the flow's.)

    For synchronous callers (the CLI); from a coroutine, await :func:`arun_on_pool`."""
    return asyncio.run(
        arun_on_pool(
            job, workers, pool, max_rows=max_rows, flow_kw=flow_kw, wait=wait, poll_s=poll_s, timeout_s=timeout_s
        )
    )


async def arun_on_pool(
    job: str,
    workers: int,
    pool: str,
    *,
    max_rows: int | None = None,
    flow_kw: dict | None = None,
    wait: bool = True,
    poll_s: float = 2.0,
    timeout_s: float | None = None,
) -> list[PoolRun]:
    """:func:`run_on_pool` for a coroutine.

    Prefect's ``to_deployment``, ``apply`` and ``run_deployment`` pick their sync or async
    implementation from the calling context, and return a coroutine when an event loop is
    running: called synchronously from one, the deployment was silently not registered and
    the flow runs were coroutines. Here the async implementations are called explicitly."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import State
    from prefect.deployments import arun_deployment
    from prefect.deployments.runner import EntrypointType
    from prefect.exceptions import ObjectNotFound

    # lazy: Prefect reads its settings when imported; the caller sets them first (prefect_defaults, use_api)
    from vectorfill.flows.backfill import backfill
    from vectorfill.tasks.report import run_label  # (tasks import Prefect too)

    def state_name(state: State | None) -> str:
        return (state.name or state.type.value) if state is not None else "?"

    async with get_client() as client:
        try:
            await client.read_work_pool(pool)
        except ObjectNotFound:
            raise ConfigError(
                f"there is no work pool {pool!r} on the Prefect server: create it with "
                f"`prefect work-pool create {pool} --type process`, then start workers with "
                f"`prefect worker start --pool {pool}` on each machine"
            ) from None
        deployment = await backfill.ato_deployment(
            name=DEPLOYMENT,
            tags=["vectorfill"],
            description="One of the flow runs of `vectorfill backfill JOB --workers N --pool POOL`.",
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        await deployment.aapply(work_pool_name=pool)
        start = datetime.datetime.now(datetime.UTC)
        runs = [
            await arun_deployment(
                name=f"{FLOW}/{DEPLOYMENT}",
                client=client,
                parameters={**(flow_kw or {}), "job": job, "max_rows": m, "run_part": f"w{i}"},
                flow_run_name=run_label(job, start, f"w{i}"),  # its name from the start (the run keeps it)
                timeout=0,
                tags=["vectorfill", f"job:{job}"],
            )
            for i, m in enumerate(split_rows(max_rows, workers), 1)
        ]
        out = [PoolRun(str(r.id), r.name, state_name(r.state)) for r in runs]
        if not wait:
            return out
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            states = [(await client.read_flow_run(r.id)).state for r in runs]
            out = [PoolRun(str(r.id), r.name, state_name(s)) for r, s in zip(runs, states, strict=True)]
            if all(s is not None and s.is_final() for s in states):
                return out
            if deadline is not None and time.monotonic() > deadline:
                return out
            await asyncio.sleep(poll_s)
