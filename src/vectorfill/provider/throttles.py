"""A run's throttles, one per endpoint: the rate budget and the adaptive concurrency that
every request of the run to that endpoint goes through.

Versions of a job on the same endpoint (base URL + model + key) share one throttle. With
an ``rpm`` or ``tpm`` setting the budget is also shared with every other run on the
endpoint, on any machine, through the table ``vectorfill.budgets``
(:class:`~vectorfill.provider.budgets.PostgresBudget`); without, the run follows what the
provider announces (``x-ratelimit-*``, ``Retry-After``).
"""

from __future__ import annotations

import asyncio

from vectorfill.config import JobSettings
from vectorfill.provider.budgets import PostgresBudget, endpoint_key
from vectorfill.provider.ratelimit import Concurrency, RateLimiter, Throttle
from vectorfill.records import Version

__all__ = ["Throttles"]


class Throttles:
    """The throttles of one run, by endpoint. Close them when the run ends (``aclose``):
    that gives back the shared budget the run leased and did not spend."""

    def __init__(self, database_url: str, job: str) -> None:
        self._url = database_url
        self._job = job
        self._by_endpoint: dict[tuple[str, str, str | None], Throttle] = {}

    def for_version(self, version: Version, settings: JobSettings) -> Throttle:
        key = (version.base_url.rstrip("/"), version.model, version.api_key_env)
        if key not in self._by_endpoint:
            shared = None
            if settings.rpm or settings.tpm:
                shared = PostgresBudget(self._url, endpoint_key(version.base_url, version.model), job=self._job)
            self._by_endpoint[key] = Throttle(
                RateLimiter(settings.rpm, settings.tpm, job=self._job, shared=shared),
                Concurrency(min(4, settings.concurrency), max_limit=settings.concurrency),
            )
        return self._by_endpoint[key]

    async def aclose(self) -> None:
        """Give back the unspent shared budget (best effort, shielded from the run's
        cancellation: a run stopped by Ctrl-C gives it back too)."""
        for throttle in self._by_endpoint.values():
            await asyncio.shield(throttle.aclose())
