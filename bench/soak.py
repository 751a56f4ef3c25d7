"""Soak: a backfill under every fault at once, then a check of every vector.

While worker processes run the real backfill flow against the fake provider, this script
injects faults without pause: 429s with ``retry-after``, 500/503s, HTML pages from a
"proxy", hangs past the job's timeout, short, shuffled and NaN-bearing responses. It
SIGKILLs the first workers mid-run, restarts Postgres once, and lets a last worker finish
(after the dead workers' leases expire). At the end it verifies that every row holds exactly
the vector of its text, and reports tokens billed against tokens needed (the price of the
faults: requests in flight when a worker died are paid twice).

    python bench/soak.py --rows 5000 --kills 2

Prints one table; exits 1 if any row is missing or wrong.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

KEY_ENV = "VF_SOAK_KEY"
KEY = "sk-soak-" + "0" * 24


def worker_main() -> None:
    """One worker: the real flow, in its own process (so that it can be SIGKILLed)."""
    import asyncio

    from vectorfill.orchestration.runtime import prefect_defaults

    prefect_defaults()
    from vectorfill.flows.backfill import backfill

    try:
        asyncio.run(backfill("soak"))
    except Exception as exc:  # a failed run is allowed: the next worker carries on
        print(f"worker run failed: {exc}", file=sys.stderr)
        sys.exit(3)


def inject_faults(provider, stop: threading.Event, rng: random.Random, counts: dict) -> None:
    """Queue a fault whenever none is waiting, a few times a second: a steady share of the
    requests meets one, however fast or slow the workers are."""
    kinds = ["429", "500", "503", "html", "hang", "short", "shuffle", "nan"]
    while not stop.wait(0.3):
        if provider.pending_faults():
            continue
        kind = rng.choice(kinds)
        counts[kind] = counts.get(kind, 0) + 1
        if kind == "429":
            provider.fail_next(1, status=429, headers={"retry-after-ms": "200"})
        elif kind in ("500", "503"):
            provider.fail_next(1, status=int(kind))
        elif kind == "html":
            provider.fail_next(1, status=502, body="<html><body><h1>502 Bad Gateway</h1></body></html>")
        elif kind == "hang":
            provider.hang_next(1, seconds=4)  # past the job's 2 s timeout
        else:
            provider.corrupt_next(1, kind)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--kills", type=int, default=2, help="workers SIGKILLed mid-run")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main()
        return 0

    from fake_provider import FakeProvider
    from vectorfill.config import JobSettings
    from vectorfill.jobs.registry import create_job, job_status
    from vectorfill.local import pgembedded
    from vectorfill.provider.tokens import Cl100k
    from vectorfill.storage.db import connect, migrate

    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="vf-soak-"))
    data_dir = tmp / "pgdata"
    url = pgembedded.start(data_dir)
    started = time.monotonic()
    events: list[str] = []
    try:
        migrate(url)
        with connect(url) as conn:
            conn.execute("CREATE TABLE soak (id int PRIMARY KEY, body text NOT NULL)")
            conn.execute(
                "INSERT INTO soak SELECT g, 'Soak row ' || g || ': ' || repeat(md5(g::text) || ' ', 8) "
                "FROM generate_series(1, %s) g",
                (args.rows,),
            )
        with FakeProvider(dimensions=64, api_key=KEY, latency_s=0.05) as provider:
            with connect(url) as conn:
                create_job(
                    conn,
                    name="soak",
                    table="soak",
                    text_columns=["body"],
                    template=None,
                    key_columns=None,
                    model="fake-embed",
                    base_url=provider.base_url,
                    api_key_env=KEY_ENV,
                    settings=JobSettings(
                        max_inputs=50, concurrency=4, timeout_s=2, retries=8, lease_s=10, max_attempts=50
                    ),
                )
            env = dict(os.environ, VECTORFILL_DATABASE_URL=url, **{KEY_ENV: KEY}, PREFECT_HOME=str(tmp / "prefect"))
            env.pop("PREFECT_API_URL", None)

            def embedded() -> int:
                with connect(url) as conn:
                    return job_status(conn, "soak").embedded

            stop = threading.Event()
            counts: dict[str, int] = {}
            faults = threading.Thread(target=inject_faults, args=(provider, stop, rng, counts), daemon=True)
            faults.start()
            runs = 0
            restarted = False
            while True:
                runs += 1
                worker_log = Path(tempfile.gettempdir()) / f"vectorfill-soak-worker-{os.getpid()}-{runs}.log"
                with open(worker_log, "wb") as log:
                    proc = subprocess.Popen(
                        [sys.executable, __file__, "--worker"],
                        env=env,
                        start_new_session=True,
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                    )
                target = embedded() + args.rows // (2 * (args.kills + 2))
                while proc.poll() is None:
                    done = embedded()
                    if runs <= args.kills and done >= target:
                        os.killpg(proc.pid, signal.SIGKILL)  # the worker and its Prefect server
                        proc.wait()
                        events.append(f"worker {runs} SIGKILLed at {done} rows")
                        break
                    if not restarted and runs == args.kills + 1 and done >= args.rows * 0.7:
                        pgembedded.stop(data_dir)
                        time.sleep(0.5)
                        pgembedded.start(data_dir)
                        restarted = True
                        events.append(f"Postgres restarted at {done} rows")
                    time.sleep(0.1)
                with connect(url) as conn:
                    st = job_status(conn, "soak")
                why = [ln for ln in worker_log.read_text(errors="replace").splitlines() if "worker run failed" in ln]
                events.append(
                    f"worker {runs} ended (exit {proc.returncode}): {st.embedded} embedded, "
                    f"{st.pending} pending, {st.failed} failed" + (f" ({why[-1].strip()})" if why else "")
                )
                if st.pending == 0 or runs > args.kills + 20:
                    break
                if runs > args.kills:
                    time.sleep(2)  # leases of killed workers expire (10 s)
            stop.set()

            with connect(url) as conn:
                st = job_status(conn, "soak")
                rows = conn.execute(
                    "SELECT s.body, v.embedding FROM soak s JOIN vectorfill.soak v ON v.id = s.id"
                ).fetchall()
            wrong = sum(
                not np.allclose(emb.to_numpy(), provider.expected_vector(body), atol=1e-6) for body, emb in rows
            )
            needed = sum(Cl100k().count([body for body, _ in rows]))
            billed = provider.tokens_billed
            sent = provider.inputs
            stats = provider.stats()
    finally:
        pgembedded.stop(data_dir)

    print("\n".join(events))
    print(f"\nfaults injected: {dict(sorted(counts.items()))}")
    table = [
        ("rows", f"{args.rows:,}"),
        ("embedded / pending / failed", f"{st.embedded:,} / {st.pending:,} / {st.failed:,}"),
        ("rows with a wrong or missing vector", f"{args.rows - len(rows) + wrong:,}"),
        ("worker runs (killed)", f"{runs} ({args.kills})"),
        ("requests / 429s", f"{stats['requests']:,} / {stats['rate_limited']:,}"),
        ("texts sent / distinct", f"{len(sent):,} / {len(set(sent)):,}"),
        ("tokens needed (cl100k of final texts)", f"{needed:,}"),
        ("tokens billed (usage of 200 responses)", f"{billed:,}"),
        ("billed / needed", f"{billed / needed:.3f}" if needed else "-"),
        ("wall time", f"{time.monotonic() - started:.1f} s"),
    ]
    print("\n| soak | |\n|---|---|")
    for name, value in table:
        print(f"| {name} | {value} |")
    ok = st.embedded == args.rows and st.pending == 0 and wrong == 0 and len(rows) == args.rows
    print("\nRESULT:", "every row holds exactly the vector of its text" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
