"""What embedding tokens cost: a small per-model price table, overridable per job.

Prices are USD per million input tokens, as the providers list them (checked 2026-11).
A job's ``prices`` setting (``vectorfill job create --price MODEL=USD``, or ``vectorfill
estimate --price USD``) wins over the table; a model in neither has no known price and its cost is shown as unknown, never
as zero.
"""

from __future__ import annotations

from vectorfill.config import JobSettings

__all__ = [
    "BATCH_DISCOUNT",
    "BATCH_PRICES_PER_MILLION_TOKENS",
    "PRICES_PER_MILLION_TOKENS",
    "batch_price_per_million",
    "cost_usd",
    "price_per_million",
]

PRICES_PER_MILLION_TOKENS: dict[str, float] = {
    "text-embedding-3-small": 0.02,
    "text-embedding-3-large": 0.13,
    "text-embedding-ada-002": 0.10,
    # served locally (`vectorfill serve-embeddings`): no per-token charge
    "all-MiniLM-L6-v2": 0.0,
    "fake-embed": 0.0,
}


def price_per_million(model: str, settings: JobSettings | None = None, override: float | None = None) -> float | None:
    """USD per million tokens for ``model``: the override, else the job's setting, else the table."""
    if override is not None:
        return override
    if settings is not None and model in settings.prices:
        return settings.prices[model]
    return PRICES_PER_MILLION_TOKENS.get(model)


#: OpenAI's Batch API bills embeddings at half the online price.
BATCH_DISCOUNT = 0.5

#: USD per million tokens through the Batch API: OpenAI's embedding models at
#: :data:`BATCH_DISCOUNT`; the local models cost nothing either way. Other models have no
#: known batch price (their endpoint may have no Batch API at all).
BATCH_PRICES_PER_MILLION_TOKENS: dict[str, float] = {
    **{m: p * BATCH_DISCOUNT for m, p in PRICES_PER_MILLION_TOKENS.items() if m.startswith("text-embedding-")},
    "all-MiniLM-L6-v2": 0.0,
    "fake-embed": 0.0,
}


def batch_price_per_million(
    model: str, settings: JobSettings | None = None, override: float | None = None
) -> float | None:
    """USD per million tokens sent through the Batch API: the override, else the job's
    ``batch_prices``, else the table; None when unknown."""
    if override is not None:
        return override
    if settings is not None and model in settings.batch_prices:
        return settings.batch_prices[model]
    return BATCH_PRICES_PER_MILLION_TOKENS.get(model)


def cost_usd(tokens: int, price: float | None) -> float | None:
    return None if price is None else tokens * price / 1_000_000
