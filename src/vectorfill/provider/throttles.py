"""A run's throttles, one per endpoint: the rate budget and the adaptive concurrency that
every request of the run to that endpoint goes through.

Versions of a job on the same endpoint (base URL + model + key) share one throttle. With
an ``rpm`` or ``tpm`` setting the budget is also shared with every other run on the
endpoint, on any machine, through the table ``vectorfill.budgets``
(``shared_budget``: an endpoint's name to a :class:`~vectorfill.provider.ratelimit.SharedBudget`,
:class:`vectorfill.storage.budgets.PostgresBudget` in a run); without, the run follows what
the provider announces (``x-ratelimit-*``, ``Retry-After``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from vectorfill.config import JobSettings
from vectorfill.provider.budgets import endpoint_key
from vectorfill.provider.ratelimit import Concurrency, RateLimiter, SharedBudget, Throttle
from vectorfill.records import Version

__all__ = ["Throttles"]


class Throttles:
    """The throttles of one run, by endpoint. Close them when the run ends (``aclose``):
    that gives back the shared budget the run leased and did not spend."""

    def __init__(self, job: str, *, shared_budget: Callable[[str], SharedBudget] | None = None) -> None:
        """``shared_budget`` makes the budget of an endpoint (named by :func:`endpoint_key`)
        that its runs share (:class:`vectorfill.storage.budgets.PostgresBudget` in a run);
        without it, each endpoint's budget is this run's alone."""
        self._job = job
        self._shared_budget = shared_budget
        self._by_endpoint: dict[tuple[str, str, str | None], Throttle] = {}

    def for_version(self, version: Version, settings: JobSettings) -> Throttle:
        key = (version.base_url.rstrip("/"), version.model, version.api_key_env)
        if key not in self._by_endpoint:
            shared = None
            if settings.rpm or settings.tpm:
                shared = self._budget(endpoint_key(version.base_url, version.model))
            self._by_endpoint[key] = Throttle(
                RateLimiter(settings.rpm, settings.tpm, job=self._job, shared=shared),
                Concurrency(min(4, settings.concurrency), max_limit=settings.concurrency),
            )
        return self._by_endpoint[key]

    def _budget(self, endpoint: str) -> SharedBudget | None:
        return self._shared_budget(endpoint) if self._shared_budget is not None else None

    async def aclose(self) -> None:
        """Give back the unspent shared budget (best effort, shielded from the run's
        cancellation: a run stopped by Ctrl-C gives it back too)."""
        for throttle in self._by_endpoint.values():
            await asyncio.shield(throttle.aclose())
