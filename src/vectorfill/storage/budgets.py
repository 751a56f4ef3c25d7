"""The shared rate budget's table access: :class:`PostgresBudget`, an endpoint's
:class:`~vectorfill.provider.ratelimit.SharedBudget` kept in ``vectorfill.budgets``.

Why the budget is shared through Postgres, and how a run leases it in chunks, is told in
:mod:`vectorfill.provider.budgets`; the statements and their locking are in
:mod:`vectorfill.storage.sql._budgets`. The provider layer never imports this module: the
caller that has the database URL makes one and hands it to the rate limiter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from psycopg import sql as pgsql

from vectorfill.errors import (
    UNDEFINED_TABLE,
    BudgetUnavailable,
    ConfigError,
    DatabaseError,
    DatabaseRefused,
    DatabaseUnavailable,
    first_line,
)
from vectorfill.records import Grant
from vectorfill.storage import sql
from vectorfill.storage.db import LaneConnection
from vectorfill.storage.errors import redact_url

__all__ = ["PostgresBudget"]


class PostgresBudget:
    """An endpoint's shared budget, kept in ``vectorfill.budgets``.

    It uses one autocommit connection of its own, opened at the first lease and reopened
    after a failure; a statement that finds the database unavailable twice raises
    :class:`~vectorfill.errors.BudgetUnavailable` (transient)::

        budget = PostgresBudget(url, endpoint_key(base_url, model), job="docs")
        limiter = RateLimiter(3_000, 1_000_000, job="docs", shared=budget)
        ...
        await limiter.aclose()  # gives back what was leased and not spent, closes the connection
    """

    def __init__(self, url: str, endpoint: str, *, job: str | None = None) -> None:
        self.url = url
        self.endpoint = endpoint
        self.job = job
        self._db = LaneConnection(url)
        self._ensured = False

    async def lease(self, rpm: float | None, tpm: float | None, requests: float, tokens: float) -> Grant:
        params = dict(endpoint=self.endpoint, rpm=rpm, tpm=tpm, requests=float(requests), tokens=float(tokens))
        row = None
        for _ in range(2):
            if not self._ensured:
                await self._execute(sql.BUDGET_ENSURE, params)
                self._ensured = True
            row = await self._execute(sql.BUDGET_LEASE, params)
            if row is not None:
                break
            self._ensured = False  # the row was deleted meanwhile: make it again
        if row is None:
            raise BudgetUnavailable(f"the shared rate budget of {self.endpoint} keeps disappearing", job=self.job)
        got_requests, got_tokens, left_requests, left_tokens, row_rpm, row_tpm, paused_s = row
        return Grant(
            requests=got_requests,
            tokens=got_tokens,
            left_requests=left_requests if row_rpm is not None else None,
            left_tokens=left_tokens if row_tpm is not None else None,
            rpm=row_rpm,
            tpm=row_tpm,
            paused_s=paused_s or 0.0,
        )

    async def give_back(self, requests: float, tokens: float) -> None:
        await self._execute(
            sql.BUDGET_GIVE_BACK, dict(endpoint=self.endpoint, requests=float(requests), tokens=float(tokens))
        )

    async def pause(self, seconds: float) -> None:
        await self._execute(sql.BUDGET_PAUSE, dict(endpoint=self.endpoint, seconds=float(seconds)))

    async def aclose(self) -> None:
        await self._db.aclose()

    async def _execute(
        self, statement: pgsql.SQL | pgsql.Composed, params: Mapping[str, object]
    ) -> tuple[Any, ...] | None:
        """Run one statement; when the database is unavailable, once more on a new connection."""
        for attempt in (1, 2):
            try:
                return await self._db.execute(statement, params)
            except DatabaseRefused as exc:
                if exc.sqlstate == UNDEFINED_TABLE:
                    raise ConfigError(
                        "shared rate budgets need the table vectorfill.budgets, which this database "
                        "lacks: run `vectorfill migrate` (schema revision 0002 or later)",
                        job=self.job,
                    ) from exc
                raise DatabaseRefused(
                    f"the database at {redact_url(self.url)} refused the shared rate budget's statement: "
                    f"{_reason(exc)}",
                    job=self.job,
                    sqlstate=exc.sqlstate,
                ) from exc
            except DatabaseUnavailable as exc:  # the lane connection was dropped: the next opens anew
                if attempt == 2:
                    raise self._unavailable(exc) from exc
        raise AssertionError("unreachable")

    def _unavailable(self, exc: DatabaseError) -> BudgetUnavailable:
        return BudgetUnavailable(
            f"cannot lease the shared rate budget of {self.endpoint} from the database at "
            f"{redact_url(self.url)}: {_reason(exc)}. Check that Postgres is running and reachable; "
            "the request waits and its task is retried",
            job=self.job,
            sqlstate=exc.sqlstate,
        )


def _reason(exc: DatabaseError) -> str:
    """Postgres's (or the client's) own first line, not the translated message around it."""
    return first_line(exc.__cause__ or exc)
