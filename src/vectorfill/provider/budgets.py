"""Rate budgets shared through Postgres by every run, process and machine on one endpoint.

Providers count requests and tokens per minute per account, whoever sends them. Each run's
:class:`~vectorfill.provider.ratelimit.RateLimiter` keeps the endpoint's budget locally; on its own
it cannot know what other runs spend (the provider's headers tell it only afterwards), so
two runs given the whole budget overspend it. Every worker already talks to the vectorfill
database, so the budget lives there too: one row of ``vectorfill.budgets`` per endpoint,
a pair of token buckets refilled by the database's clock (the statements and their locking
are in :mod:`vectorfill.storage.sql`).

Asking the database before each request would put a round trip in front of every request,
so runs take the budget in **chunks** (leases), by default 1/20 of a minute's budget, and
spend them locally; the next chunk is leased in the background while half of one is left,
so a request rarely waits for the database. Unspent budget is given back when the run
ends. A run that dies keeps nothing locked (every statement is a one-row autocommit
statement) and loses at most the chunk it held, which the bucket refills in 3 seconds.

Prefect's global concurrency limits could carry the budget too, but they cost a round trip
to Prefect's server per request, with long stalls under load, where a lease here is paid
once per chunk (``bench/bench_ratelimit.py`` measures both; figures in bench/README.md).

What the shared bucket cannot see: budget leased and not yet spent (each run holds about
a chunk, more only while it puts together a request bigger than one), and spending by
anything that does not lease from it (another tool on the same account). After a lull in
which the buckets filled up, the provider may therefore admit up to a chunk per run less
than the runs hold; the provider's headers lower what a run holds, and a 429 pauses every
run and empties the shared buckets.

The endpoint is named by :func:`endpoint_key`: the base URL without user info, query or
fragment (where a secret could hide) and the model; never an API key. Runs on one
endpoint share one budget whatever key they use, which errs on the safe side for
accounts with several keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg.errors
from psycopg import sql as pgsql

from vectorfill.errors import BudgetUnavailable, ConfigError, DatabaseError
from vectorfill.provider.ratelimit import Grant
from vectorfill.storage import sql
from vectorfill.storage.db import LaneConnection, redact_url

__all__ = ["PostgresBudget", "endpoint_key"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def endpoint_key(base_url: str, model: str) -> str:
    """``scheme://host[:port]/path model``, the name of an endpoint's shared budget.

    Scheme and host are lowercased, a default port and trailing slashes dropped; user info,
    query and fragment are left out, so that no secret in the URL reaches the table::

        >>> endpoint_key("HTTPS://user:sk-x@API.OpenAI.com:443/v1/?api-key=sk-x", "text-embedding-3-small")
        'https://api.openai.com/v1 text-embedding-3-small'
    """
    parts = urlsplit(base_url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"  # IPv6
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    path = parts.path.rstrip("/")
    return f"{urlunsplit((scheme, host, path, '', ''))} {model.strip()}"


class PostgresBudget:
    """An endpoint's :class:`~vectorfill.provider.ratelimit.SharedBudget`, kept in ``vectorfill.budgets``.

    It uses one autocommit connection of its own, opened at the first lease and reopened
    after a failure; a statement that fails twice raises
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
            row = await self._execute(sql.BUDGET_LEASE, params, fetch=True)
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
        self, statement: pgsql.SQL | pgsql.Composed, params: Mapping[str, object], *, fetch: bool = False
    ) -> tuple[Any, ...] | None:
        """Run one statement; after a connection failure, once more on a new connection."""
        for attempt in (1, 2):
            try:
                conn = await self._db.get()
                cur = await conn.execute(statement, params)
                return await cur.fetchone() if fetch else None
            except psycopg.errors.UndefinedTable:
                raise ConfigError(
                    "shared rate budgets need the table vectorfill.budgets, which this database "
                    "lacks: run `vectorfill migrate` (schema revision 0002 or later)",
                    job=self.job,
                ) from None
            except (psycopg.OperationalError, psycopg.InterfaceError, DatabaseError) as exc:
                await self._db.discard()
                if attempt == 2:
                    raise self._unavailable(exc) from None
            except psycopg.Error as exc:
                raise self._unavailable(exc) from None
        raise AssertionError("unreachable")

    def _unavailable(self, exc: Exception) -> BudgetUnavailable:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return BudgetUnavailable(
            f"cannot lease the shared rate budget of {self.endpoint} from the database at "
            f"{redact_url(self.url)}: {reason}. Check that Postgres is running and reachable; "
            "the request waits and its task is retried",
            job=self.job,
        )
