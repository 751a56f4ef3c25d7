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

All flow runs here share one process and one event loop; on several machines
(``--pool``) each worker adds its own cores. State the machine's load beside any figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db")
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--latencies", type=float, nargs="+", default=[0, 300])
    ap.add_argument("--max-inputs", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--dims", type=int, default=256)
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
        for latency in args.latencies:
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
