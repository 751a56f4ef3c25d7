"""The client-side rate limiter keeps a real rate-limited provider (the fake, on loopback)
near its budget without a 429, in real time (the limiter on a fake clock: test_ratelimit.py)."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from fake_clock import FakeTime
from fake_provider import FakeProvider
from vectorfill.errors import TransientProviderError
from vectorfill.provider.ratelimit import Concurrency, RateLimiter, Throttle


def limiter(rpm=None, tpm=None, **kw) -> tuple[RateLimiter, FakeTime]:
    t = FakeTime()
    return RateLimiter(rpm, tpm, clock=t.clock, sleep=t.sleep, **kw), t


def run(coro):
    return asyncio.run(coro)


# --------------------------------------------------------------------------- durations


# --------------------------------------------------------------------------- bucket math


# --------------------------------------------------------------------------- settling


# --------------------------------------------------------------------------- 429s


# --------------------------------------------------------------------------- against the provider's buckets


# --------------------------------------------------------------------------- concurrency


# --------------------------------------------------------------------------- throttle


def throttle(rpm=None, tpm=None, initial=4, **kw) -> tuple[Throttle, FakeTime]:
    t = FakeTime()
    rl = RateLimiter(rpm, tpm, clock=t.clock, sleep=t.sleep)
    return Throttle(rl, Concurrency(initial, max_limit=8, clock=t.clock), **kw), t


def rate_limited(retry_after=2.0):
    return TransientProviderError("429", status=429, code="rate_limit_exceeded", retry_after=retry_after)


# --------------------------------------------------------------------------- integration


@pytest.mark.slow
def test_the_limiter_keeps_a_real_rate_limited_provider_near_its_budget_without_429s():
    """Five seconds against the fake provider enforcing RPM 120 / TPM 20,000 (buckets full at
    start), requests of ~200 tokens: the limiter spends the stored minute (~100 requests,
    close to the RPM too) and then the refill, with no 429."""
    from vectorfill.provider.client import EmbeddingsClient
    from vectorfill.provider.tokens import Cl100k

    counter = Cl100k()
    rng = random.Random(5)
    words = ["budget", "harbour", "weather", "schools", "council", "survey", "bridge", "winter", "market", "roof"]
    texts = [" ".join(rng.choice(words) for _ in range(100)) for _ in range(400)]
    counts = counter.count(texts)
    batches = [(texts[i : i + 2], sum(counts[i : i + 2])) for i in range(0, len(texts), 2)]
    seconds = 5.0

    class Stop(Exception):
        pass

    async def go(base_url: str):
        th = Throttle(RateLimiter(120, 20_000, job="it"), Concurrency(2, max_limit=6))
        sent = billed = 0
        queue = iter(batches)
        deadline = time.monotonic() + seconds

        async def lane(client):
            nonlocal sent, billed
            for chunk, estimate in queue:

                async def request(chunk=chunk):
                    nonlocal sent
                    if time.monotonic() > deadline:
                        raise Stop
                    sent += 1
                    return await client.embed(chunk)

                try:
                    result = await th.send(estimate, request)
                except Stop:
                    return
                billed += result.prompt_tokens

        async with EmbeddingsClient(base_url=base_url, model="fake-embed", dimensions=8) as client:
            started = time.monotonic()
            lanes = [asyncio.ensure_future(lane(client)) for _ in range(6)]
            _, waiting = await asyncio.wait(lanes, timeout=seconds + 0.2)
            for task in waiting:  # still queued for budget: nothing sent, nothing charged
                task.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
            return sent, billed, time.monotonic() - started, th.limiter

    with FakeProvider(dimensions=8, rpm=120, tpm=20_000) as provider:
        sent, billed, elapsed, rl = asyncio.run(go(provider.base_url))
        refused = provider.rate_limited
        assert provider.requests == sent

    most = 20_000 + 20_000 / 60 * elapsed  # the full bucket plus its refill
    assert refused <= 1, f"{refused} of {sent} requests got a 429"
    assert billed <= most
    assert billed >= 0.85 * most, f"used {billed} of {most:.0f} tokens"  # ~95% seen
    assert rl.stats().tokens_corrected <= 0  # cl100k on both sides: estimates are exact
