"""The client-side rate limiter keeps requests inside the endpoint's budgets, in step with the
provider's headers, and the concurrency controller adapts how many are in flight.

Every test but the last runs on a fake clock: ``sleep`` moves it forward instead of waiting.
"""

from __future__ import annotations

import asyncio
import random

import pytest

import vectorfill.provider.ratelimit
from fake_clock import FakeTime
from fake_provider import RateLimiter as ProviderBuckets
from fake_provider import format_duration
from vectorfill.errors import ConfigError, QuotaExceeded, TransientProviderError, stops_run
from vectorfill.provider.ratelimit import Concurrency, RateLimiter, Throttle, parse_duration


def limiter(rpm=None, tpm=None, **kw) -> tuple[RateLimiter, FakeTime]:
    t = FakeTime()
    return RateLimiter(rpm, tpm, clock=t.clock, sleep=t.sleep, **kw), t


def run(coro):
    return asyncio.run(coro)


def test_public_api_is_what_the_module_says():
    assert sorted(vectorfill.provider.ratelimit.__all__) == sorted(
        [
            "RateLimiter",
            "Permit",
            "LimiterStats",
            "SharedBudget",
            "Grant",
            "Concurrency",
            "Slot",
            "Throttle",
            "parse_duration",
        ]
    )


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("6m0s", 360.0),
        ("1s", 1.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0.5", 0.5),
        ("0s", 0.0),
        ("17", 17.0),
        ("1.25s", 1.25),
        ("250us", 0.00025),
        (" 2m ", 120.0),
    ],
)
def test_parse_duration_reads_rate_limit_header_formats(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "abc", "5x", "1m 2s", "-1", "1s2", "m5", "nan", "inf"])
def test_parse_duration_rejects_what_is_not_a_duration(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("seconds", [0.0, 0.001, 0.02, 0.5, 1.0, 59.999, 60.0, 361.25, 3723.5])
def test_parse_duration_reads_what_the_fake_provider_writes(seconds):
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=0.001)


# --------------------------------------------------------------------------- bucket math


def test_a_full_minute_of_tokens_goes_at_once_then_refills_at_limit_over_60():
    rl, t = limiter(tpm=600)

    async def go():
        first = [await rl.acquire(100) for _ in range(6)]
        seventh = await rl.acquire(100)
        eighth = await rl.acquire(50)
        return first, seventh, eighth

    first, seventh, eighth = run(go())
    assert [p.waited for p in first] == [0.0] * 6
    assert seventh.waited == pytest.approx(10.0)  # 100 tokens at 10 tokens/s
    assert eighth.waited == pytest.approx(5.0)
    assert t.now == pytest.approx(115.0)


def test_the_wait_is_the_longer_of_the_two_budgets():
    rl, _t = limiter(rpm=60, tpm=6_000)  # 1 request/s, 100 tokens/s

    async def go():
        for _ in range(50):
            await rl.acquire(100)  # 5,000 tokens and 50 requests: both fit
        a = await rl.acquire(1_000)  # 1,000 tokens fit? 1,000 left: yes
        b = await rl.acquire(10)  # 60 requests used: 51st..60th are free, then tokens bind
        return a, b

    a, b = run(go())
    assert a.waited == 0.0
    assert b.waited == pytest.approx(0.1)  # 10 tokens at 100/s; a request is still free

    rl, _t = limiter(rpm=60, tpm=600_000)

    async def requests_bind():
        for _ in range(60):
            await rl.acquire(1)
        return await rl.acquire(1)

    assert run(requests_bind()).waited == pytest.approx(1.0)


def test_acquirers_are_served_first_come_first_served():
    rl, t = limiter(tpm=600)
    order: list[str] = []

    async def one(name: str, tokens: int):
        await rl.acquire(tokens)
        order.append(name)

    async def go():
        await rl.acquire(600)  # drain
        await asyncio.gather(one("big", 500), one("small-1", 10), one("small-2", 10))

    run(go())
    assert order == ["big", "small-1", "small-2"]
    assert t.now == pytest.approx(100.0 + 52.0)  # 520 tokens at 10/s, nobody overtook


def test_no_budget_means_no_waiting():
    rl, t = limiter()

    async def go():
        return [await rl.acquire(10**9) for _ in range(100)]

    assert all(p.waited == 0 for p in run(go()))
    assert t.slept == []
    assert (rl.rpm, rl.tpm) == (None, None)


def test_a_cancelled_acquire_charges_nothing():
    rl, _t = limiter(tpm=600)

    async def go():
        await rl.acquire(600)
        waiter = asyncio.ensure_future(rl.acquire(300))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        return rl.available()

    requests, tokens = run(go())
    assert requests is None
    assert tokens == 0 and rl.stats().acquired == 1


def test_a_request_larger_than_the_whole_tpm_is_a_config_error_naming_the_setting():
    rl, _ = limiter(tpm=10_000, job="docs")
    with pytest.raises(ConfigError) as info:
        run(rl.acquire(10_001))
    message = str(info.value)
    assert message.startswith("job 'docs': ")
    assert "10,001 tokens" in message and "10,000 tokens per minute" in message
    assert "max_request_tokens" in message
    assert stops_run(info.value)
    run(rl.acquire(10_000))  # exactly the budget is allowed: it waits for a full bucket


def test_negative_budgets_are_refused():
    with pytest.raises(ConfigError):
        RateLimiter(-1, None)


# --------------------------------------------------------------------------- settling


def test_settle_gives_back_an_over_estimate_and_charges_an_under_estimate():
    rl, _t = limiter(tpm=6_000)  # 100 tokens/s

    async def go():
        p = await rl.acquire(6_000)
        p.settle(5_000)  # billed less than estimated: 1,000 back
        assert rl.available()[1] == pytest.approx(1_000)
        q = await rl.acquire(1_000)
        q.settle(1_500)  # billed more: 500 owed
        assert rl.available()[1] == pytest.approx(-500)
        r = await rl.acquire(100)
        return r

    r = run(go())
    assert r.waited == pytest.approx(6.0)  # 600 tokens at 100/s
    assert rl.stats().tokens_corrected == -500


def test_settle_never_fills_a_bucket_past_its_capacity():
    rl, _ = limiter(tpm=6_000)

    async def go():
        p = await rl.acquire(100)
        p.settle(0)

    run(go())
    assert rl.available()[1] == 6_000


def test_settle_twice_counts_once():
    rl, _ = limiter(tpm=6_000)

    async def go():
        p = await rl.acquire(1_000)
        p.settle(500)
        p.settle(0)

    run(go())
    assert rl.available()[1] == 5_500


def test_headers_lower_the_budget_when_the_provider_has_less():
    rl, _t = limiter(rpm=600, tpm=60_000)

    async def go():
        p = await rl.acquire(1_000)
        p.settle(
            1_000,
            {
                "x-ratelimit-remaining-tokens": "2000",
                "x-ratelimit-remaining-requests": "10",
                "x-ratelimit-reset-tokens": "58s",
            },
        )
        return await rl.acquire(3_000)

    q = run(go())
    assert q.waited == pytest.approx(1.0)  # 1,000 tokens short at 1,000/s
    assert rl.stats().synced == 2


def test_headers_never_raise_the_budget():
    rl, _ = limiter(tpm=60_000)

    async def go():
        await rl.acquire(50_000)
        p = await rl.acquire(5_000)
        p.settle(5_000, {"X-RateLimit-Remaining-Tokens": "59000", "x-ratelimit-limit-tokens": "90000"})

    run(go())
    assert rl.available()[1] == pytest.approx(5_000)
    assert rl.tpm == 60_000  # a higher announced limit does not raise the configured one
    assert rl.stats().synced == 0


def test_headers_count_the_requests_sent_after_the_one_they_answer():
    rl, _ = limiter(tpm=60_000)

    async def go():
        first = await rl.acquire(1_000)
        await rl.acquire(2_000)  # still in flight: not in the provider's count yet
        await rl.acquire(3_000)
        first.settle(1_000, {"x-ratelimit-remaining-tokens": "10000"})

    run(go())
    assert rl.available()[1] == pytest.approx(10_000 - 2_000 - 3_000)


def test_the_reset_header_is_used_when_remaining_is_missing():
    rl, _ = limiter(tpm=60_000)  # 1,000 tokens/s

    async def go():
        p = await rl.acquire(1)
        p.settle(1, {"x-ratelimit-reset-tokens": "20s"})  # full in 20 s: 40,000 now

    run(go())
    assert rl.available()[1] == pytest.approx(40_000)

    rl, _ = limiter(tpm=60_000)

    async def longer_window():
        p = await rl.acquire(1)
        p.settle(1, {"x-ratelimit-reset-tokens": "6m0s"})  # a longer window's reset: ignored

    run(longer_window())
    assert rl.available()[1] == pytest.approx(59_999)


def test_malformed_headers_are_ignored():
    rl, _ = limiter(tpm=60_000)

    async def go():
        p = await rl.acquire(1_000)
        p.settle(
            1_000,
            {
                "x-ratelimit-remaining-tokens": "lots",
                "x-ratelimit-reset-tokens": "soon",
                "x-ratelimit-limit-tokens": "-5",
            },
        )

    run(go())
    assert rl.available()[1] == pytest.approx(59_000) and rl.tpm == 60_000


def test_an_announced_limit_becomes_the_budget_when_none_or_a_higher_one_is_set():
    rl, _t = limiter()

    async def go():
        p = await rl.acquire(100)
        p.settle(
            100,
            {
                "x-ratelimit-limit-tokens": "6000",
                "x-ratelimit-remaining-tokens": "5900",
                "x-ratelimit-limit-requests": "60",
                "x-ratelimit-remaining-requests": "59",
            },
        )
        return await rl.acquire(6_000)

    q = run(go())
    assert (rl.rpm, rl.tpm) == (60, 6_000)
    assert q.waited == pytest.approx(1.0)  # 100 tokens short at 100/s

    rl, _ = limiter(tpm=100_000, learn_limits=True)

    async def lower():
        p = await rl.acquire(100)
        p.settle(100, {"x-ratelimit-limit-tokens": "6000"})

    run(lower())
    assert rl.tpm == 6_000 and rl.available()[1] == pytest.approx(6_000)

    rl, _ = limiter(learn_limits=False)

    async def ignored():
        p = await rl.acquire(100)
        p.settle(100, {"x-ratelimit-limit-tokens": "6000"})

    run(ignored())
    assert rl.tpm is None


# --------------------------------------------------------------------------- 429s


def test_a_429_pauses_every_acquirer_until_retry_after():
    rl, t = limiter(rpm=6_000, tpm=6_000_000)
    done: dict[str, float] = {}

    async def one(name: str):
        p = await rl.acquire(10)
        done[name] = t.now
        return p

    async def go():
        assert rl.on_429(2.5) == 2.5
        return await asyncio.gather(*(one(f"lane-{i}") for i in range(4)))

    permits = run(go())
    assert sorted(done.values()) == [pytest.approx(102.5)] * 4
    assert [p.waited for p in permits] == [pytest.approx(2.5)] * 4
    assert t.slept == [pytest.approx(2.5)]  # one shared pause, not one per lane
    assert rl.stats().throttled == 1


def test_a_longer_429_extends_the_pause_and_a_shorter_one_does_not_shorten_it():
    rl, _t = limiter(tpm=6_000)
    rl.on_429(5.0)
    rl.on_429(1.0)
    assert run(rl.acquire(1)).waited == pytest.approx(5.0)


def test_a_429_without_retry_after_pauses_a_second_and_long_ones_are_capped():
    rl, _t = limiter(tpm=6_000, max_pause_s=30.0)
    assert rl.on_429(None) == 1.0
    assert rl.on_429(3_600.0) == 30.0
    assert run(rl.acquire(1)).waited == pytest.approx(30.0)


# --------------------------------------------------------------------------- against the provider's buckets


@pytest.mark.parametrize("configured", [20_000, 40_000])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_requests_the_limiter_admits_are_never_refused_by_openai_style_buckets(seed, configured):
    """Our buckets and the fake provider's on one clock, requests reaching the provider after
    a random delay: the provider refuses none, and the budget is used. Configured at twice
    the provider's TPM, the limiter follows the provider's ``x-ratelimit-limit-tokens``."""
    rng = random.Random(seed)
    t = FakeTime(start=0.0)
    provider = ProviderBuckets(rpm=300, tpm=20_000, model="m", clock=t.clock)
    rl = RateLimiter(300, configured, clock=t.clock, sleep=t.sleep)
    refused = 0
    billed = 0

    async def lane():
        nonlocal refused, billed
        for _ in range(30):
            tokens = rng.randint(50, 2_000)
            permit = await rl.acquire(tokens)
            await t.sleep(rng.uniform(0.0, 0.3))  # on the wire
            admission = provider.admit(tokens)
            await t.sleep(rng.uniform(0.0, 0.3))  # answering
            if admission.refused:
                refused += 1
                permit.settle()
            else:
                billed += tokens
                permit.settle(tokens, admission.headers)

    async def go():
        await asyncio.gather(*(lane() for _ in range(4)))

    run(go())
    assert refused == 0
    most = 20_000 + t.now * 20_000 / 60
    assert billed > 0.95 * most
    assert rl.tpm == 20_000


# --------------------------------------------------------------------------- concurrency


def conc(initial=2, **kw) -> tuple[Concurrency, FakeTime]:
    t = FakeTime()
    return Concurrency(initial, clock=t.clock, **kw), t


def test_concurrency_holds_requests_beyond_the_limit_in_order():
    c, _t = conc(2, max_limit=8)
    started: list[int] = []

    async def one(i: int, gate: asyncio.Event):
        async with c.slot():
            started.append(i)
            await gate.wait()

    async def go():
        gate = asyncio.Event()
        tasks = [asyncio.ensure_future(one(i, gate)) for i in range(5)]
        for _ in range(5):
            await asyncio.sleep(0)
        assert started == [0, 1] and c.in_flight == 2 and c.waiting == 3
        gate.set()
        await asyncio.gather(*tasks)

    run(go())
    assert started == [0, 1, 2, 3, 4]
    assert c.in_flight == 0 and c.peak == 2


def test_concurrency_grows_when_budget_was_spare_and_others_waited():
    c, t = conc(2, max_limit=4)

    async def go():
        gate = asyncio.Event()

        async def one(i):
            async with c.slot() as slot:
                await gate.wait()
                await t.sleep(0.5)  # latency
                slot.succeeded(waited=0.0)

        tasks = [asyncio.ensure_future(one(i)) for i in range(12)]
        for _ in range(3):
            await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(*tasks)

    run(go())
    assert c.limit == 4  # grew to the maximum, and no further
    assert c.peak >= 3


def test_concurrency_does_not_grow_when_the_budget_made_requests_wait():
    c, t = conc(2, max_limit=16)

    async def go():
        async def one():
            async with c.slot() as slot:
                await t.sleep(0.5)
                slot.succeeded(waited=0.2)  # the rate limiter, not the slots, held it back

        await asyncio.gather(*(one() for _ in range(20)))

    run(go())
    assert c.limit == 2


def test_concurrency_does_not_grow_without_waiters():
    c, t = conc(2, max_limit=16)

    async def go():
        for _ in range(20):
            async with c.slot() as slot:
                await t.sleep(0.5)
                slot.succeeded(waited=0.0)

    run(go())
    assert c.limit == 2


def test_concurrency_halves_after_a_429_once_per_round():
    c, t = conc(16, min_limit=2, max_limit=16)

    async def go():
        slots = []
        for _ in range(4):  # four requests in flight together all get a 429
            s = c.slot()
            await s.__aenter__()
            slots.append(s)
        await t.sleep(1.0)
        for s in slots:
            s.throttled()
            await s.__aexit__(None, None, None)
        assert c.limit == 8  # one cut for the whole round
        async with c.slot() as s:  # sent after the cut: new evidence
            s.throttled()
        assert c.limit == 4
        for _ in range(3):
            async with c.slot() as s:
                s.throttled()
        assert c.limit == 2  # never below min_limit

    run(go())


def test_a_cancelled_waiter_does_not_keep_a_slot():
    c, _t = conc(1, max_limit=1)

    async def go():
        gate = asyncio.Event()

        async def holder():
            async with c.slot():
                await gate.wait()

        h = asyncio.ensure_future(holder())
        await asyncio.sleep(0)
        w = asyncio.ensure_future(c.slot().__aenter__())
        await asyncio.sleep(0)
        w.cancel()
        await asyncio.sleep(0)
        gate.set()
        await h
        assert c.in_flight == 0 and c.waiting == 0
        async with c.slot():
            assert c.in_flight == 1

    run(go())


def test_mean_in_flight_is_time_weighted():
    c, t = conc(4, max_limit=4)

    async def go():
        async def one(seconds):
            async with c.slot():
                await t.sleep(seconds)

        await one(1.0)  # one in flight for 1 s
        await asyncio.gather(one(1.0), one(1.0))  # two for 1 s (the fake clock moves once)

    run(go())
    assert c.mean_in_flight() == pytest.approx(1.5)


def test_concurrency_bounds_are_checked():
    with pytest.raises(ConfigError):
        Concurrency(4, min_limit=0)
    with pytest.raises(ConfigError):
        Concurrency(4, min_limit=8, max_limit=4)
    assert Concurrency(100, max_limit=8).limit == 8


# --------------------------------------------------------------------------- throttle


class Answer:
    def __init__(self, prompt_tokens=None, headers=None) -> None:
        self.prompt_tokens = prompt_tokens
        self.headers = headers or {}


def throttle(rpm=None, tpm=None, initial=4, **kw) -> tuple[Throttle, FakeTime]:
    t = FakeTime()
    rl = RateLimiter(rpm, tpm, clock=t.clock, sleep=t.sleep)
    return Throttle(rl, Concurrency(initial, max_limit=8, clock=t.clock), **kw), t


def scripted(*outcomes):
    """A request that raises or returns each outcome in turn, counting its calls."""
    calls = []

    async def request():
        outcome = outcomes[len(calls)]
        calls.append(outcome)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return request, calls


def rate_limited(retry_after=2.0):
    return TransientProviderError("429", status=429, code="rate_limit_exceeded", retry_after=retry_after)


def test_throttle_settles_with_the_billed_tokens_and_the_headers():
    th, _t = throttle(tpm=60_000)
    request, calls = scripted(Answer(800, {"x-ratelimit-remaining-tokens": "50000"}))
    result = run(th.send(1_000, request))
    assert result.prompt_tokens == 800 and len(calls) == 1
    assert th.limiter.available()[1] == pytest.approx(50_000)
    assert th.limiter.stats().tokens_corrected == -200
    assert th.slots.in_flight == 0


def test_throttle_retries_a_429_after_a_pause_shared_with_every_request():
    th, t = throttle(tpm=60_000, initial=8)
    request, calls = scripted(rate_limited(2.0), Answer(100))

    async def go():
        retried = asyncio.ensure_future(th.send(100, request))
        await asyncio.sleep(0)  # its first attempt is refused; the retry waits out the pause
        other = await th.limiter.acquire(1)  # another lane's request
        return await retried, other

    result, other = run(go())
    assert result.prompt_tokens == 100 and len(calls) == 2
    assert other.waited == pytest.approx(2.0)
    assert t.now == pytest.approx(102.0)
    assert th.limiter.stats().throttled == 1
    assert th.slots.limit == 4  # halved


def test_throttle_gives_up_after_max_429_retries():
    th, _t = throttle(tpm=60_000, max_429_retries=2)
    request, calls = scripted(rate_limited(), rate_limited(), rate_limited(), Answer(1))
    with pytest.raises(TransientProviderError):
        run(th.send(10, request))
    assert len(calls) == 3
    assert th.slots.in_flight == 0


def test_throttle_raises_other_errors_at_once_keeping_the_charge():
    th, _t = throttle(tpm=60_000)
    request, calls = scripted(TransientProviderError("503", status=503, retry_after=5.0))
    with pytest.raises(TransientProviderError):
        run(th.send(1_000, request))
    quota = QuotaExceeded("out of credit", status=429, code="insufficient_quota")
    request, calls = scripted(quota)
    with pytest.raises(QuotaExceeded):
        run(th.send(1_000, request))
    assert len(calls) == 1
    assert th.limiter.stats().throttled == 0  # neither paused the endpoint
    assert th.limiter.available()[1] == pytest.approx(58_000)  # failed requests count
    assert th.slots.in_flight == 0


# --------------------------------------------------------------------------- integration
