"""Run history, read back from Prefect: each backfill flow run and the summary it left.

The Prefect server is the one ``PREFECT_API_URL`` names, else the one a running
``vectorfill serve`` uses, else Prefect's local database (where the temporary server of
plain ``vectorfill backfill`` runs keeps its history).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from uuid import UUID

from vectorfill.orchestration.api import use_served_api

__all__ = ["FLOW_NAME", "FLOW_NAMES", "RunRecord", "recent_runs"]

FLOW_NAME = "vectorfill-backfill"
#: The flows whose runs are listed: backfills, and the hourly runs of ``serve --sync``.
FLOW_NAMES = [FLOW_NAME, "vectorfill-sync"]


@dataclass(frozen=True)
class RunRecord:
    name: str
    job: str | None
    deployment: str | None
    state: str
    start: datetime | None
    duration_s: float | None
    rows: int | None
    tokens: int | None
    cost_usd: float | None
    failed: int | None
    switched_to: int | None
    batch_rows: int | None = None
    """Vectors this run stored from Batch API results."""
    batches_submitted: int | None = None
    tokens_estimated: int | None = None
    """Of ``tokens``, those counted here (no ``usage`` in the answers, or one that was not tokens)."""
    maybe_truncated: int | None = None
    """Rows that the server may have cut silently (their model's limit unknown here)."""

    def as_dict(self) -> dict:
        d = asdict(self)
        d["start"] = self.start.isoformat() if self.start else None
        return d


def recent_runs(job: str | None = None, limit: int = 20) -> list[RunRecord]:
    """The latest backfill and sync runs (of ``job``, or of every job), newest first."""
    use_served_api()
    return asyncio.run(_read(job, limit))


async def _read(job: str | None, limit: int) -> list[RunRecord]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=FLOW_NAMES)),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=min(200, limit if job is None else max(limit * 10, 200)),  # the API takes at most 200
        )
        runs = [r for r in runs if job is None or r.parameters.get("job") == job][:limit]
        summaries: dict = {}
        if runs:
            ids = [r.id for r in runs]
            # A raw filter with no task-run part: Prefect 3.8.8's client sends None for the
            # filters it is not given, which its server refuses (422), and any task-run filter,
            # even empty, makes the server keep only artifacts whose task run is recorded; the
            # task-run recorder writes those a moment after the run, so the summary of a run
            # that just ended was missing now and then.
            response = await client._client.post(
                "/artifacts/filter",
                json={
                    "artifacts": {"flow_run_id": {"any_": [str(i) for i in ids]}, "type": {"any_": ["table"]}},
                    "limit": len(ids) * 4,
                    "sort": "CREATED_DESC",
                },
            )
            for a in response.json():
                key = a.get("key") or ""
                if key.startswith(("backfill-", "sync-")) and a.get("flow_run_id"):
                    summaries.setdefault(UUID(a["flow_run_id"]), _figures(a.get("data")))  # the newest
        names: dict[uuid.UUID, str | None] = {}
        for r in runs:
            if r.deployment_id and r.deployment_id not in names:
                try:
                    names[r.deployment_id] = (await client.read_deployment(r.deployment_id)).name
                except Exception:  # a deleted deployment: show the run anyway
                    names[r.deployment_id] = None
    out = []
    for r in runs:
        s = summaries.get(r.id, {})
        duration = r.total_run_time.total_seconds() if r.total_run_time else None
        out.append(
            RunRecord(
                name=r.name,
                job=r.parameters.get("job"),
                deployment=names.get(r.deployment_id) if r.deployment_id else None,
                state=r.state_name or (r.state.name if r.state else None) or "?",
                start=r.start_time,
                duration_s=round(duration, 1) if duration is not None else None,
                rows=s.get("embedded"),
                tokens=s.get("tokens"),
                cost_usd=s.get("cost_usd"),
                failed=s.get("failed_total"),
                switched_to=s.get("switched_to"),
                batch_rows=s.get("batch_rows"),
                batches_submitted=s.get("batches_submitted"),
                tokens_estimated=s.get("tokens_estimated"),
                maybe_truncated=s.get("maybe_truncated"),
            )
        )
    return out


def _figures(data) -> dict:
    rows = json.loads(data) if isinstance(data, str) else data
    try:
        return {row["figure"]: row["value"] for row in rows}
    except (TypeError, KeyError):
        return {}
