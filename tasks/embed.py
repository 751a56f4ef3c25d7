"""Stage 2: one API request per batch; a batch the provider rejects is bisected.

A terminal rejection (400/422) of a batch is split in halves until the rejected inputs are
isolated, so one bad input cannot block the others; the isolated inputs come back as
failures with the provider's message. Errors that make every request pointless (401/403,
404, insufficient quota) stop the run at once; transient errors are retried by Prefect,
after honouring the provider's Retry-After.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
from prefect import task
from prefect.tasks import exponential_backoff

from vectorfill.client import EmbeddingsClient
from vectorfill.errors import TerminalProviderError, TransientProviderError, stops_run

from .claim import Batch, Item
from .common import TASK_OPTIONS, Work

__all__ = ["Embedded", "embed_batch"]

MAX_RETRY_AFTER_S = 120.0


@dataclass(frozen=True)
class Embedded:
    """Vectors for ``items`` (row i of ``vectors`` belongs to ``items[i]``), and the inputs
    the provider rejected with its reason."""

    items: tuple[Item, ...]
    vectors: np.ndarray
    model: str
    tokens: int
    requests: int
    rejected: tuple[tuple[Item, int | None, str], ...] = field(default_factory=tuple)


async def _embed(client: EmbeddingsClient, items: tuple[Item, ...]) -> Embedded:
    try:
        result = await client.embed([i.text for i in items])
    except TerminalProviderError as exc:
        if stops_run(exc):
            raise
        if len(items) == 1:
            return Embedded((), np.zeros((0, 0), np.float32), client.model, 0, 1, ((items[0], exc.status, str(exc)),))
        mid = len(items) // 2
        left = await _embed(client, items[:mid])
        right = await _embed(client, items[mid:])
        parts = [e for e in (left, right) if len(e.items)]
        vectors = np.vstack([e.vectors for e in parts]) if parts else np.zeros((0, 0), np.float32)
        return Embedded(
            left.items + right.items,
            vectors,
            left.model if left.items else right.model,
            left.tokens + right.tokens,
            left.requests + right.requests + 1,
            left.rejected + right.rejected,
        )
    tokens = result.prompt_tokens if result.prompt_tokens is not None else sum(i.tokens for i in items)
    return Embedded(items, result.vectors, result.model, tokens, 1)


@task(name="embed", **TASK_OPTIONS, retries=4, retry_delay_seconds=exponential_backoff(backoff_factor=2))
async def embed_batch(work: Work, client: EmbeddingsClient, batch: Batch) -> Embedded:
    """Embed one batch with one request (more only when bisecting a rejected batch)."""
    try:
        return await _embed(client, batch.items)
    except TransientProviderError as exc:
        if exc.retry_after:
            await asyncio.sleep(min(exc.retry_after, MAX_RETRY_AFTER_S))
        raise
