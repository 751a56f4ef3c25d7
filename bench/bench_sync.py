"""Continuous sync: how long from a row's INSERT to its vector, with ``vectorfill serve --sync``?

As a user runs it: ``vectorfill serve --sync`` in its own process (Prefect's server on
Postgres beside it, started by it), the fake provider (``tests/fake_provider.py``) in its
own process with no latency (a fast provider), and this process as the application,
inserting rows into the source table at a steady rate, phase after phase (``--rates``, rows
per second, each for ``--seconds``): at a trickle (2 rows/s: one single-row INSERT every
half second) and under load (1,000 rows/s: a 50-row INSERT every 50 ms).

Each row's latency is measured by the database's clock alone: the source row's
``created_at`` (``clock_timestamp()`` when it was inserted) to its vector's ``embedded_at``
(``now()`` of the transaction that stored it, which commits a few milliseconds later:
settle + COPY). Per phase: p50, p95 and max, the rows written and the rate achieved, the
deepest the job's queue was (sampled every 0.5 s: how far the lag went) and how long the
queue took to empty after the last write. The machine's load average is printed with them
(2 shared cores: the numbers move with what else runs).

Then each phase's p50 and p95 against the README's promise, "a row written is embedded
within about a second" (``--promise-s``, 1 s): the benchmark exits 1 when a phase's p50
(or a phase with no row embedded) breaks it, so that a regression cannot pass unseen. The
test suite bounds the same lag only loosely (tests/integration/test_sync.py), as shared cores allow.

    python bench/bench_sync.py                     # 2 and 1,000 rows/s, 60 s each
    python bench/bench_sync.py --rates 2,200,1000 --seconds 30 --dimensions 384
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TextIO

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provider import FakeProvider, free_port

WORDS = (
    "the quick brown fox jumps over a lazy dog while vectors keep in step with every row "
    "that an application writes to its tables through the day and the night"
)


PROMISE_S = 1.0
"""The README's "within about a second", from a row's INSERT to its vector."""


def against_promise(results: list[dict], promise_s: float, out: TextIO = sys.stdout) -> bool:
    """Print each phase's p50 and p95 beside the promise; True when every p50 keeps it."""
    kept = True
    print(f"\nINSERT -> vector against the README's promise (within about a second: p50 <= {promise_s:g} s)", file=out)
    for r in results:
        p50, p95 = r["p50_s"], r["p95_s"]
        ok = p50 is not None and p50 <= promise_s
        kept = kept and ok
        target = r["rate_target"] if isinstance(r["rate_target"], str) else f"{r['rate_target']:,.0f} rows/s"
        verdict = "kept" if ok else "BROKEN"
        print(f"  {target}: p50 {p50} s, p95 {p95} s -> {verdict}", file=out)
    return kept


def text_sql() -> str:
    """~40 words of text per row, unique (so that nothing is skipped as unchanged)."""
    return "'row ' || g || ': ' || repeat(%(words)s, 2)"


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    i = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[i]


def wait_for_vectors(url: str, ids: tuple[int, int], timeout: float) -> float | None:
    """Seconds until every row with id in ``ids`` has a vector (None: not within ``timeout``)."""
    start = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() - start < timeout:
            missing = conn.execute(
                "SELECT count(*) FROM bench_docs s WHERE s.id BETWEEN %s AND %s "
                "AND NOT EXISTS (SELECT 1 FROM vectorfill.bench v WHERE v.id = s.id)",
                ids,
            ).fetchone()[0]
            if not missing:
                return time.monotonic() - start
            time.sleep(0.05)
    return None


def run_phase(
    url: str, rate: float, seconds: float, queue_table: str, provider: FakeProvider, latency_sql: str | None = None
) -> dict:
    per_tx = max(1, int(rate // 20))  # 20 transactions a second at most
    interval = per_tx / rate
    txs = max(1, int(seconds / interval))
    depth: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            while not stop.wait(0.5):
                depth.append(conn.execute(f"SELECT count(*) FROM vectorfill.{queue_table}").fetchone()[0])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    words = WORDS
    requests_before = provider.stats().get("requests", 0)
    with psycopg.connect(url, autocommit=True) as conn:
        first = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM bench_docs").fetchone()[0]
        started = time.monotonic()
        behind = 0.0
        for i in range(txs):
            due = started + i * interval
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            else:
                behind = max(behind, now - due)
            conn.execute(
                "INSERT INTO bench_docs (body) SELECT " + text_sql() + " FROM generate_series(1, %(n)s) g",
                {"words": words + " ", "n": per_tx},
            )
        wrote_s = time.monotonic() - started
        last = conn.execute("SELECT max(id) FROM bench_docs").fetchone()[0]
    drained = wait_for_vectors(url, (first, last), timeout=300)
    requests = provider.stats().get("requests", 0) - requests_before
    stop.set()
    sampler.join(5)
    with psycopg.connect(url, autocommit=True) as conn:
        lags = [r[0] for r in conn.execute(latency_sql or PLAIN_LATENCY, (first, last))]
    rows = last - first + 1
    return {
        "rate_target": rate,
        "rows": rows,
        "rate_achieved": round(rows / wrote_s, 1),
        "writer_behind_max_s": round(behind, 3),
        "embedded": len(lags),
        "p50_s": round(statistics.median(lags), 3) if lags else None,
        "p95_s": round(percentile(lags, 0.95), 3) if lags else None,
        "max_s": round(max(lags), 3) if lags else None,
        "queue_depth_max": max(depth) if depth else None,
        "requests": requests,
        "drained_after_last_write_s": None if drained is None else round(drained, 2),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def run_reembed_phase(
    url: str, rate: float, seconds: float, provider: FakeProvider, new_provider: FakeProvider
) -> dict:
    """``job set-model`` to another model, then writes at ``rate`` while the sync run fills the
    new version; latency as readers see it (the first vector of either version), and when
    the switch happened."""
    from vectorfill.jobs import versions

    with psycopg.connect(url, autocommit=True) as conn:
        queued_rows = conn.execute("SELECT count(*) FROM bench_docs").fetchone()[0]
    with psycopg.connect(url) as conn:
        versions.set_model(conn, "bench", model="fake-embed-v2", base_url=new_provider.base_url)
    set_at = time.monotonic()
    switched: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            while not stop.wait(0.2):
                state = conn.execute(
                    "SELECT state FROM vectorfill.versions v JOIN vectorfill.jobs j ON j.id = v.job_id "
                    "WHERE j.name = 'bench' AND v.version = 2"
                ).fetchone()[0]
                if state == "active":
                    switched.append(time.monotonic() - set_at)
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    phase = run_phase(url, rate, seconds, "_q_1_1", provider, latency_sql=READERS_LATENCY)
    watcher.join(max(0.0, 600 - (time.monotonic() - set_at)))
    stop.set()
    phase.update(
        reembed_rows=queued_rows,
        switched_after_s=round(switched[0], 1) if switched else None,
        new_model_requests=new_provider.stats().get("requests", 0),
    )
    return phase


#: Latency as readers see it during a re-embed: the first vector of the row in either version.
READERS_LATENCY = (
    "SELECT extract(epoch FROM least(v1.embedded_at, v2.embedded_at) - s.created_at)::float8 FROM bench_docs s "
    "LEFT JOIN vectorfill._v_1_1 v1 ON v1.k1 = s.id LEFT JOIN vectorfill._v_1_2 v2 ON v2.k1 = s.id "
    "WHERE s.id BETWEEN %s AND %s AND (v1.k1 IS NOT NULL OR v2.k1 IS NOT NULL)"
)
PLAIN_LATENCY = (
    "SELECT extract(epoch FROM v.embedded_at - s.created_at)::float8 FROM bench_docs s "
    "JOIN vectorfill.bench v ON v.id = s.id WHERE s.id BETWEEN %s AND %s"
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", default="2,1000", help="rows per second of each phase, comma-separated")
    p.add_argument("--seconds", type=float, default=60.0, help="length of each phase")
    p.add_argument("--dimensions", type=int, default=1536)
    p.add_argument("--db", default=None, help="a postgresql:// URL instead of an embedded Postgres")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument(
        "--promise-s",
        type=float,
        default=PROMISE_S,
        help="the p50 lag the README promises; a phase over it makes the benchmark exit 1",
    )
    p.add_argument(
        "--reembed-rate",
        type=float,
        default=0.0,
        help="then `job set-model` (every row written so far to re-embed) and write at this rate meanwhile",
    )
    args = p.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]

    root = Path(tempfile.mkdtemp(prefix="vf-bench-sync-"))
    data_dir = root / "pgdata"
    serve = None
    env: dict[str, str] | None = None
    provider = FakeProvider(argparse.Namespace(dimensions=args.dimensions, latency_ms=0.0), root)
    try:
        if args.db:
            url = args.db
        else:
            from vectorfill.local import pgembedded

            url = pgembedded.start(data_dir)
        from vectorfill.config import JobSettings
        from vectorfill.jobs.registry import create_job
        from vectorfill.storage.db import connect, migrate

        migrate(url)
        provider.start()
        with connect(url) as conn:
            conn.execute("DROP TABLE IF EXISTS bench_docs")
            conn.execute(
                "CREATE TABLE bench_docs (id bigserial PRIMARY KEY, body text NOT NULL, "
                "created_at timestamptz NOT NULL DEFAULT clock_timestamp())"
            )
            job = create_job(
                conn,
                name="bench",
                table="bench_docs",
                text_columns=["body"],
                template=None,
                key_columns=None,
                model="fake-embed",
                base_url=provider.base_url,
                api_key_env=None,
                settings=JobSettings(),
            )
        queue_table = job.active.queue_table
        env = dict(
            os.environ,
            VECTORFILL_DATABASE_URL=url,
            VECTORFILL_HOME=str(root / "home"),
            PREFECT_HOME=str(root / "prefect"),
        )
        env.pop("PREFECT_API_URL", None)
        log = open(root / "serve.log", "wb")  # noqa: SIM115 -- the served process writes to it until stopped
        started = time.monotonic()
        serve = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vectorfill.cli",
                "serve",
                "bench",
                "--sync",
                "--cron",
                "",
                "--port",
                str(free_port()),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        with psycopg.connect(url, autocommit=True) as conn:  # a probe row: sync is up once it has a vector
            probe = conn.execute("INSERT INTO bench_docs (body) VALUES ('probe') RETURNING id").fetchone()[0]
        if wait_for_vectors(url, (probe, probe), timeout=600) is None:
            print((root / "serve.log").read_text(errors="replace")[-3000:], file=sys.stderr)
            raise SystemExit("serve --sync did not embed the probe row within 600 s")
        print(
            f"serve --sync up and the probe row embedded after {time.monotonic() - started:.1f} s; "
            f"load {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}",
            file=sys.stderr,
        )
        results = []
        for rate in rates:
            r = run_phase(url, rate, args.seconds, queue_table, provider)
            results.append(r)
            print(json.dumps(r), file=sys.stderr)
        if args.reembed_rate:
            new_provider = FakeProvider(
                argparse.Namespace(dimensions=args.dimensions, latency_ms=0.0, model="fake-embed-v2"), root / "new"
            )
            (root / "new").mkdir(exist_ok=True)
            new_provider.start()
            try:
                r = run_reembed_phase(url, args.reembed_rate, args.seconds, provider, new_provider)
            finally:
                new_provider.stop()
            r["rate_target"] = f"{args.reembed_rate:g} during a re-embed of {r['reembed_rows']:,} rows"
            results.append(r)
            print(json.dumps(r), file=sys.stderr)
        if args.json:
            print(json.dumps({"dimensions": args.dimensions, "seconds": args.seconds, "phases": results}, indent=2))
        else:
            print(f"\nINSERT -> vector latency, serve --sync, fast provider, {args.dimensions} dims, 2 shared cores")
            print(
                "| rows/s target | achieved | rows | p50 s | p95 s | max s | max queue | drained after s "
                "| requests | load 1m |"
            )
            print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            for r in results:
                target = r["rate_target"] if isinstance(r["rate_target"], str) else f"{r['rate_target']:,.0f}"
                print(
                    f"| {target} | {r['rate_achieved']:,.1f} | {r['rows']:,} | {r['p50_s']} | "
                    f"{r['p95_s']} | {r['max_s']} | {r['queue_depth_max']} | {r['drained_after_last_write_s']} | "
                    f"{r['requests']:,} | {r['loadavg_1m']} |"
                )
            for r in results:
                if "switched_after_s" in r:
                    print(
                        f"\nre-embed of {r['reembed_rows']:,} rows: readers switched to the new model "
                        f"{r['switched_after_s']} s after set-model ({r['new_model_requests']:,} requests to it)"
                    )
        kept = against_promise(results, args.promise_s, sys.stderr if args.json else sys.stdout)
        return 0 if kept else 1
    finally:
        if serve is not None and serve.poll() is None:
            os.killpg(serve.pid, signal.SIGINT)
            try:
                serve.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
        if env is not None:  # serve leaves the local Prefect server it started running, by design
            subprocess.run(
                [sys.executable, "-m", "vectorfill.cli", "stop"], env=env, capture_output=True, timeout=120, check=False
            )
        provider.stop()
        if not args.db:
            from vectorfill.local import pgembedded

            pgembedded.stop(data_dir)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
