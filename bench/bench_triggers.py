"""What a vectorfill job costs the writes to its source table: plain table vs the same table
with a job, statement by statement, in one run.

Two identical tables, ``bench_plain`` and ``bench_job`` (``id bigint PRIMARY KEY, title text,
body text, views int``), the second with a job embedding ``{title}\\n\\n{body}``. Each round
runs every statement on both tables, one after the other (which goes first alternates by
round and statement, so neither side always meets the busier machine), each in its own
transaction, commit included in the time:

* bulk ``INSERT ... SELECT`` of ``--rows`` rows into the empty table;
* bulk ``UPDATE`` of the embedded column (``body = body || ' (edited)'``), every row;
* ``UPDATE`` with unchanged values (``title = title, body = body``), every row;
* ``UPDATE`` of a column the job does not embed (``views = views + 1``), every row;
* ``--single`` single-row INSERTs, in one transaction (the per-statement cost, without a
  commit's fsync per row to hide it), and ``--single`` more in autocommit (as an
  application writes them, a commit each);
* ``--single`` single-row UPDATEs of a column the job does not embed, in one transaction;
* bulk ``DELETE`` of ``--rows`` rows, with their vectors present.

Before each statement both tables are vacuumed and analysed (not timed), and the job is put
in its steady state: queue empty and a vector (``--dims`` dimensions) stored for every row,
as after a backfill. The table prints the median time of ``--repeat`` rounds per side and
their ratio (and the range of the per-round ratios).

With the change-log triggers (one log row per statement), the work moves to vectorfill's
absorber, which the next claim (or count) runs: after each job-side statement the absorber
is run in a transaction of its own and timed too (the last column: what the backfill pays,
not the user's statement). Run against an older release's code (``PYTHONPATH`` pointing at
an export of it) the same script measures its triggers, which have no absorber.

    python bench/bench_triggers.py                               # embedded Postgres, temporary
    python bench/bench_triggers.py --db postgresql://... --rows 100000 --repeat 3

State the machine's load (``uptime``) beside any figure quoted from it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql

PLAIN, JOB = "bench_plain", "bench_job"
JOB_NAME = "bench"


def _db_url(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def _setup(url: str, dims: int, update_trigger: str | None = None) -> None:
    from vectorfill.jobs.registry import create_job
    from vectorfill.storage.db import connect, migrate

    migrate(url)
    with connect(url) as conn:
        for t in (PLAIN, JOB):
            conn.execute(
                sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, title text, body text, views int DEFAULT 0)").format(
                    sql.Identifier(t)
                )
            )
        create_job(
            conn,
            name=JOB_NAME,
            table=JOB,
            text_columns=None,
            template="{title}\n\n{body}",
            key_columns=None,
            model="bench-model",
            base_url="http://127.0.0.1:9/v1",
            api_key_env=None,
            dimensions=dims,
            **({"settings": _settings(update_trigger)} if update_trigger else {}),
        )


def _settings(update_trigger: str):
    from vectorfill.config import JobSettings

    return JobSettings(update_trigger=update_trigger)


def _tables(conn: psycopg.Connection) -> tuple[sql.Identifier, sql.Identifier]:
    from vectorfill.jobs.registry import load_job

    job = load_job(conn, JOB_NAME)
    v = job.active
    return sql.Identifier("vectorfill", v.queue_table), sql.Identifier("vectorfill", v.vector_table)


def _absorber(conn: psycopg.Connection) -> sql.Composed | None:
    """The statement that folds the job's change log into its queue (None: this release's
    triggers queue rows themselves)."""
    from vectorfill.jobs.registry import load_job
    from vectorfill.storage import sql as vsql

    if not hasattr(vsql, "absorb"):
        return None
    return vsql.absorb(load_job(conn, JOB_NAME))


def _steady(url: str, dims: int) -> None:
    """The job as after a backfill: nothing queued, a vector for every row; both tables vacuumed."""
    with psycopg.connect(url, autocommit=True) as conn:
        q, v = _tables(conn)
        absorb = _absorber(conn)
        if absorb is not None:
            conn.execute(absorb)
        conn.execute(sql.SQL("TRUNCATE {}").format(q))
        conn.execute(
            sql.SQL(
                """INSERT INTO {v} (k1, chunk_seq, embedding, input_hash, model)
                   SELECT s.id, 0, array_fill(0.1::real, ARRAY[%s])::vector, sha256(s.body::bytea), 'bench-model'
                     FROM {src} s
                   ON CONFLICT DO NOTHING"""
            ).format(v=v, src=sql.Identifier(JOB)),
            (dims,),
        )
        for t in (sql.Identifier(PLAIN), sql.Identifier(JOB), q, v):
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(t))


def _timed(url: str, run: Callable[[psycopg.Connection], None]) -> float:
    with psycopg.connect(url) as conn:
        t0 = time.perf_counter()
        run(conn)
        conn.commit()
        return time.perf_counter() - t0


def _statements(rows: int, single: int) -> list[tuple[str, Callable[[sql.Identifier], Callable]]]:
    def insert(t):
        return lambda c: c.execute(
            sql.SQL(
                "INSERT INTO {} (id, title, body) SELECT g, 'Title ' || g, "
                "'Body of row ' || g || ' about ' || md5(g::text) FROM generate_series(1, %s) g"
            ).format(t),
            (rows,),
        )

    def update(t):
        return lambda c: c.execute(sql.SQL("UPDATE {} SET body = body || ' (edited)'").format(t))

    def unchanged(t):
        return lambda c: c.execute(sql.SQL("UPDATE {} SET title = title, body = body").format(t))

    def other(t):
        return lambda c: c.execute(sql.SQL("UPDATE {} SET views = views + 1").format(t))

    def singles(t):
        stmt = sql.SQL("INSERT INTO {} (id, title, body) VALUES (%s, %s, %s)").format(t)

        def run(c):
            for i in range(rows + 1, rows + single + 1):
                c.execute(stmt, (i, f"Title {i}", f"Body of row {i}"))

        return run

    def autocommit_singles(t):
        stmt = sql.SQL("INSERT INTO {} (id, title, body) VALUES (%s, %s, %s)").format(t)

        def run(c):
            c.commit()
            c.autocommit = True
            for i in range(rows + single + 1, rows + 2 * single + 1):
                c.execute(stmt, (i, f"Title {i}", f"Body of row {i}"))
            c.autocommit = False

        return run

    def single_updates(t):
        stmt = sql.SQL("UPDATE {} SET views = views + 1 WHERE id = %s").format(t)

        def run(c):
            for i in range(1, single + 1):
                c.execute(stmt, (i,))

        return run

    def delete(t):
        return lambda c: c.execute(sql.SQL("DELETE FROM {} WHERE id <= %s").format(t), (rows,))

    return [
        ("bulk INSERT … SELECT", insert),
        ("bulk UPDATE of the embedded column", update),
        ("UPDATE with unchanged values", unchanged),
        ("UPDATE of a column not embedded", other),
        (f"{single:,} single-row INSERTs (one transaction)", singles),
        (f"{single:,} single-row INSERTs (autocommit, as an application)", autocommit_singles),
        (f"{single:,} single-row UPDATEs of a column not embedded (one transaction)", single_updates),
        ("bulk DELETE (vectors present)", delete),
    ]


def _reset(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for t in (PLAIN, JOB):
            conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(t)))  # the job's trigger empties its tables


def bench(url: str, *, rows: int, single: int, repeat: int, dims: int) -> list[dict]:
    stmts = _statements(rows, single)
    times: dict[str, dict[str, list[float]]] = {name: {PLAIN: [], JOB: [], "absorb": []} for name, _ in stmts}
    with psycopg.connect(url) as conn:
        absorb = _absorber(conn)
    for r in range(repeat):
        _reset(url)
        for i, (name, make) in enumerate(stmts):
            _steady(url, dims)
            order = (PLAIN, JOB) if (r + i) % 2 == 0 else (JOB, PLAIN)
            for t in order:
                times[name][t].append(_timed(url, make(sql.Identifier(t))))
                if t == JOB and absorb is not None:
                    times[name]["absorb"].append(_timed(url, lambda c: c.execute(absorb)))
        with psycopg.connect(url) as conn:  # the job kept its queue in step: nothing left but the singles
            q, _ = _tables(conn)
            if absorb is not None:
                conn.execute(absorb)
            n = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(q)).fetchone()[0]
        print(f"round {r + 1}/{repeat} done (queue holds {n:,} rows)", flush=True)
    out = []
    for name, _ in stmts:
        p, j = times[name][PLAIN], times[name][JOB]
        ratios = [b / a for a, b in zip(p, j, strict=True)]
        out.append(
            dict(
                statement=name,
                plain_s=statistics.median(p),
                job_s=statistics.median(j),
                ratio=statistics.median(j) / statistics.median(p),
                ratio_min=min(ratios),
                ratio_max=max(ratios),
                absorb_s=statistics.median(times[name]["absorb"]) if times[name]["absorb"] else None,
            )
        )
    return out


def _print(results: list[dict], rows: int, repeat: int) -> None:
    print()
    print(
        f"| write to the source table ({rows:,} rows) | plain table | with a vectorfill job | ratio (median of {repeat}) "
        "| per-round ratios | absorbing its change log (vectorfill, later) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        absorbed = "—" if r["absorb_s"] is None else f"{r['absorb_s'] * 1000:,.0f} ms"
        print(
            f"| {r['statement']} | {r['plain_s'] * 1000:,.0f} ms | {r['job_s'] * 1000:,.0f} ms | "
            f"**{r['ratio']:.2f}x** | {r['ratio_min']:.2f}–{r['ratio_max']:.2f}x | {absorbed} |"
        )
    print(f"\nload: {Path('/proc/loadavg').read_text().split()[:3] if Path('/proc/loadavg').exists() else '?'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", help="a Postgres server URL (a scratch database is created on it and dropped)")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument(
        "--single",
        type=int,
        default=10_000,
        help="single-row statements a round (2,000 swung 1.0-1.9x per round under load)",
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dims", type=int, default=256)
    ap.add_argument("--update-trigger", choices=["statement", "row"], default=None, help="the job's setting")
    args = ap.parse_args()

    root = None
    server = args.db
    if server is None:
        from vectorfill.local import pgembedded

        root = Path(tempfile.mkdtemp(prefix="vf-bench-triggers-"))
        server = pgembedded.start(root / "pgdata")
    name = f"vf_bench_triggers_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = _db_url(server, name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        _setup(url, args.dims, args.update_trigger)
        print(f"pid {os.getpid()}, load {os.getloadavg()}", flush=True)
        results = bench(url, rows=args.rows, single=args.single, repeat=args.repeat, dims=args.dims)
        _print(results, args.rows, args.repeat)
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if root is not None:
            from vectorfill.local import pgembedded

            pgembedded.stop(root / "pgdata")
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
