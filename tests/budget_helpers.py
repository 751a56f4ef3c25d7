"""The shared rate budget's test helpers: :class:`MemoryBudget`, the budget SQL in memory on a
fake clock, and a look at a budget's row in Postgres (used by the unit, integration and e2e
shared-budget modules)."""

from __future__ import annotations

import asyncio
import math

from fake_clock import FakeTime
from vectorfill.errors import BudgetUnavailable
from vectorfill.provider.ratelimit import Grant
from vectorfill.storage.budgets import PostgresBudget
from vectorfill.storage.db import connect


class MemoryBudget:
    """What the SQL does (``vectorfill.storage.sql.BUDGET_*``), in memory on a fake clock, with
    fixed limits; counts its calls and can be told to fail."""

    def __init__(self, t: FakeTime, rpm: float | None, tpm: float | None) -> None:
        self.t = t
        self.rpm, self.tpm = rpm, tpm
        self.requests, self.tokens = float(rpm or 0), float(tpm or 0)
        self.updated = t.clock()
        self.paused_until = -math.inf
        self.leases = 0
        self.closed = 0
        self.failures = 0  # the next leases that raise

    def _refill(self) -> float:
        now = self.t.clock()
        elapsed = max(0.0, now - self.updated)
        if self.rpm:
            self.requests = min(self.rpm, self.requests + elapsed * self.rpm / 60)
        if self.tpm:
            self.tokens = min(self.tpm, self.tokens + elapsed * self.tpm / 60)
        self.updated = max(self.updated, now)
        return now

    async def lease(self, rpm, tpm, requests, tokens) -> Grant:
        await asyncio.sleep(0)  # a round trip
        if self.failures:
            self.failures -= 1
            raise BudgetUnavailable("the database is down")
        now = self._refill()
        self.leases += 1
        got_r = min(requests, max(0.0, self.requests)) if self.rpm else requests
        got_t = min(tokens, max(0.0, self.tokens)) if self.tpm else tokens
        if self.rpm:
            self.requests -= got_r
        if self.tpm:
            self.tokens -= got_t
        return Grant(
            got_r,
            got_t,
            self.requests if self.rpm else None,
            self.tokens if self.tpm else None,
            self.rpm,
            self.tpm,
            max(0.0, self.paused_until - now),
        )

    async def give_back(self, requests, tokens) -> None:
        self._refill()
        if self.rpm:
            self.requests = min(self.rpm, self.requests + requests)
        if self.tpm:
            self.tokens = min(self.tpm, self.tokens + tokens)

    async def pause(self, seconds) -> None:
        now = self._refill()
        self.paused_until = max(self.paused_until, now + seconds)
        self.requests, self.tokens = min(self.requests, 0.0), min(self.tokens, 0.0)

    async def aclose(self) -> None:
        self.closed += 1


def run(coro):
    return asyncio.run(coro)


def budget_row(url, endpoint):
    with connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT rpm, tpm, requests, tokens FROM vectorfill.budgets WHERE endpoint = %s", (endpoint,)
        ).fetchone()


def record_give_backs(monkeypatch) -> list[tuple[float, float]]:
    """Every (requests, tokens) a :class:`PostgresBudget` gives back from now on, in order; the
    budget still gets them back."""
    given_back: list[tuple[float, float]] = []
    give_back = PostgresBudget.give_back

    async def spy(self, requests, tokens):
        given_back.append((requests, tokens))
        await give_back(self, requests, tokens)

    monkeypatch.setattr(PostgresBudget, "give_back", spy)
    return given_back
