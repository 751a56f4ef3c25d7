"""One rate budget for every run on an endpoint, in Postgres: the leasing SQL between
connections on a real database, and a run that leases its budget by endpoint."""

from __future__ import annotations

import asyncio
import time

import pytest

from budget_helpers import budget_row, record_give_backs, run
from vectorfill.errors import ConfigError
from vectorfill.provider.budgets import endpoint_key
from vectorfill.provider.ratelimit import RateLimiter
from vectorfill.storage.budgets import PostgresBudget
from vectorfill.storage.db import connect, migrate

# --------------------------------------------------------------------------- in memory, fake clock


# --------------------------------------------------------------------------- endpoint names


# --------------------------------------------------------------------------- Postgres


@pytest.fixture
def db(migrated_db):
    return migrated_db


def test_leases_take_at_most_what_the_bucket_holds_and_it_refills_with_time(db):
    async def go():
        b = PostgresBudget(db, "http://x/v1 m")
        first = await b.lease(600, 60_000, 10, 50_000)
        second = await b.lease(600, 60_000, 10, 50_000)  # only ~10,000 were left
        await asyncio.sleep(0.3)
        third = await b.lease(600, 60_000, 0, 50_000)  # the refill since: ~300 tokens
        await b.aclose()
        return first, second, third

    started = time.monotonic()
    first, second, third = run(go())
    elapsed = time.monotonic() - started
    assert (first.requests, first.tokens, first.rpm, first.tpm) == (10, 50_000, 600, 60_000)
    assert 10_000 <= second.tokens <= 10_000 + 1_000 * elapsed
    assert second.left_tokens == 0
    assert 0 < third.tokens <= 1_000 * elapsed  # 1,000 tokens per second
    assert third.left_tokens == 0


def test_concurrent_leases_from_many_connections_never_grant_the_same_budget(db):
    """Eight connections lease 500 tokens at a time, as fast as they can: together they get
    no more than the bucket held plus its refill meanwhile."""
    endpoint = "http://x/v1 m"

    async def go():
        budgets = [PostgresBudget(db, endpoint) for _ in range(8)]
        await budgets[0].lease(None, 6_000, 0, 0)  # make the row: 6,000 tokens, 100 per second
        started = time.monotonic()

        async def worker(b):
            got = 0.0
            for _ in range(40):
                got += (await b.lease(None, 6_000, 0, 500)).tokens
            return got

        got = await asyncio.gather(*(worker(b) for b in budgets))
        elapsed = time.monotonic() - started
        for b in budgets:
            await b.aclose()
        return sum(got), elapsed

    total, elapsed = run(go())
    assert total <= 6_000 + 100 * (elapsed + 0.5)
    assert total >= 6_000  # the whole bucket was handed out


def test_unspent_lease_is_given_back_when_the_limiter_closes(db):
    endpoint = "http://x/v1 m"

    async def go():
        rl = RateLimiter(None, 1_000_000, shared=PostgresBudget(db, endpoint), chunk=0.5)
        (await rl.acquire(100)).settle(100)
        during = budget_row(db, endpoint)
        await rl.aclose()
        return during

    during = run(go())
    after = budget_row(db, endpoint)
    assert during[3] <= 1_000_000 - 400_000  # a chunk of 500,000 was out (refill: ~16,700/s)
    assert after[3] >= 1_000_000 - 100 - 1  # all but the 100 spent (and refilled, capped)


def test_lowest_limit_asserted_in_the_last_minute_is_in_force(db):
    endpoint = "http://x/v1 m"

    async def go():
        b = PostgresBudget(db, endpoint)
        await b.lease(3_000, 1_000_000, 0, 0)
        low = await b.lease(None, 500_000, 0, 0)  # another job configured lower; no rpm
        high = await b.lease(3_000, 1_000_000, 0, 0)  # held to the lower one meanwhile
        with connect(db, autocommit=True) as conn:  # a minute without the lower job
            conn.execute("UPDATE vectorfill.budgets SET tpm_set_at = now() - interval '61 seconds'")
        later = await b.lease(3_000, 1_000_000, 0, 0)
        await b.aclose()
        return low, high, later

    low, high, later = run(go())
    assert (low.rpm, low.tpm) == (3_000, 500_000)
    assert low.left_tokens <= 500_000
    assert (high.rpm, high.tpm) == (3_000, 500_000)
    assert (later.rpm, later.tpm) == (3_000, 1_000_000)


def test_a_429_pauses_and_empties_the_shared_budget(db):
    endpoint = "http://x/v1 m"

    async def go():
        b = PostgresBudget(db, endpoint)
        await b.lease(3_000, 1_000_000, 0, 0)
        await b.pause(30.0)
        grant = await b.lease(3_000, 1_000_000, 1, 1_000)
        await b.aclose()
        return grant

    grant = run(go())
    assert 29.0 < grant.paused_s <= 30.0
    assert grant.tokens < 1_000  # emptied: only the refill since the pause
    assert grant.left_tokens == 0


def test_without_the_budgets_table_a_lease_says_to_migrate(fresh_db):
    migrate(fresh_db)
    migrate(fresh_db, "0001", downgrade=True)
    with connect(fresh_db, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('vectorfill.budgets')").fetchone()[0] is None
    b = PostgresBudget(fresh_db, "http://x/v1 m", job="docs")
    with pytest.raises(ConfigError, match="vectorfill migrate"):
        run(b.lease(None, 1_000, 0, 1))
    run(b.aclose())


# --------------------------------------------------------------------------- between processes


# --------------------------------------------------------------------------- the flow


def test_a_run_with_a_budget_leases_it_by_endpoint_never_by_key_and_gives_back_what_is_left(env, monkeypatch):
    from conftest import API_KEY

    given_back = record_give_backs(monkeypatch)
    env.make_table(120)
    env.create_job(settings_kw={"rpm": 3_000, "tpm": 1_000_000, "max_inputs": 20, "retries": 1})
    summary = env.backfill()
    assert env.status().embedded == 120
    with env.connect() as conn:
        rows = conn.execute("SELECT endpoint, rpm, tpm, requests, tokens, b::text FROM vectorfill.budgets b").fetchall()
    assert len(rows) == 1
    endpoint, rpm, tpm, requests, tokens, text = rows[0]
    assert endpoint == endpoint_key(env.provider.base_url, "fake-embed")
    assert (rpm, tpm) == (3_000, 1_000_000)
    assert API_KEY not in text and "VF_TEST_API_KEY" not in text
    # the rest of the run's last chunk (150 requests, 50,000 tokens) came back
    assert len(given_back) == 1
    back_requests, back_tokens = given_back[0]
    assert 0 < back_requests <= 150 and 0 < back_tokens <= 50_000
    assert requests >= 3_000 - summary.requests - 1
    assert tokens >= 1_000_000 - summary.tokens - 1
