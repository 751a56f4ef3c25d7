"""Rate limiting: how much of an endpoint's budget does vectorfill use, and how often is it refused?

The fake provider (``tests/fake_provider.py``, its own process) enforces OpenAI-style
budgets, by default RPM 3,000 and TPM 1,000,000: token buckets whose capacity is the
per-minute limit, refilling continuously, full at start; a request that does not fit gets
a 429 with ``retry-after``/``retry-after-ms``. It is driven by
:class:`vectorfill.provider.client.EmbeddingsClient` with ``--batch`` texts of ~``--text-tokens``
cl100k tokens per request, so that TPM, not RPM, is the binding limit, in two variants:

* **limiter**: :class:`vectorfill.provider.ratelimit.RateLimiter` (tokens counted before sending
  with :mod:`vectorfill.provider.tokens`, corrected from ``usage``, synced to ``x-ratelimit-*``)
  and :class:`vectorfill.provider.ratelimit.Concurrency` (``--initial`` slots, at most ``--lanes``);
* **baseline**: ``--lanes`` requests always in flight, each 429 retried after its
  ``retry-after-ms`` (what a plain retrying client does).

Each variant meets a freshly started provider, so its buckets start full: the first
seconds spend that stored minute of budget as fast as the provider answers. Rates are
therefore reported over the **steady window**, from ``--settle`` seconds after the first
response whose ``x-ratelimit-remaining-tokens`` is below 10% of TPM, to the end; the
provider's remaining tokens at both ends of the window are printed so that one can see
the bucket stayed drained (tokens left in the bucket are budget not used). The whole run
is also compared with the most the provider could have admitted, ``TPM + TPM/60 *
seconds``.

The limiter run uses the **shared budget** (:class:`vectorfill.provider.budgets.PostgresBudget`,
leased from ``vectorfill.budgets`` as a backfill run with ``tpm`` set does) unless
``--local``; ``--local-seconds`` adds a run of the local-only limiter for comparison.

``--runs N`` adds phases with N processes on one provider, each configured with the whole
budget: sharing it through Postgres, then (the old behaviour, unless ``--runs-local-seconds
0``) each with a limiter of its own, seeing the others only in the provider's headers.

The shared budget lives in the database given by ``--db`` or ``VECTORFILL_DATABASE_URL``,
else the embedded Postgres (started if needed; ``VECTORFILL_HOME`` chooses where). Each
phase meets a new provider on a new port, hence a new endpoint row, full at start like
the provider's buckets. The cost of one lease (a round trip to that database, median,
mean and tail) is measured too, alone and with 16 concurrent leasers on one row.

``--prefect`` measures what Prefect global concurrency limits would cost as the shared
budget: the time of one ``rate_limit(name, occupy=n, strict=True)`` and of one
``concurrency(name, occupy=n)`` enter+exit against Prefect's temporary server (started by
running a flow after :func:`vectorfill.orchestration.runtime.prefect_defaults`, with ``PREFECT_HOME`` in
a temporary directory unless ``PREFECT_API_URL`` is set), the acquire rate with 16
concurrent acquirers, and how closely a drained rate limit paces acquirers to its decay
rate, in small steps and in chunks of 1/20 of TPM.

Usage::

    python bench/bench_ratelimit.py                          # ~2.5 minutes
    python bench/bench_ratelimit.py --seconds 60 --baseline-seconds 0
    python bench/bench_ratelimit.py --seconds 0 --baseline-seconds 0 --runs 2   # ~2 minutes
    python bench/bench_ratelimit.py --seconds 0 --baseline-seconds 0 --prefect  # ~1.5 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = "fake-embed"  # counted with cl100k on both sides, like OpenAI's embedding models

# --------------------------------------------------------------------------- texts

_WORDS = [
    "the",
    "committee",
    "reviewed",
    "annual",
    "budget",
    "report",
    "harbour",
    "weather",
    "transport",
    "schools",
    "health",
    "housing",
    "farming",
    "culture",
    "energy",
    "water",
    "tourism",
    "markets",
    "library",
    "roads",
    "parks",
    "council",
    "meeting",
    "announced",
    "described",
    "improved",
    "recorded",
    "planned",
    "delayed",
    "explained",
    "measured",
    "compared",
    "repaired",
    "published",
    "discussed",
    "tested",
    "shared",
    "organised",
    "studied",
    "morning",
    "schedule",
    "rules",
    "supply",
    "survey",
    "bread",
    "bridge",
    "lectures",
    "safety",
    "festival",
    "roof",
    "valley",
    "heating",
    "hours",
    "photographs",
    "traffic",
    "harvest",
    "letter",
    "volunteers",
    "winter",
    "district",
    "crowd",
    "notice",
    "reasons",
    "detail",
    "weeks",
    "region",
    "office",
    "service",
]


def make_texts(n: int, tokens: int, seed: int = 7) -> tuple[list[str], list[int]]:
    """``n`` deterministic texts of about ``tokens`` cl100k tokens, and their exact counts."""
    from vectorfill.provider.tokens import Cl100k

    counter = Cl100k()
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        words = [f"Note {i}:"] + [rng.choice(_WORDS) for _ in range(int(tokens * 0.98))]
        texts.append(" ".join(words) + ".")
    return texts, counter.count(texts)


# --------------------------------------------------------------------------- the provider


from _provider import FakeProvider as Provider

# --------------------------------------------------------------------------- one run


@dataclass
class Run:
    name: str
    seconds: float  # planned: nothing is sent after it
    elapsed: float = 0.0  # until the last answer
    sent: int = 0
    refused: int = 0
    done: list[tuple[float, int]] = field(default_factory=list)  # (time, billed tokens) per 200
    remaining: list[tuple[float, int]] = field(default_factory=list)  # x-ratelimit-remaining-tokens
    area: float = 0.0  # integral of requests in flight over time
    in_flight: int = 0
    mark: float = 0.0
    limit_samples: list[int] = field(default_factory=list)
    limiter_stats: object = None
    refused_at: list[float] = field(default_factory=list)  # times of the 429s

    def flight(self, now: float, delta: int) -> None:
        self.area += self.in_flight * (now - self.mark)
        self.mark = now
        self.in_flight += delta


class _Stop(Exception):
    """The run's time is up (raised instead of sending)."""


async def drive(
    base_url: str,
    texts,
    counts,
    args,
    seconds: float,
    limited: bool,
    *,
    share: float = 1.0,
    offset: int = 0,
    shared_db: str | None = None,
    start_at: float | None = None,
) -> Run:
    """One client on the provider for ``seconds``; its limiter leases from ``shared_db``
    when given; ``start_at`` (time.monotonic(), one clock for every process on Linux) lines
    up several processes."""
    from vectorfill.errors import TransientProviderError
    from vectorfill.provider.budgets import endpoint_key
    from vectorfill.provider.client import EmbeddingsClient
    from vectorfill.provider.ratelimit import Concurrency, RateLimiter, Throttle
    from vectorfill.storage.budgets import PostgresBudget

    run = Run("limiter" if limited else "baseline", seconds)
    batches = [
        (texts[i : i + args.batch], sum(counts[i : i + args.batch]))
        for i in range(0, len(texts) - args.batch + 1, args.batch)
    ]
    throttle = None
    if limited:
        shared = PostgresBudget(shared_db, endpoint_key(base_url, MODEL)) if shared_db else None
        throttle = Throttle(
            RateLimiter(int(args.rpm * share), int(args.tpm * share), job="bench", shared=shared),
            Concurrency(args.initial, max_limit=args.lanes),
            max_429_retries=10**6,
        )
    if start_at is not None:
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    start = time.monotonic()
    run.mark = start
    deadline = start + seconds
    queue = iter(range(offset, 10**9))

    async with EmbeddingsClient(
        base_url=base_url, model=MODEL, dimensions=args.dimensions, max_connections=args.lanes * 2
    ) as client:

        async def once(chunk):
            """One request, counted; raises _Stop instead once the time is up."""
            if time.monotonic() >= deadline:
                raise _Stop
            run.sent += 1
            run.flight(time.monotonic(), +1)
            try:
                result = await client.embed(chunk)
            except TransientProviderError as exc:
                if exc.status == 429:
                    run.refused += 1
                    run.refused_at.append(time.monotonic() - start)
                raise
            finally:
                run.flight(time.monotonic(), -1)
            now = time.monotonic()
            run.done.append((now - start, result.prompt_tokens or 0))
            left = result.headers.get("x-ratelimit-remaining-tokens")
            if left is not None:
                run.remaining.append((now - start, int(left)))
            return result

        async def lane() -> None:
            while True:
                chunk, estimate = batches[next(queue) % len(batches)]
                try:
                    if throttle is not None:
                        # waits for budget, pauses every lane after a 429 and retries through it
                        await throttle.send(estimate, functools.partial(once, chunk))
                        continue
                    while True:  # the baseline: send; after a 429 wait as told, then resend
                        try:
                            await once(chunk)
                            break
                        except TransientProviderError as exc:
                            if exc.status != 429:
                                raise
                            await asyncio.sleep(exc.retry_after or 1.0)
                except _Stop:
                    return

        async def sample() -> None:
            while time.monotonic() < deadline:
                if throttle is not None:
                    run.limit_samples.append(throttle.slots.limit)
                await asyncio.sleep(0.25)

        lanes = [asyncio.ensure_future(lane()) for _ in range(args.lanes)]
        await sample()
        # requests in flight at the deadline may finish; lanes still queued for budget are cancelled
        _, queued = await asyncio.wait(lanes, timeout=2 * args.latency_ms / 1000 + 0.5)
        for task in queued:
            task.cancel()
        await asyncio.gather(*lanes, return_exceptions=True)
        if throttle is not None:
            await throttle.aclose()  # gives back the unspent lease
    end = time.monotonic()
    run.flight(end, 0)
    run.elapsed = end - start
    run.limiter_stats = throttle.limiter.stats() if throttle else None
    return run


def merge(name: str, runs: list[Run]) -> Run:
    """Several clients on one provider (as several processes would be), as one run."""
    if len(runs) == 1:
        return runs[0]
    out = Run(name, max(r.seconds for r in runs), max(r.elapsed for r in runs))
    for r in runs:
        out.sent += r.sent
        out.refused += r.refused
        out.done += r.done
        out.remaining += r.remaining
        out.area += r.area
        out.limit_samples += r.limit_samples
        out.refused_at += r.refused_at
    out.refused_at.sort()
    out.done.sort()
    out.remaining.sort()
    return out


def summarize(run: Run, args) -> dict:
    rate = args.tpm / 60.0
    tokens = sum(t for _, t in run.done)
    drained = next((t for t, left in run.remaining if left < 0.1 * args.tpm), None)
    if drained is not None:
        drained += args.settle
    out = dict(
        name=run.name,
        seconds=run.seconds,
        sent=run.sent,
        ok=len(run.done),
        refused=run.refused,
        refused_share=run.refused / run.sent if run.sent else 0.0,
        tokens=tokens,
        whole_share=tokens / (args.tpm + rate * run.seconds),
        mean_in_flight=run.area / run.elapsed if run.elapsed else 0.0,
        mean_limit=statistics.fmean(run.limit_samples) if run.limit_samples else None,
        drained_at=drained,
        refused_at=run.refused_at,
    )
    if drained is not None and run.seconds - drained > 5:
        window = run.seconds - drained
        in_window = [(t, n) for t, n in run.done if drained < t <= run.seconds]
        w_tokens = sum(n for _, n in in_window)
        left_start = next(left for t, left in run.remaining if t >= drained)
        left_end = [left for t, left in run.remaining if t <= run.seconds][-1]
        out.update(
            window=window,
            tpm_achieved=w_tokens / window * 60,
            rpm_achieved=len(in_window) / window * 60,
            left_start=left_start,
            left_end=left_end,
        )
    return out


def print_run(s: dict, args) -> None:
    print(f"\n== {s['name']}: {s['seconds']:.1f} s, {s['sent']:,} requests sent, {s['ok']:,} answered 200")
    when = ", ".join(f"{t:.1f}" for t in s["refused_at"][:8]) + (", ..." if len(s["refused_at"]) > 8 else "")
    print(
        f"   429s:                  {s['refused']:,} of {s['sent']:,} requests = {100 * s['refused_share']:.2f}%"
        + (f" (at t = {when} s)" if s["refused_at"] else "")
    )
    print(
        f"   whole run:             {s['tokens']:,} tokens = {100 * s['whole_share']:.1f}% of the most the "
        f"provider could admit (TPM + TPM/60 x {s['seconds']:.0f} s, bucket full at start)"
    )
    if "window" in s:
        print(
            f"   steady window:         {s['window']:.1f} s from t={s['drained_at']:.1f} s "
            f"(provider's remaining tokens {s['left_start']:,} at its start, {s['left_end']:,} at its end)"
        )
        print(
            f"   tokens/min / TPM:      {s['tpm_achieved']:,.0f} / {args.tpm:,} = "
            f"{100 * s['tpm_achieved'] / args.tpm:.1f}%"
        )
        print(
            f"   requests/min / RPM:    {s['rpm_achieved']:,.0f} / {args.rpm:,} = "
            f"{100 * s['rpm_achieved'] / args.rpm:.1f}%"
        )
    else:
        print("   steady window:         the bucket was never drained (run longer)")
    limit = f", mean concurrency limit {s['mean_limit']:.1f}" if s["mean_limit"] is not None else ""
    print(f"   mean requests in flight {s['mean_in_flight']:.2f}{limit}")


# --------------------------------------------------------------------------- Prefect GCL


def bench_prefect(args) -> None:
    """Cost of Prefect global concurrency limits as a shared budget (temporary server)."""
    tmp = None
    if not os.environ.get("PREFECT_API_URL"):
        tmp = tempfile.TemporaryDirectory(prefix="vectorfill-bench-prefect-")
        os.environ.setdefault("PREFECT_HOME", tmp.name)
    from vectorfill.orchestration.runtime import prefect_defaults

    prefect_defaults()
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.asyncio import concurrency, rate_limit

    @flow(name="vectorfill-bench-start", persist_result=False)
    async def start() -> None:
        return None

    @flow(name="vectorfill-bench-gcl", persist_result=False)
    async def measure() -> dict:
        suffix = f"{os.getpid()}-{int(time.time())}"
        names = {k: f"vf-bench-{k}-{suffix}" for k in ("free", "slots", "small", "chunks")}
        specs = {
            "free": dict(limit=10**9, slot_decay_per_second=10**9 / 60),  # never binds
            "slots": dict(limit=10**6),  # a plain concurrency limit
            "small": dict(limit=2_000, slot_decay_per_second=1_000.0),  # 60,000 per minute
            "chunks": dict(limit=args.tpm, slot_decay_per_second=args.tpm / 60),  # the bench's TPM
        }
        out: dict = {}
        async with get_client() as client:
            for key, spec in specs.items():
                await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=names[key], **spec))
            try:
                for _ in range(10):  # warm-up: connections, the acquisition service
                    await rate_limit(names["free"], occupy=100, strict=True)
                out["rl"] = []
                for _ in range(150):
                    t0 = time.perf_counter()
                    await rate_limit(names["free"], occupy=100, strict=True)
                    out["rl"].append(time.perf_counter() - t0)
                out["cc"] = []
                for _ in range(50):
                    t0 = time.perf_counter()
                    async with concurrency(names["slots"], occupy=100, strict=True):
                        pass
                    out["cc"].append(time.perf_counter() - t0)

                async def acquirer():
                    for _ in range(10):
                        await rate_limit(names["free"], occupy=100, strict=True)

                t0 = time.perf_counter()
                await asyncio.gather(*(acquirer() for _ in range(16)))
                out["parallel"] = 160 / (time.perf_counter() - t0)

                async def paced(name: str, capacity: int, occupy: int, rate: float, seconds: float) -> float:
                    await rate_limit(name, occupy=capacity, strict=True)  # drain it
                    got, t0 = 0, time.perf_counter()
                    while time.perf_counter() - t0 < seconds:
                        await rate_limit(name, occupy=occupy, strict=True)
                        got += occupy
                    return got / (time.perf_counter() - t0) / rate

                out["small"] = await paced(names["small"], 2_000, 100, 1_000.0, 6.0)
                chunk = args.tpm // 20
                out["chunk"] = chunk
                out["chunks"] = await paced(names["chunks"], args.tpm, chunk, args.tpm / 60, 15.0)
            finally:
                for name in names.values():
                    await client.delete_global_concurrency_limit_by_name(name)
        return out

    t0 = time.perf_counter()
    asyncio.run(start())
    started = time.perf_counter() - t0
    result = asyncio.run(measure())

    def dist(xs) -> str:
        q = statistics.quantiles(xs, n=100)
        slow = sum(1 for x in xs if x > 0.5)
        return (
            f"mean {1000 * statistics.fmean(xs):.1f} ms, p50 {1000 * q[49]:.1f}, p95 {1000 * q[94]:.1f}, "
            f"p99 {1000 * q[98]:.1f} ms; {slow} of {len(xs)} over 500 ms"
        )

    rl = result["rl"]
    print(f"\n== Prefect global concurrency limits (temporary server, started in {started:.1f} s)")
    print(f"   rate_limit(occupy=100, strict=True), budget free: {dist(rl)}")
    print(f"   concurrency(occupy=100) enter+exit:               {dist(result['cc'])}")
    print(f"   rate_limit with 16 concurrent acquirers:          {result['parallel']:.0f} acquires/s in all")
    print(
        f"   drained rate limit, acquirers paced at: {100 * result['small']:.1f}% of its decay "
        f"(1,000/s, occupy 100); {100 * result['chunks']:.1f}% ({args.tpm:,}/min, occupy {result['chunk']:,})"
    )
    mean, median = statistics.fmean(rl), statistics.median(rl)
    for latency in (0.3, 0.5, 1.0):
        print(
            f"   a {1000 * latency:.0f} ms request plus one rate_limit: "
            f"{100 * mean / (mean + latency):.1f}% of its time acquiring (mean), "
            f"{100 * median / (median + latency):.1f}% (median)"
        )
    if tmp is not None:
        tmp.cleanup()


# --------------------------------------------------------------------------- shared budget


def bench_database(args) -> str:
    """The database that holds the shared budget, migrated."""
    from vectorfill.database import resolve_database_url
    from vectorfill.storage.db import migrate

    url = resolve_database_url(args.db, announce=lambda m: print(f"({m})"))
    migrate(url)
    return url


def lease_cost(url: str) -> dict:
    """Seconds per lease: alone, on a budget that never binds, and with 16 leasers on one row."""
    from vectorfill.storage.budgets import PostgresBudget

    async def measure() -> dict:
        endpoint = f"bench-lease-cost-{os.getpid()}-{time.time_ns()} m"
        one = PostgresBudget(url, endpoint)
        for _ in range(20):  # warm-up: connection, row, prepared statement
            await one.lease(10**8, 10**10, 1, 1_000)
        alone = []
        for _ in range(500):
            t0 = time.perf_counter()
            await one.lease(10**8, 10**10, 1, 1_000)
            alone.append(time.perf_counter() - t0)
        await one.aclose()
        leasers = [PostgresBudget(url, endpoint) for _ in range(16)]
        for b in leasers:
            await b.lease(10**8, 10**10, 1, 1_000)
        contended: list[float] = []

        async def leaser(b):
            for _ in range(50):
                t0 = time.perf_counter()
                await b.lease(10**8, 10**10, 1, 1_000)
                contended.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(leaser(b) for b in leasers))
        rate = len(contended) / (time.perf_counter() - t0)
        for b in leasers:
            await b.aclose()
        return dict(alone=alone, contended=contended, rate=rate)

    return asyncio.run(measure())


def dist_ms(xs) -> str:
    q = statistics.quantiles(xs, n=100)
    return (
        f"median {1000 * statistics.median(xs):.2f} ms, mean {1000 * statistics.fmean(xs):.2f}, "
        f"p99 {1000 * q[98]:.2f}, max {1000 * max(xs):.1f} ms ({len(xs)} leases)"
    )


def run_child(spec: str) -> int:
    """``--child``: one client of a --runs phase, as its own process; writes its Run as JSON."""
    opts = json.loads(spec)
    args = argparse.Namespace(**opts["args"])
    texts, counts = make_texts(args.texts, args.text_tokens)
    run = asyncio.run(
        drive(
            opts["base_url"],
            texts,
            counts,
            args,
            opts["seconds"],
            True,
            share=opts["share"],
            offset=opts["offset"],
            shared_db=opts["shared_db"],
            start_at=opts["start_at"],
        )
    )
    out = dataclasses.asdict(run)
    Path(opts["out"]).write_text(json.dumps(out))
    return 0


def run_processes(provider: Provider, args, tmp: Path, n: int, seconds: float, shared_db: str | None, share: float):
    """``n`` processes, each a client with its own limiter, started together."""
    from vectorfill.provider.ratelimit import LimiterStats

    start_at = time.monotonic() + 8.0  # time to import and connect
    procs, outs = [], []
    for i in range(n):
        out = tmp / f"run-{time.time_ns()}-{i}.json"
        spec = dict(
            args=vars(args),
            base_url=f"{provider.url}/v1",
            seconds=seconds,
            share=share,
            offset=i * 7,
            shared_db=shared_db,
            start_at=start_at,
            out=str(out),
        )
        procs.append(subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], cwd=REPO))
        outs.append(out)
    runs = []
    for proc, out in zip(procs, outs, strict=False):
        if proc.wait(seconds + 120) != 0:
            raise SystemExit(f"a --runs process failed with exit code {proc.returncode}")
        data = json.loads(out.read_text())
        data["done"] = [tuple(x) for x in data["done"]]
        data["remaining"] = [tuple(x) for x in data["remaining"]]
        if data["limiter_stats"] is not None:
            data["limiter_stats"] = LimiterStats(**data["limiter_stats"])
        runs.append(Run(**data))
    return runs


def print_limiter(ls) -> None:
    print(
        f"   limiter:               {ls.acquired:,} permits, {ls.waited_s:,.1f} s waited in all, "
        f"{ls.throttled:,} 429s reported, {ls.synced:,} header syncs lowered a bucket, "
        f"{ls.tokens_corrected:+,} tokens corrected"
    )
    if ls.leases:
        print(
            f"   shared budget:         {ls.leases:,} leases, {1000 * ls.lease_s / ls.leases:.2f} ms each on "
            f"average; {ls.lease_waits:,} of {ls.acquired:,} permits waited for a lease (budget in hand "
            f"short), {ls.lease_wait_s:.2f} s of the {ls.waited_s:,.1f} s waited were lease round trips"
        )


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=80.0, help="length of the limiter run (0: skip)")
    p.add_argument("--local", action="store_true", help="the limiter run without the shared budget")
    p.add_argument("--local-seconds", type=float, default=0.0, help="also a run of the local-only limiter")
    p.add_argument("--baseline-seconds", type=float, default=45.0, help="length of the baseline run (0: skip)")
    p.add_argument("--rpm", type=int, default=3_000)
    p.add_argument("--tpm", type=int, default=1_000_000)
    p.add_argument("--latency-ms", type=float, default=50.0)
    p.add_argument("--dimensions", type=int, default=256)
    p.add_argument("--batch", type=int, default=64, help="texts per request")
    p.add_argument("--text-tokens", type=int, default=100)
    p.add_argument("--texts", type=int, default=4096, help="distinct texts, cycled")
    p.add_argument("--lanes", type=int, default=16, help="requests in flight at most")
    p.add_argument("--initial", type=int, default=4, help="initial concurrency limit of the limiter run")
    p.add_argument("--settle", type=float, default=5.0, help="seconds after the first drain before the steady window")
    p.add_argument("--runs", type=int, default=1, help="also run N processes on one endpoint")
    p.add_argument("--runs-seconds", type=float, default=40.0, help="length of the shared --runs phase")
    p.add_argument(
        "--runs-local-seconds",
        type=float,
        default=40.0,
        help="length of the --runs phase without the shared budget (the old behaviour; 0: skip)",
    )
    p.add_argument("--db", default=None, help="Postgres URL for the shared budget (default: embedded)")
    p.add_argument("--prefect", action="store_true", help="also measure Prefect global concurrency limits")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    sys.path.insert(0, str(REPO))
    if argv[:1] == ["--child"]:
        return run_child(argv[1])
    args = parse_args(argv)
    texts, counts = make_texts(args.texts, args.text_tokens)
    per_request = statistics.fmean(counts) * args.batch
    print(
        f"fake provider: RPM {args.rpm:,}, TPM {args.tpm:,}, latency {args.latency_ms:.0f} ms; "
        f"{args.batch} texts of ~{statistics.fmean(counts):.0f} tokens per request "
        f"(~{per_request:,.0f} tokens: TPM allows ~{args.tpm / per_request:,.0f} requests/min, "
        f"so TPM binds); {args.lanes} lanes; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    db = None
    if (args.seconds > 0 and not args.local) or args.runs > 1:
        db = bench_database(args)
        cost = lease_cost(db)
        print("\n== one lease of the shared budget (a round trip to Postgres)")
        print(f"   alone:                 {dist_ms(cost['alone'])}")
        print(f"   16 leasers on one row: {dist_ms(cost['contended'])}; {cost['rate']:,.0f} leases/s in all")
    with tempfile.TemporaryDirectory(prefix="vectorfill-bench-rl-") as tmp:
        shared = None if args.local else db
        # (name, seconds, limited, processes, share, shared database)
        phases = [
            ("1 run, shared budget" if shared else "1 run, local limiter", args.seconds, True, 1, 1.0, shared),
            ("1 run, local limiter", args.local_seconds, True, 1, 1.0, None),
            ("baseline", args.baseline_seconds, False, 1, 1.0, None),
        ]
        if args.runs > 1:
            n = args.runs
            phases += [
                (
                    f"{n} processes, each given the whole budget, shared through Postgres",
                    args.runs_seconds,
                    True,
                    n,
                    1.0,
                    db,
                ),
                (
                    f"{n} processes, each given the whole budget, no shared budget (the old behaviour)",
                    args.runs_local_seconds,
                    True,
                    n,
                    1.0,
                    None,
                ),
            ]
        for name, seconds, limited, n, share, shared_db in phases:
            if seconds <= 0:
                continue
            with Provider(args, Path(tmp)) as provider:
                if n > 1:
                    runs = run_processes(provider, args, Path(tmp), n, seconds, shared_db, share)
                else:
                    one = drive(f"{provider.url}/v1", texts, counts, args, seconds, limited, shared_db=shared_db)
                    runs = [asyncio.run(one)]
                provider_stats = provider.stats()
            s = summarize(merge(name, runs), args)
            s["name"] = name
            print_run(s, args)
            print(
                f"   provider's own count:  {provider_stats['requests']:,} requests, "
                f"{provider_stats['rate_limited']:,} refused, {provider_stats['tokens_billed']:,} tokens billed"
            )
            for run in runs:
                if run.limiter_stats is not None:
                    print_limiter(run.limiter_stats)
    if args.prefect:
        bench_prefect(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
