"""One rate budget for every run on an endpoint: the leasing limiter on a fake clock against
:class:`MemoryBudget`, the SQL's buckets in memory (the SQL itself on Postgres:
test_shared_budget_in_postgres.py; between processes: test_shared_budget_across_processes.py)."""

from __future__ import annotations

import asyncio
import random

import pytest

from budget_helpers import MemoryBudget, run
from fake_clock import FakeTime
from fake_provider import RateLimiter as ProviderBuckets
from vectorfill.errors import BudgetUnavailable, ConfigError
from vectorfill.provider.budgets import endpoint_key
from vectorfill.provider.ratelimit import RateLimiter
from vectorfill.storage.budgets import PostgresBudget

# --------------------------------------------------------------------------- in memory, fake clock


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


def test_an_unreachable_database_is_a_transient_budget_error_without_the_password(tmp_path):
    url = f"postgresql://vf:hunter2@/nodb?host={tmp_path}"  # no server on this socket
    b = PostgresBudget(url, "http://x/v1 m", job="docs")
    with pytest.raises(BudgetUnavailable) as info:
        run(b.lease(None, 1_000, 0, 1))
    assert info.value.transient
    assert "hunter2" not in str(info.value) and "docs" in str(info.value)


# --------------------------------------------------------------------------- between processes


# --------------------------------------------------------------------------- the flow


def test_a_job_cannot_be_named_like_the_budgets_table():
    from vectorfill.config import validate_job_name

    with pytest.raises(ConfigError, match="reserved"):
        validate_job_name("budgets")
