"""One rate budget for every run on an endpoint: runs lease chunks of it from Postgres.

The first tests run the leasing limiter on a fake clock against :class:`MemoryBudget`, the
SQL's buckets in memory; the others run the SQL itself on the real Postgres, between
connections and between processes, with bounds that a loaded machine can only make
easier to meet (a slow process spends less, never more).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import subprocess
import sys
import textwrap
import time

import pytest

from fake_provider import RateLimiter as ProviderBuckets
from test_ratelimit import FakeTime
from vectorfill.errors import BudgetUnavailable, ConfigError
from vectorfill.provider.budgets import endpoint_key
from vectorfill.provider.ratelimit import Grant, RateLimiter
from vectorfill.storage.budgets import PostgresBudget
from vectorfill.storage.db import connect, migrate

# --------------------------------------------------------------------------- in memory, fake clock


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


def drive(limiters, t, provider, rng, *, lanes=3, requests=30):
    """``lanes`` lanes per limiter send ``requests`` requests each to the provider's buckets;
    returns (refused, billed)."""
    out = dict(refused=0, billed=0)

    async def lane(rl):
        for _ in range(requests):
            tokens = rng.randint(50, 2_000)
            permit = await rl.acquire(tokens)
            await t.sleep(rng.uniform(0.0, 0.3))  # on the wire
            admission = provider.admit(tokens)
            await t.sleep(rng.uniform(0.0, 0.3))  # answering
            if admission.refused:
                out["refused"] += 1
                permit.settle()
            else:
                out["billed"] += tokens
                permit.settle(tokens, admission.headers)

    async def go():
        await asyncio.gather(*(lane(rl) for rl in limiters for _ in range(lanes)))

    run(go())
    return out["refused"], out["billed"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_two_limiters_each_given_the_whole_budget_stay_within_it_together(seed):
    """Two runs, each configured with the endpoint's whole TPM, share it through the budget:
    the provider refuses nothing and the budget is used."""
    rng = random.Random(seed)
    t = FakeTime(start=0.0)
    provider = ProviderBuckets(rpm=300, tpm=20_000, model="m", clock=t.clock)
    shared = MemoryBudget(t, rpm=300, tpm=20_000)
    limiters = [RateLimiter(300, 20_000, clock=t.clock, sleep=t.sleep, shared=shared) for _ in range(2)]
    refused, billed = drive(limiters, t, provider, rng)
    assert refused == 0
    most = 20_000 + t.now * 20_000 / 60
    assert billed > 0.9 * most, f"{billed} of {most:.0f}"
    assert sum(rl.stats().acquired for rl in limiters) == 2 * 3 * 30


def test_without_the_shared_budget_two_limiters_given_the_whole_budget_are_refused():
    """The control for the test above: the same two runs, each on its own."""
    rng = random.Random(1)
    t = FakeTime(start=0.0)
    provider = ProviderBuckets(rpm=300, tpm=20_000, model="m", clock=t.clock)
    limiters = [RateLimiter(300, 20_000, clock=t.clock, sleep=t.sleep) for _ in range(2)]
    refused, _ = drive(limiters, t, provider, rng)
    assert refused > 0


def test_budget_is_leased_in_chunks_ahead_of_need():
    """A run holds a chunk (1/20 of a minute's budget) and tops it up in the background when
    half of it is spent: far fewer leases than requests, and few requests wait for one."""
    t = FakeTime()
    shared = MemoryBudget(t, rpm=3_000, tpm=1_000_000)
    rl = RateLimiter(3_000, 1_000_000, clock=t.clock, sleep=t.sleep, shared=shared)

    async def go():
        for _ in range(200):
            (await rl.acquire(1_000)).settle(1_000)
            await asyncio.sleep(0)  # a background lease gets its turn while requests are out

    run(go())
    stats = rl.stats()
    assert stats.acquired == 200
    assert stats.leases <= 200 * 1_000 / 25_000 + 2  # half chunks of 50,000 tokens
    assert stats.lease_waits <= 2
    assert rl.available()[1] <= 50_000 + 1_000  # holds about a chunk, not the whole minute
    assert shared.tokens >= 1_000_000 - 200 * 1_000 - 50_000 - 1_000


def test_close_gives_back_what_was_leased_and_not_spent():
    t = FakeTime()
    shared = MemoryBudget(t, rpm=600, tpm=60_000)
    rl = RateLimiter(600, 60_000, clock=t.clock, sleep=t.sleep, shared=shared)

    async def go():
        (await rl.acquire(500)).settle(700)  # billed more than estimated
        assert shared.tokens <= 60_000 - 3_000  # a chunk is out
        await rl.aclose()

    run(go())
    assert shared.tokens == pytest.approx(60_000 - 700)
    assert shared.requests == pytest.approx(600 - 1)
    assert shared.closed == 1
    assert rl.available() == (0.0, 0.0)


def test_a_request_waits_for_the_shared_bucket_to_refill_not_for_a_local_one():
    """A run starting when others drained the bucket waits for the refill, at the shared
    rate; its own full local minute does not exist."""
    t = FakeTime()
    shared = MemoryBudget(t, rpm=None, tpm=60_000)
    shared.tokens = 0.0  # drained by other runs
    rl = RateLimiter(None, 60_000, clock=t.clock, sleep=t.sleep, shared=shared)

    async def go():
        return [await rl.acquire(2_000) for _ in range(3)]

    permits = run(go())
    # 6,000 tokens at 1,000 per second: about 6 s, in polls of at most a second
    assert t.now - 100.0 == pytest.approx(6.0, abs=1.05)
    assert permits[-1].waited > 0


def test_a_request_bigger_than_a_chunk_is_put_together_from_several_leases():
    t = FakeTime()
    shared = MemoryBudget(t, rpm=None, tpm=60_000)
    shared.tokens = 10_000.0  # others spent the rest
    rl = RateLimiter(None, 60_000, clock=t.clock, sleep=t.sleep, shared=shared)
    permit = run(rl.acquire(40_000))
    assert permit.tokens == 40_000
    assert permit.waited == pytest.approx(30.0, abs=1.05)  # the 30,000 missing, at 1,000 per second
    assert rl.stats().leases >= 10  # chunks of 3,000 as they refill: nobody else is starved


def test_a_429_pauses_the_other_runs_from_their_next_lease():
    t = FakeTime()
    shared = MemoryBudget(t, rpm=None, tpm=60_000)
    a = RateLimiter(None, 60_000, clock=t.clock, sleep=t.sleep, shared=shared)
    b = RateLimiter(None, 60_000, clock=t.clock, sleep=t.sleep, shared=shared)

    async def go():
        await a.acquire(100)
        a.on_429(5.0)
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the pause is recorded in the background
        return await b.acquire(100)  # b's first lease learns of the pause

    permit = run(go())
    assert shared.paused_until == pytest.approx(105.0)
    assert permit.waited == pytest.approx(5.0, abs=0.01)


def test_a_failed_lease_raises_a_transient_error_and_the_next_acquire_leases_again():
    t = FakeTime()
    shared = MemoryBudget(t, rpm=None, tpm=60_000)
    rl = RateLimiter(None, 60_000, clock=t.clock, sleep=t.sleep, shared=shared)
    shared.failures = 1
    with pytest.raises(BudgetUnavailable) as info:
        run(rl.acquire(100))
    assert info.value.transient
    assert run(rl.acquire(100)).tokens == 100


def test_a_cancelled_acquirer_does_not_lose_the_lease_it_was_waiting_for():
    t = FakeTime()
    shared = MemoryBudget(t, rpm=None, tpm=60_000)
    rl = RateLimiter(None, 60_000, clock=t.clock, sleep=t.sleep, shared=shared)

    async def go():
        waiting = asyncio.ensure_future(rl.acquire(100))
        await asyncio.sleep(0)  # it has started the lease
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return rl.available()[1]

    assert run(go()) == pytest.approx(3_000)  # the chunk arrived, nothing was charged
    assert shared.tokens == pytest.approx(57_000)


# --------------------------------------------------------------------------- endpoint names


@pytest.mark.parametrize(
    "url, key",
    [
        ("https://api.openai.com/v1", "https://api.openai.com/v1 m"),
        ("HTTPS://API.OpenAI.com:443/v1/", "https://api.openai.com/v1 m"),
        ("https://user:sk-secret@api.openai.com/v1?api-key=sk-secret#x", "https://api.openai.com/v1 m"),
        ("http://127.0.0.1:8080/v1", "http://127.0.0.1:8080/v1 m"),
        ("http://[::1]:80/v1", "http://[::1]/v1 m"),
    ],
)
def test_endpoint_key_normalises_the_url_and_leaves_secrets_out(url, key):
    assert endpoint_key(url, " m ") == key


# --------------------------------------------------------------------------- Postgres


@pytest.fixture
def db(migrated_db):
    return migrated_db


def budget_row(url, endpoint):
    with connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT rpm, tpm, requests, tokens FROM vectorfill.budgets WHERE endpoint = %s", (endpoint,)
        ).fetchone()


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


def test_an_unreachable_database_is_a_transient_budget_error_without_the_password(tmp_path):
    url = f"postgresql://vf:hunter2@/nodb?host={tmp_path}"  # no server on this socket
    b = PostgresBudget(url, "http://x/v1 m", job="docs")
    with pytest.raises(BudgetUnavailable) as info:
        run(b.lease(None, 1_000, 0, 1))
    assert info.value.transient
    assert "hunter2" not in str(info.value) and "docs" in str(info.value)


# --------------------------------------------------------------------------- between processes

SPENDER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from vectorfill.storage.budgets import PostgresBudget
    from vectorfill.provider.ratelimit import RateLimiter

    url, endpoint, tpm, seconds, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])

    async def main():
        rl = RateLimiter(None, tpm, shared=PostgresBudget(url, endpoint))
        spent = []
        print("ready", flush=True)
        deadline = time.time() + seconds
        while time.time() < deadline:
            (await rl.acquire(size)).settle(size)
            spent.append((time.time(), size))
        if "--hold" in sys.argv:
            time.sleep(3600)  # killed here, holding its lease
        await rl.aclose()
        print(json.dumps(spent), flush=True)

    asyncio.run(main())
    """
)


def spender(url, endpoint, tpm, seconds, size, *extra):
    return subprocess.Popen(
        [sys.executable, "-c", SPENDER, url, endpoint, str(tpm), str(seconds), str(size), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_two_processes_each_given_the_whole_budget_together_stay_within_it(db):
    """Two processes, each configured with the whole 60,000 tokens per minute, spend from a
    bucket that other runs drained: together they get its refill (1,000 tokens per second),
    not twice that, and not a minute's budget each as separate limiters would."""
    endpoint = "http://x/v1 m"

    async def drain():
        b = PostgresBudget(db, endpoint)
        await b.lease(None, 60_000, 0, 60_000)
        await b.aclose()

    run(drain())
    drained_at = time.time()
    procs = [spender(db, endpoint, 60_000, 4.0, 200) for _ in range(2)]
    spent = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        spent.append(json.loads(out.splitlines()[-1]))
    total = sum(n for s in spent for _, n in s)
    last = max(ts for s in spent for ts, _ in s)
    assert all(spent), "both processes got budget"
    # what refilled from the drain to the last spend, and the leases' rounding
    assert total <= 1_000 * (last - drained_at) + 200 + 1, f"spent {total} in {last - drained_at:.1f} s"
    assert total < 60_000  # separate limiters would each have spent their full minute at once


@pytest.mark.slow
def test_a_killed_holder_blocks_nobody_and_its_lease_comes_back_with_the_refill(db):
    endpoint = "http://x/v1 m"
    holder = spender(db, endpoint, 60_000, 0.5, 1_000, "--hold")
    try:
        assert holder.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while (row := budget_row(db, endpoint)) is None or row[3] > 30_000:  # it spends the bucket
            assert time.monotonic() < deadline and holder.poll() is None
            time.sleep(0.1)
        time.sleep(0.6)  # it is holding now, unspent lease and all
    finally:
        holder.kill()
        holder.wait(10)

    async def other():
        rl = RateLimiter(None, 60_000, shared=PostgresBudget(db, endpoint))
        permit = await asyncio.wait_for(rl.acquire(2_000), timeout=60)
        await rl.aclose()
        return permit

    assert run(other()).tokens == 2_000


# --------------------------------------------------------------------------- the flow


def test_a_run_with_a_budget_leases_it_by_endpoint_never_by_key_and_gives_back_what_is_left(env, monkeypatch):
    from conftest import API_KEY

    given_back = []
    give_back = PostgresBudget.give_back

    async def spy(self, requests, tokens):
        given_back.append((requests, tokens))
        await give_back(self, requests, tokens)

    monkeypatch.setattr(PostgresBudget, "give_back", spy)
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


def test_a_job_cannot_be_named_like_the_budgets_table():
    from vectorfill.config import validate_job_name

    with pytest.raises(ConfigError, match="reserved"):
        validate_job_name("budgets")
