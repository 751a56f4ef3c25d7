"""The Batch API path against the online path: same rows, same vectors, its wall time and cost.

Two jobs on one table of ``--rows`` rows (``--dimensions``-d, the fake provider in this
process, its Files and Batches endpoints from ``tests/fake_batch_api.py``):

* **online**: ``backfill(job)``, the online flow;
* **batch**: ``backfill(job, batch=True)`` (submit, returns), then the provider's
  turnaround (the fake moves each batch through validating -> in_progress -> finalizing
  -> completed, ``--stage-s`` seconds a stage, measured from its creation), then
  ``backfill(job)`` (collects and stores).

Then every row's vector in the two jobs' views is compared (equal to the float32 bit),
and the cost of the tokens billed is priced as ``--price-model`` (default
text-embedding-3-large) online and through batches. Prefect's temporary server is warmed
up first (a backfill of a few rows) so that its start-up is in no timed phase.

Usage::

    python bench/bench_batch.py                       # 20,000 rows, 1536 dims
    python bench/bench_batch.py --rows 5000 --stage-s 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dimensions", type=int, default=1536)
    parser.add_argument("--stage-s", type=float, default=2.0, help="the fake's seconds per batch status")
    parser.add_argument("--price-model", default="text-embedding-3-large")
    parser.add_argument("--db", default=None)
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="vf-bench-batch-"))
    os.environ.setdefault("PREFECT_HOME", str(tmp / "prefect"))
    from vectorfill.orchestration.runtime import prefect_defaults

    prefect_defaults(use_served=False)
    os.environ.pop("PREFECT_API_URL", None)

    import numpy as np
    import psycopg

    from fake_provider import FakeProvider
    from vectorfill.config import JobSettings
    from vectorfill.flows.backfill import backfill
    from vectorfill.jobs.registry import create_job
    from vectorfill.provider.prices import batch_price_per_million, price_per_million
    from vectorfill.storage.db import connect, migrate

    data_dir = tmp / "pg"
    url = args.db
    if url is None:
        from vectorfill.local import pgembedded

        url = pgembedded.start(data_dir)
    os.environ["VECTORFILL_DATABASE_URL"] = url
    os.environ["VF_BENCH_KEY"] = "sk-bench"
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        migrate(url)
        with FakeProvider(dimensions=args.dimensions, api_key="sk-bench") as fake:
            fake.batch_api.stage_s = args.stage_s
            with connect(url) as conn:
                conn.execute("CREATE TABLE bench (id bigint PRIMARY KEY, body text)")
                conn.execute(
                    "INSERT INTO bench SELECT g, 'Row ' || g || ': ' || repeat(md5(g::text) || ' words about it ', 6) "
                    "FROM generate_series(1, %s) g",
                    (args.rows,),
                )
                conn.execute("CREATE TABLE warm (id bigint PRIMARY KEY, body text)")
                conn.execute("INSERT INTO warm SELECT g, 'warm ' || g FROM generate_series(1, 10) g")
                common = dict(
                    text_columns=["body"],
                    template=None,
                    key_columns=None,
                    model="fake-embed",
                    base_url=fake.base_url,
                    api_key_env="VF_BENCH_KEY",
                    settings=JobSettings(),
                )
                create_job(conn, name="warm", table="warm", **common)
                create_job(conn, name="online", table="bench", **common)
                create_job(conn, name="batched", table="bench", **common)
            asyncio.run(backfill("warm"))  # Prefect's temporary server starts here, untimed

            t0 = time.perf_counter()
            online = asyncio.run(backfill("online"))
            t_online = time.perf_counter() - t0

            online_requests = fake.requests
            t0 = time.perf_counter()
            submitted = asyncio.run(backfill("batched", batch=True))
            t_submit = time.perf_counter() - t0
            t0 = time.perf_counter()
            api = fake.batch_api
            while True:
                for b in list(api.batches.values()):
                    api._advance(b)
                if all(b.status in ("completed", "failed", "expired", "cancelled") for b in api.batches.values()):
                    break
                time.sleep(0.05)
            t_turnaround = time.perf_counter() - t0
            t0 = time.perf_counter()
            collected = asyncio.run(backfill("batched"))
            t_collect = time.perf_counter() - t0

            with connect(url) as conn:
                a = dict(conn.execute("SELECT id, embedding FROM vectorfill.online").fetchall())
                b = dict(conn.execute("SELECT id, embedding FROM vectorfill.batched").fetchall())
            assert set(a) == set(b) and len(a) == args.rows, (len(a), len(b))
            equal = sum(np.array_equal(a[k].to_numpy(), b[k].to_numpy()) for k in a)
            online_price = price_per_million(args.price_model)
            batch_price = batch_price_per_million(args.price_model)
            tokens_online, tokens_batch = online.tokens, collected.batch_tokens
            load = os.getloadavg()
            print(f"rows {args.rows:,}, {args.dimensions} dims, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
            print(
                f"online: {t_online:.2f} s wall ({args.rows / t_online:,.0f} rows/s), {online.requests} requests, "
                f"{tokens_online:,} tokens"
            )
            print(
                f"batch: submit {t_submit:.2f} s ({submitted.batches_submitted} batch(es), "
                f"{submitted.batch_rows_submitted:,} rows) + provider turnaround {t_turnaround:.2f} s "
                f"(fake: {args.stage_s:g} s a status) + collect and store {t_collect:.2f} s "
                f"({collected.batch_rows:,} rows) = {t_submit + t_turnaround + t_collect:.2f} s; "
                f"{tokens_batch:,} tokens billed, online endpoint requests during batch runs: "
                f"{fake.requests - online_requests}"
            )
            print(f"vectors equal (bit for bit) between the two paths: {equal:,} of {len(a):,}")
            print(
                f"cost as {args.price_model}: online ${tokens_online * online_price / 1e6:.4f} "
                f"(${online_price}/1M), batch ${tokens_batch * batch_price / 1e6:.4f} (${batch_price}/1M); "
                f"fake inputs submitted {api.submitted_inputs:,}, billed {api.billed_inputs:,}"
            )
            big = 10_000_000 * 500
            print(
                f"a 10M-row re-embed of 500-token rows with {args.price_model}: online ${big * online_price / 1e6:,.0f}, "
                f"batch ${big * batch_price / 1e6:,.0f}"
            )
    finally:
        if args.db is None:
            from vectorfill.local import pgembedded

            pgembedded.stop(data_dir)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
