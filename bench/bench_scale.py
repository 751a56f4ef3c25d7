"""A million rows on one machine: where does vectorfill slow down as a table grows?

On a scratch database (``--db`` server, or an embedded Postgres in a temporary directory)
it loads ``--rows`` rows (``id bigint, title, body``, ~25 cl100k tokens a row) and times,
in this process with the real functions the CLI calls and, beside them, as the whole
command a user types (a new process, start-up included):

* ``job create`` (install the triggers and queue every row; the command's run also checks
  the endpoint, as a user's does, and creates a second job on the table, dropped after);
* ``vectorfill status`` (:func:`job_status`, median of 3) and one tick of the backfill's
  progress bar (:class:`vectorfill.orchestration.runtime.Progress`);
* ``vectorfill estimate``;
* a backfill of ``--backfill-rows`` rows (default: all) by the CLI, ``vectorfill backfill
  JOB``, as a child process, against the fake provider (``tests/fake_provider.py``, its own
  process, ``--dims`` dimensions, no latency): rows/s of every ``--segment`` rows from the
  first to the last, and the child's resident set at each segment's end (from ``/proc``);
* ``vectorfill index`` (HNSW) on what the backfill stored.

    python bench/bench_scale.py --rows 1000000 --backfill-rows 300000
    python bench/bench_scale.py --db postgresql://... --rows 1000000 --skip-index

State the machine's load (``uptime``) beside any figure quoted from it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provider import FakeProvider

JOB = "scale"


def _db_url(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def _t(label: str, fn, results: dict):
    t0 = time.perf_counter()
    out = fn()
    results[label] = time.perf_counter() - t0
    print(f"{label}: {results[label]:.2f} s", flush=True)
    return out


VECTORFILL = str(Path(sys.executable).with_name("vectorfill"))  # the command a user types


def _command_env(url: str) -> dict[str, str]:
    """The environment of a user's command against ``url`` (no Prefect server needed)."""
    env = dict(os.environ, VECTORFILL_DATABASE_URL=url, VF_BENCH_KEY="sk-bench-any-key")  # the fake takes any key
    env.pop("PREFECT_API_URL", None)
    return env


def _command(label: str, argv: list[str], env: dict[str, str], results: dict, repeat: int = 1) -> None:
    """``vectorfill ARGV`` as a user runs it (a new process, start-up included); the median
    of ``repeat`` runs."""
    cmd = [VECTORFILL, *argv]
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
        times.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise SystemExit(
                f"{' '.join(argv[:2])} exited {done.returncode}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
    results[label] = statistics.median(times)
    print(f"{label}: {results[label]:.2f} s", flush=True)


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def run(url: str, args: argparse.Namespace) -> None:
    from vectorfill.jobs.estimate import estimate
    from vectorfill.jobs.registry import create_job, drop_job, job_status
    from vectorfill.orchestration.runtime import Progress
    from vectorfill.storage.db import connect, migrate

    results: dict[str, float] = {}
    migrate(url)
    with connect(url) as conn:
        conn.execute("CREATE TABLE articles (id bigint PRIMARY KEY, title text, body text)")
    _t(
        f"load {args.rows:,} rows (COPY-free INSERT … SELECT, not vectorfill)",
        lambda: _exec(
            url,
            "INSERT INTO articles SELECT g, 'Title ' || g, 'Body of row ' || g || ' about ' || md5(g::text) "
            "|| ' and more words to make it a sentence' FROM generate_series(1, %s) g",
            (args.rows,),
        ),
        results,
    )
    _exec(url, "VACUUM ANALYZE articles")
    log_dir = Path(tempfile.mkdtemp(prefix="vf-bench-scale-"))
    with FakeProvider(argparse.Namespace(dimensions=args.dims, latency_ms=0, rpm=None, tpm=None), log_dir) as fake:

        def create():
            with connect(url) as conn:
                create_job(
                    conn,
                    name=JOB,
                    table="articles",
                    text_columns=None,
                    template="{title}\n\n{body}",
                    key_columns=None,
                    model="fake-embed",
                    base_url=fake.base_url,
                    api_key_env=None,
                    dimensions=args.dims,
                )

        _t("job create (queue every row)", create, results)
        _exec(url, "VACUUM ANALYZE vectorfill._q_1_1")
        env = _command_env(url)
        # the same as a user types it, endpoint check included, as a second job on the table
        # (dropped after: the first keeps its id, which the queries below name)
        _command(
            "`vectorfill job create` command (queue every row)",
            ["job", "create", f"{JOB}_cli", "--table", "articles", "--template", "{title}\\n\\n{body}"]
            + [
                "--model",
                "fake-embed",
                "--base-url",
                fake.base_url,
                "--api-key-env",
                "VF_BENCH_KEY",
                "--dimensions",
                str(args.dims),
            ],
            env,
            results,
        )
        with connect(url) as conn:
            drop_job(conn, f"{JOB}_cli")

        def status():
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                with connect(url) as conn:
                    job_status(conn, JOB)
                times.append(time.perf_counter() - t0)
            return statistics.median(times)

        results["status (median of 3, connect included)"] = status()
        print(f"status: {results['status (median of 3, connect included)']:.3f} s", flush=True)
        _command("`vectorfill status` command (median of 3)", ["status", JOB], env, results, repeat=3)

        with connect(url, autocommit=True) as conn:
            progress = Progress(conn, JOB)
            ticks = []
            for _ in range(5):
                t0 = time.perf_counter()
                progress.tick()
                ticks.append(time.perf_counter() - t0)
        results["progress bar tick (median of 5)"] = statistics.median(ticks)
        print(f"progress tick: {results['progress bar tick (median of 5)'] * 1000:.1f} ms", flush=True)

        def est():
            with connect(url) as conn:
                return estimate(conn, JOB)

        e = _t("estimate", est, results)
        print(f"  estimate says {e[0].rows:,} rows, {e[0].tokens:,} tokens", flush=True)
        _command("`vectorfill estimate` command", ["estimate", JOB], env, results)

        if not args.skip_backfill:
            _backfill(url, args, results)
        if not args.skip_index and not args.skip_backfill:
            from vectorfill.jobs.search import create_index

            label = f"index (HNSW, cosine, maintenance_work_mem {args.index_memory or 'of the server'})"
            _t(label, lambda: create_index(url, JOB, memory=args.index_memory), results)
        with connect(url) as conn:
            print(f"final: {job_status(conn, JOB)}", flush=True)
    shutil.rmtree(log_dir, ignore_errors=True)
    print()
    print(f"| step ({args.rows:,} rows, {args.dims} dims) | time |")
    print("| --- | ---: |")
    for k, v in results.items():
        print(f"| {k} | {v:.2f} s |" if v >= 0.1 else f"| {k} | {v * 1000:.1f} ms |")
    print(f"\nload: {os.getloadavg()}")


def _exec(url: str, stmt: str, params=None) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(stmt, params)


def _backfill(url: str, args: argparse.Namespace, results: dict) -> None:
    """``vectorfill backfill`` as a child process; queue depth and RSS sampled every second."""
    target = args.backfill_rows or args.rows
    # a home of its own: the local Prefect server it starts keeps its history in this scratch
    # server, so it is stopped below, not left to the user's later commands
    home = Path(tempfile.mkdtemp(prefix="vf-bench-scale-home-"))
    env = dict(_command_env(url), VECTORFILL_HOME=str(home), PREFECT_HOME=str(home / "prefect"))
    cmd = [VECTORFILL, "backfill", JOB, "--max-rows", str(target)]
    samples: list[tuple[float, int, int | None]] = []
    with psycopg.connect(url, autocommit=True) as conn:
        start_pending = conn.execute("SELECT count(*) FROM vectorfill._q_1_1").fetchone()[0]
    log = Path(tempfile.gettempdir()) / f"vf-bench-scale-{os.getpid()}.log"
    t0 = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        stop = threading.Event()

        def poll() -> None:
            with psycopg.connect(url, autocommit=True) as conn:
                while not stop.is_set():
                    pending = conn.execute("SELECT count(*) FROM vectorfill._q_1_1").fetchone()[0]
                    samples.append((time.perf_counter() - t0, start_pending - pending, _rss_kib(proc.pid)))
                    stop.wait(1.0)

        th = threading.Thread(target=poll, daemon=True)
        th.start()
        rc = proc.wait()
        stop.set()
        th.join()
    wall = time.perf_counter() - t0
    subprocess.run([VECTORFILL, "stop"], env=env, capture_output=True, timeout=120)
    shutil.rmtree(home, ignore_errors=True)
    results[f"backfill {target:,} rows (CLI process, start-up included)"] = wall
    print(f"backfill exit {rc}, {wall:.1f} s (log: {log})", flush=True)
    seg = args.segment
    print("\n| rows | rows/s in the segment | RSS of the backfill process at its end |\n| --- | ---: | ---: |")
    prev: tuple[float, int] | None = None
    bound = seg
    for t, done, rss in samples:
        if prev is None:
            if done > 0:
                prev = (t, 0)  # from the first rows stored on: start-up excluded
            continue
        if done >= bound:  # the rate since the last boundary crossed, for each boundary crossed now
            rate = (done - prev[1]) / max(t - prev[0], 1e-6)
            while done >= bound:
                print(f"| {bound - seg:,}–{bound:,} | {rate:,.0f} | {(rss or 0) / 1024:,.0f} MiB |", flush=True)
                bound += seg
            prev = (t, done)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--backfill-rows", type=int, default=None)
    ap.add_argument("--segment", type=int, default=100_000)
    ap.add_argument("--dims", type=int, default=256)
    ap.add_argument("--skip-backfill", action="store_true")
    ap.add_argument("--skip-index", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the scratch database")
    ap.add_argument("--index-memory", default=None, help="maintenance_work_mem for the index build, e.g. 1GB")
    args = ap.parse_args()
    root = None
    server = args.db
    if server is None:
        from vectorfill.local import pgembedded

        root = Path(tempfile.mkdtemp(prefix="vf-bench-scale-pg-"))
        server = pgembedded.start(root / "pgdata")
    name = f"vf_bench_scale_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = _db_url(server, name)
    try:
        _exec(url, "CREATE EXTENSION IF NOT EXISTS vector")
        print(f"load {os.getloadavg()}", flush=True)
        run(url, args)
    finally:
        if not args.keep:
            with psycopg.connect(server, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if root is not None:
            from vectorfill.local import pgembedded

            pgembedded.stop(root / "pgdata")
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
