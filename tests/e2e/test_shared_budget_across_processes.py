"""One rate budget for every run on an endpoint, between processes: two processes given the
whole budget stay within it together, and a killed holder blocks nobody. The bounds are
ones a loaded machine can only make easier to meet (a slow process spends less, never more)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time

import pytest

from budget_helpers import budget_row, run
from vectorfill.provider.ratelimit import RateLimiter
from vectorfill.storage.budgets import PostgresBudget

# --------------------------------------------------------------------------- in memory, fake clock


# --------------------------------------------------------------------------- endpoint names


# --------------------------------------------------------------------------- Postgres


@pytest.fixture
def db(migrated_db):
    return migrated_db


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
