"""Throughput against the number of flow runs: ``backfill --workers N`` for N in 1, 2, 4.

For each provider latency (``--latencies``, ms) and each N, a fresh job of ``--rows`` rows is
backfilled by N flow runs of the backfill flow in this process
(:func:`vectorfill.orchestration.fanout.run_here`) against the fake provider (its own
process), ``--max-inputs`` texts a request and ``--concurrency`` requests in flight per
run; the wall time of the runs (Prefect's temporary server started beforehand by a
warm-up) gives rows/s. Where the curve stops growing says what binds: with latency, more
runs mean more requests in flight; without, the two cores (Python parsing and COPY,
Postgres, the provider) do.

    python bench/bench_workers.py --rows 20000 --latencies 0 300

All flow runs here share one process and one event loop. With ``--pool`` the runs are
instead flow runs of the backfill deployment on a process work pool, as ``vectorfill
backfill JOB --workers N --pool P`` makes them: vectorfill's local Prefect server (history
on the same Postgres), one ``prefect worker`` process with N slots, each flow run a process
of its own (so the runs use every core, and each pays its own start-up). Three rates are
printed there: :func:`run_on_pool` called in this process, from the call to the last run's
end; the same as a user types it, ``vectorfill backfill JOB --workers N --pool P`` as a new
process (start-up included), on a job of its own; and within the runs (first run's start to
last run's end, from Prefect's records).
State the machine's load beside any figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provider import FakeProvider


def _db_url(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def _job(url: str, name: str, rows: int, base_url: str, args) -> None:
    from vectorfill.config import JobSettings
    from vectorfill.jobs.registry import create_job
    from vectorfill.storage.db import connect

    with connect(url) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, title text, body text)").format(sql.Identifier(name))
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO {} SELECT g, 'Title ' || g, 'Body of row ' || g || ' about ' || md5(g::text) "
                "FROM generate_series(1, %s) g"
            ).format(sql.Identifier(name)),
            (rows,),
        )
        create_job(
            conn,
            name=name,
            table=name,
            text_columns=None,
            template="{title}\n\n{body}",
            key_columns=None,
            model="fake-embed",
            base_url=base_url,
            api_key_env=None,
            dimensions=args.dims,
            settings=JobSettings(max_inputs=args.max_inputs, concurrency=args.concurrency),
        )


POOL = "vf-bench"


def _on_pool(args, url: str, log_dir: Path) -> list:
    """N flow runs on a process work pool per latency; one worker process with max(N) slots."""
    home = Path(tempfile.mkdtemp(prefix="vf-bench-workers-home-"))
    os.environ.update(VECTORFILL_HOME=str(home), PREFECT_HOME=str(home / "prefect"))
    from vectorfill.orchestration import local_server

    server = local_server.ensure(url, announce=lambda m: print(m, flush=True))
    env = dict(os.environ, PREFECT_API_URL=server.api_url, PREFECT_LOGGING_LEVEL="WARNING")
    prefect = str(Path(sys.executable).with_name("prefect"))
    vectorfill = str(Path(sys.executable).with_name("vectorfill"))
    subprocess.run(
        [prefect, "work-pool", "create", POOL, "--type", "process"], env=env, check=True, capture_output=True
    )
    with open(log_dir / "worker.log", "wb") as out:
        worker = subprocess.Popen(
            [prefect, "worker", "start", "--pool", POOL, "--limit", str(max(args.workers))],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    results = []
    try:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from vectorfill.orchestration.fanout import run_on_pool

        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            for latency in args.latencies:
                ns = argparse.Namespace(dimensions=args.dims, latency_ms=latency, rpm=None, tpm=None)
                with FakeProvider(ns, log_dir) as fake:
                    warm = f"pwarm_{int(latency)}"
                    _job(url, warm, args.max_inputs * args.concurrency, fake.base_url, args)
                    run_on_pool(warm, 1, POOL, wait=True, poll_s=0.5)  # the worker polling, files cached
                    for n in args.workers:
                        name = f"p{n}_{int(latency)}"
                        _job(url, name, args.rows, fake.base_url, args)
                        t0 = time.perf_counter()
                        runs = run_on_pool(name, n, POOL, wait=True, poll_s=0.5)
                        wall = time.perf_counter() - t0
                        assert all(r.state == "Completed" for r in runs), runs
                        with get_client(sync_client=True) as client:
                            flow_runs = [client.read_flow_run(r.flow_run_id) for r in runs]
                        inner = max(fr.end_time for fr in flow_runs) - min(fr.start_time for fr in flow_runs)
                        inner_rate = args.rows / inner.total_seconds()
                        # the same as a user types it: `vectorfill backfill --workers N --pool`,
                        # a new process (start-up, deployment registration and the wait included)
                        name = f"c{n}_{int(latency)}"
                        _job(url, name, args.rows, fake.base_url, args)
                        t0 = time.perf_counter()
                        done = subprocess.run(
                            [vectorfill, "backfill", name, "--workers", str(n), "--pool", POOL],
                            env=env,
                            capture_output=True,
                            text=True,
                            timeout=3600,
                        )
                        command = time.perf_counter() - t0
                        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
                        results.append((latency, n, wall, command, inner_rate))
                        print(
                            f"latency {latency:.0f} ms, {n} pool run(s): called here {wall:.1f} s, "
                            f"{args.rows / wall:,.0f} rows/s; the command {command:.1f} s, "
                            f"{args.rows / command:,.0f} rows/s; within the runs {inner_rate:,.0f} rows/s",
                            flush=True,
                        )
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
        local_server.stop()
        shutil.rmtree(home, ignore_errors=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db")
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--latencies", type=float, nargs="+", default=[0, 300])
    ap.add_argument("--max-inputs", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--dims", type=int, default=256)
    ap.add_argument("--pool", action="store_true", help="flow runs on a process work pool (one process each)")
    args = ap.parse_args()

    from vectorfill.orchestration.runtime import prefect_defaults

    prefect_defaults(use_served=False)
    root = None
    server = args.db
    if server is None:
        from vectorfill.local import pgembedded

        root = Path(tempfile.mkdtemp(prefix="vf-bench-workers-pg-"))
        server = pgembedded.start(root / "pgdata")
    dbname = f"vf_bench_workers_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    url = _db_url(server, dbname)
    os.environ["VECTORFILL_DATABASE_URL"] = url
    log_dir = Path(tempfile.mkdtemp(prefix="vf-bench-workers-"))
    results = []
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        from vectorfill.orchestration.fanout import run_here
        from vectorfill.storage.db import migrate

        migrate(url)
        print(f"load {os.getloadavg()}", flush=True)
        if args.pool:
            results = _on_pool(args, url, log_dir)
            latencies: list[float] = []
        else:
            latencies = args.latencies
        for latency in latencies:
            ns = argparse.Namespace(dimensions=args.dims, latency_ms=latency, rpm=None, tpm=None)
            with FakeProvider(ns, log_dir) as fake:
                _job(url, f"warm_{int(latency)}", args.max_inputs * args.concurrency, fake.base_url, args)
                asyncio.run(run_here(f"warm_{int(latency)}", 1))  # Prefect's server up, first imports paid
                for n in args.workers:
                    name = f"w{n}_{int(latency)}"
                    _job(url, name, args.rows, fake.base_url, args)
                    t0 = time.perf_counter()
                    summary = asyncio.run(run_here(name, n))
                    wall = time.perf_counter() - t0
                    assert summary.embedded == args.rows, summary
                    results.append((latency, n, wall, args.rows / wall))
                    print(
                        f"latency {latency:.0f} ms, {n} run(s): {wall:.1f} s, {args.rows / wall:,.0f} rows/s",
                        flush=True,
                    )
        if args.pool:
            print(
                f"\n| provider latency | flow runs (pool) | rows/s, called in this process | rows/s, the command "
                f"| rows/s, within the runs ({args.rows:,} rows, {args.max_inputs} a request, "
                f"{args.concurrency} in flight a run) |\n| ---: | ---: | ---: | ---: | ---: |"
            )
            for latency, n, wall, command, inner in results:
                print(
                    f"| {latency:.0f} ms | {n} | {args.rows / wall:,.0f} ({wall:.1f} s) "
                    f"| {args.rows / command:,.0f} ({command:.1f} s) | {inner:,.0f} |"
                )
        else:
            print(
                f"\n| provider latency | flow runs | rows/s ({args.rows:,} rows, {args.max_inputs} a request, "
                f"{args.concurrency} in flight a run) |\n| ---: | ---: | ---: |"
            )
            for latency, n, _, rate in results:
                print(f"| {latency:.0f} ms | {n} | {rate:,.0f} |")
        print(f"\nload: {os.getloadavg()}")
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
        shutil.rmtree(log_dir, ignore_errors=True)
        if root is not None:
            from vectorfill.local import pgembedded

            pgembedded.stop(root / "pgdata")
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
