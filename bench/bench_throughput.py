"""Throughput: how close does a vectorfill backfill come to the physical limits?

Everything below is measured in one run, on one machine, against the same texts:

* **A, provider**: :class:`vectorfill.provider.client.EmbeddingsClient` posting ``--max-inputs``
  texts per request to the fake provider (``tests/fake_provider.py``, run as its own
  process), ``--concurrency`` requests in flight, no database; once with base64 and once
  with ``encoding_format="float"``.
* **B, database**: psycopg binary COPY of precomputed float32 vectors into a table
  ``(id bigint PRIMARY KEY, embedding vector(d))``, one transaction per ``--max-inputs``
  rows, one connection, no HTTP. A second row does the same with the column's storage set
  to ``EXTERNAL`` (by default pgvector values are offered to pglz first, which fails on
  float noise; the second row shows whether skipping that attempt matters).
* **P, pipelined**: the whole job done the plainest way, in this process: ``concurrency``
  httpx requests of ``--max-inputs`` texts in flight to the same fake provider, base64,
  parsed with orjson and decoded with pybase64 + numpy as the client does, and transactions
  of 1,000 rows, on ``--pipe-writers`` connections (default: ``concurrency``) side by side,
  that COPY the vectors (binary) into ``(id bigint PRIMARY KEY, embedding vector(d))`` and
  delete their rows from a queue table of the source's keys, whose pending texts the lanes
  read in key order (keyset pages). No Prefect, no leases, no
  token counting, no per-row checks. With the fake provider and Postgres on the same
  cores, this is the job's real limit on the machine: each vectorfill figure is reported
  as a share of it.
* **vectorfill**: ``asyncio.run(backfill(job))``, the real Prefect flow, in this process,
  on a job of ``--rows`` rows of ~100-token (cl100k) English-like texts. Prefect's
  temporary server is started beforehand by a warm-up backfill (``max_inputs x
  concurrency`` rows by default, so that ``concurrency`` full-size requests have run), so
  the timed run excludes its start-up (and the imports, the tokenizer load, the first
  connections and this process's first allocations of full-size requests, which make a
  cold first run markedly slower).
* **vectorfill without Prefect**: the same flow body and lanes, on a fresh job of the
  same texts, with every task replaced by its plain function (``task.fn``, retried on
  transient errors), each slice run in its lane by the engine's ``run_slice`` (as sync runs
  it) instead of as a task run, and the progress and summary artifacts by no-ops. Odd
  rounds run the flow, this and P in that order, even rounds in the reverse order, so that
  no side always meets the colder machine.

Prefect's share of wall time is estimated three ways:

1. **A/B**: ``1 - T(without Prefect) / T(with Prefect)``, both wall times of
   ``asyncio.run(...)`` on an identical job. This is the end-to-end cost, whatever it is
   made of (task-run bookkeeping on the event loop, events and log threads competing for
   the GIL, the temporary server's CPU competing for the machine's cores). Single runs of
   a few seconds swing by +-15% on this machine, so with ``--repeat`` the share of the
   median walls is reported too.
2. **CPU-based**: this process's CPU seconds in excess of the run without Prefect, plus
   the Prefect server's, over wall x CPUs of the Prefect run: the share of the machine that
   Prefect took (the bench saturates both cores, so its CPU is wall time taken from the
   work). Steadier than A/B, since it does not depend on two wall times.
3. **Instrumented**: in the Prefect run, each task's ``.fn`` is wrapped to time its body
   ("inner"), and each call site in the flow module is wrapped to time the whole task call
   as the lane sees it ("outer"); the flow's ``.fn`` and the progress-artifact calls are
   timed the same way. Then ``prefect_time = (flow wall - flow body) + (outer - inner of
   prepare, collect, switch and report, which the flow runs alone) + (sum of outer - inner of the
   slice tasks + artifact calls) / concurrency`` and the share is ``prefect_time / flow
   wall``. Dividing lane time by ``concurrency`` assumes the lanes' overheads overlap
   evenly, and the CPU Prefect's server takes from the machine is not counted.

Both runs also report seconds per task and per stage inside the slice task (claim, embed,
store; sums over the lanes, which overlap, so a sum can exceed the wall time), and CPU seconds per process over each timed window (this
process and its threads, Prefect's server, the fake provider, Postgres, and everything
else on the machine), which on a small machine shows who competes for the cores. A large
"other processes" figure means someone else's load skewed that phase: run again.

Peak RSS: ``ru_maxrss`` of this process right after the vectorfill runs (they run first,
before any baseline allocates, and the texts are streamed into Postgres, never held), the
RSS before the timed run for comparison, and ``VmHWM`` of each fake-provider process (it
keeps every text it was sent, so it grows with ``--rows``). ``--profile`` wraps the first
round's timed backfills (with and without Prefect) in pyinstrument (main thread,
``async_mode="disabled"``: idle time shows as the event loop's ``select``), prints the top
functions of each by cumulative and by self time and saves HTML and text reports and the
sessions (for ``pyinstrument --load``) under ``/tmp``; profiled runs are slower.

``--command`` also times what a user runs: the ``vectorfill backfill`` command as a
subprocess (imports, client set-up, the flow run, the summary; start-up included) on a
fresh job of the same texts, beside the in-process figure, with the local Prefect server of
a fresh ``VECTORFILL_HOME`` (in the temporary directory) already running, as it is for
every command but the first on a machine. The in-process runs then use that server too.
Reported apart: the command's **fixed cost**, the median wall of 3 more runs of the same
command with nothing left to embed, and the first command of the run (a small warm-up
job), which starts the local server. ``--new-home`` adds the command once more in a new
``VECTORFILL_HOME``, where it starts a local server of its own first (on the same Postgres,
whose Prefect database exists by then: the server's start, not its first migration).
Goals at 100,000 rows, against P: the flow in-process >= 80%, the whole command with the
local server running >= 65%.

Each timed phase also records the machine's 1-minute load average at its end: on a
machine shared with other work, the ratios within one round are what count.

Before each timed phase that writes to Postgres the database is settled (``VACUUM
(ANALYZE)`` and ``CHECKPOINT``), so that no phase pays for the previous one's writes.

``--repeat N`` runs every timed phase N times (a fresh job for each vectorfill run): on a
machine shared with other work single rounds swing; the round with the median ratio (the
flow in-process over P) is reported in full and each round's ratios are listed.

Usage::

    python bench/bench_throughput.py                         # 20,000 rows, 1536 dims
    python bench/bench_throughput.py --repeat 3              # three rounds, median reported
    python bench/bench_throughput.py --latency-ms 200
    python bench/bench_throughput.py --rows 5000 --profile
    python bench/bench_throughput.py --db postgresql://...   # instead of an embedded Postgres
    python bench/bench_throughput.py --command               # and the whole command, start-up included
    python bench/bench_throughput.py --rows 100000 --command --new-home --repeat 3

It starts and stops an embedded Postgres in a temporary directory (unless ``--db``), the
fake provider (restarted before each phase, so every phase meets full rate-limit buckets)
and Prefect's temporary server (with ``PREFECT_HOME`` in the temporary directory unless
``PREFECT_API_URL`` is set); everything is stopped and removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import inspect
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from _provider import FakeProvider  # bench/ is on sys.path when this file is run

REPO = Path(__file__).resolve().parents[1]
MODEL = "fake-embed"  # cl100k token counting in vectorfill.tokens, like OpenAI's models

try:
    import psutil
except ImportError:  # CPU-by-process numbers are skipped
    psutil = None


# --------------------------------------------------------------------------- texts

_SUBJECTS = (
    "the committee",
    "our team",
    "the city council",
    "a local farmer",
    "the new manager",
    "the research group",
    "every student",
    "the small bakery",
    "the library",
    "a young engineer",
    "the hospital",
    "the museum",
    "the railway company",
    "most customers",
    "the old harbour",
    "the school board",
    "a careful reader",
    "the regional office",
    "the weather service",
    "the author",
)
_VERBS = (
    "announced",
    "reviewed",
    "described",
    "questioned",
    "improved",
    "recorded",
    "planned",
    "delayed",
    "explained",
    "supported",
    "measured",
    "compared",
    "repaired",
    "published",
    "discussed",
    "rejected",
    "tested",
    "shared",
    "organised",
    "studied",
)
_OBJECTS = (
    "the annual budget",
    "a detailed report",
    "the morning schedule",
    "several new rules",
    "the water supply",
    "a long list of complaints",
    "the results of the survey",
    "the price of bread",
    "the plans for the bridge",
    "a series of short lectures",
    "the safety checks",
    "the summer festival",
    "the repairs to the roof",
    "a map of the valley",
    "the cost of heating",
    "the opening hours",
    "a set of photographs",
    "the traffic data",
    "the harvest figures",
    "a draft of the letter",
)
_TAILS = (
    "after a long meeting",
    "before the end of the month",
    "with some hesitation",
    "in front of a large crowd",
    "for the second time this year",
    "without much discussion",
    "despite the heavy rain",
    "on a quiet Tuesday afternoon",
    "as expected",
    "at short notice",
    "in the northern district",
    "with the help of volunteers",
    "during the winter",
    "for reasons nobody explained",
    "in great detail",
    "over several weeks",
)
_CONNECTORS = (
    "However,",
    "Later,",
    "Meanwhile,",
    "In the end,",
    "As a result,",
    "At first,",
    "According to witnesses,",
    "Surprisingly,",
    "Once again,",
    "For now,",
)
_TOPICS = (
    "Budget",
    "Harbour",
    "Weather",
    "Transport",
    "Schools",
    "Health",
    "Housing",
    "Farming",
    "Culture",
    "Energy",
    "Water",
    "Tourism",
    "Markets",
    "Libraries",
    "Roads",
    "Parks",
)


def _sentence(rng: random.Random) -> str:
    s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}"
    if rng.random() < 0.35:
        s = f"{rng.choice(_CONNECTORS)} {s}"
    if rng.random() < 0.3:
        s += f", and {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
    return s[0].upper() + s[1:] + "."


def iter_texts(n: int, tokens: int = 100, seed: int = 20_000, stats: dict | None = None, block: int = 2000):
    """``n`` deterministic news-like paragraphs of about ``tokens`` cl100k tokens each (cut
    at the last whole word within the limit), made ``block`` at a time so that a large
    ``n`` never sits in memory (this process's peak RSS is one of the results). ``stats``,
    when given, receives the token counts' ``count``, ``sum``, ``min`` and ``max``."""
    from vectorfill.provider.tokens import Cl100k

    counter = Cl100k()
    enc = counter._enc
    rng = random.Random(seed)
    for first in range(0, n, block):
        drafts = []
        for i in range(first, min(n, first + block)):
            parts = [f"{rng.choice(_TOPICS)} note {i + 1}: {_sentence(rng)}"]
            words = len(parts[0].split())
            while words < tokens * 0.95:  # ~1.1 tokens per word here; trimmed below
                parts.append(_sentence(rng))
                words += len(parts[-1].split())
            drafts.append(" ".join(parts))
        texts = []
        for draft, ids in zip(drafts, enc.encode_ordinary_batch(drafts), strict=False):
            if len(ids) > tokens:
                cut = enc.decode(ids[:tokens])
                draft = cut.rsplit(" ", 1)[0] if " " in cut else cut
            texts.append(draft)
        if stats is not None:
            counts = counter.count(texts)
            stats["count"] = stats.get("count", 0) + len(counts)
            stats["sum"] = stats.get("sum", 0) + sum(counts)
            stats["min"] = min(stats.get("min", 1 << 30), min(counts))
            stats["max"] = max(stats.get("max", 0), max(counts))
        yield from texts


# --------------------------------------------------------------------------- CPU accounting


def _proc_cpu(pid: int | None, *, with_children: bool = False) -> float:
    """CPU seconds of a process (and, for Postgres, of its exited and live children)."""
    if psutil is None or pid is None:
        return 0.0
    try:
        p = psutil.Process(pid)
        t = p.cpu_times()
        total = t.user + t.system
        if with_children:
            total += t.children_user + t.children_system
            for c in p.children():
                with contextlib.suppress(psutil.Error):
                    ct = c.cpu_times()
                    total += ct.user + ct.system
        return total
    except psutil.Error:
        return 0.0


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _thread_cpu() -> dict[str, float]:
    """CPU seconds per live thread of this process, by thread name."""
    if psutil is None:
        return {}
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = defaultdict(float)
    for t in psutil.Process().threads():
        out[names.get(t.id, f"tid {t.id}")] += t.user_time + t.system_time
    return dict(out)


def _machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (all processes), or 0 without psutil."""
    if psutil is None:
        return 0.0
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _prefect_server_pid(exclude: set[int]) -> int | None:
    if psutil is None:
        return None
    for c in psutil.Process().children(recursive=True):
        if c.pid in exclude:
            continue
        with contextlib.suppress(psutil.Error):
            if any("prefect" in part or "uvicorn" in part for part in c.cmdline()):
                return c.pid
    return None


@dataclass
class CpuWindow:
    """CPU seconds spent by each process between ``start()`` and ``stop()``."""

    pids: dict[str, tuple[int | None, bool]]
    wall: float = 0.0
    used: dict[str, float] = field(default_factory=dict)
    threads: dict[str, float] = field(default_factory=dict)
    load: float = 0.0
    """The machine's 1-minute load average at ``stop()`` (other work on the cores shows here)."""

    def start(self) -> CpuWindow:
        self._busy0 = _machine_busy()
        self._t0 = time.perf_counter()
        self._self0 = _self_cpu()
        self._threads0 = _thread_cpu()
        self._p0 = {k: _proc_cpu(pid, with_children=ch) for k, (pid, ch) in self.pids.items()}
        return self

    def stop(self) -> None:
        self.wall = time.perf_counter() - self._t0
        self.load = os.getloadavg()[0]
        self.used["this process"] = _self_cpu() - self._self0
        busy = _machine_busy() - self._busy0
        if any(ch for _pid, ch in self.pids.values()):
            time.sleep(0.3)  # Postgres: backends closed at the end count once their parent has reaped them
        for k, (pid, ch) in self.pids.items():
            if pid is not None:
                self.used[k] = _proc_cpu(pid, with_children=ch) - self._p0[k]
        if busy > 0:  # everything else on the machine (other users' work skews the numbers)
            self.used["other processes"] = max(0.0, busy - sum(self.used.values()))
        after = _thread_cpu()
        self.threads = {
            name: after[name] - self._threads0.get(name, 0.0)
            for name in after
            if after[name] - self._threads0.get(name, 0.0) > 0.005
        }


# --------------------------------------------------------------------------- database


def fill_source(url: str, table: str, texts) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
        conn.execute(
            sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, body text NOT NULL)").format(sql.Identifier(table))
        )
        with conn.cursor().copy(sql.SQL("COPY {} (id, body) FROM STDIN").format(sql.Identifier(table))) as copy:
            for i, text in enumerate(texts, 1):
                copy.write_row((i, text))
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))


def make_job(url: str, name: str, table: str, texts, args, base_url: str) -> None:
    from vectorfill.config import JobSettings
    from vectorfill.jobs.registry import create_job
    from vectorfill.storage.db import connect

    fill_source(url, table, texts)
    settings = JobSettings(
        max_inputs=args.max_inputs,
        concurrency=args.concurrency,
        encoding_format="base64",
        retries=args.retries,
    )
    with connect(url) as conn:
        create_job(
            conn,
            name=name,
            table=table,
            text_columns=["body"],
            template=None,
            key_columns=None,
            model=MODEL,
            base_url=base_url,
            api_key_env=None,
            dimensions=None if args.dims_unknown else args.dimensions,
            settings=settings,
        )


def settle(url: str) -> None:
    """VACUUM ANALYZE and CHECKPOINT, so that a timed run neither pays for the previous run's
    dirty buffers nor meets autovacuum working on the previous run's tables."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
        conn.execute("CHECKPOINT")


def drop_jobs(url: str, jobs: list[tuple[str, str]]) -> None:
    import psycopg
    from psycopg import sql

    from vectorfill.jobs.registry import drop_job
    from vectorfill.storage.db import connect

    for name, table in jobs:  # (no name: a table of the pipelined baseline)
        if name:
            with contextlib.suppress(Exception), connect(url) as conn:
                drop_job(conn, name)
        with contextlib.suppress(Exception), psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


# --------------------------------------------------------------------------- baseline A


async def _provider_baseline(base_url: str, texts: list[str], args, fmt: str) -> int:
    from vectorfill.errors import TransientProviderError
    from vectorfill.provider.client import EmbeddingsClient

    chunks = iter([texts[i : i + args.max_inputs] for i in range(0, len(texts), args.max_inputs)])
    done = 0
    async with EmbeddingsClient(
        base_url=base_url,
        model=MODEL,
        dimensions=args.dimensions,
        encoding_format=fmt,
        max_connections=max(8, args.concurrency * 2),
    ) as client:

        async def worker() -> None:
            nonlocal done
            for chunk in chunks:  # one shared iterator: each chunk is taken once
                for attempt in range(args.retries + 1):
                    try:
                        result = await client.embed(chunk)
                        break
                    except TransientProviderError as exc:  # rate limits, when --rpm/--tpm
                        if attempt == args.retries:
                            raise
                        await asyncio.sleep(exc.retry_after or 1.0)
                done += len(result.vectors)

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return done


def bench_provider(provider: FakeProvider, texts: list[str], args, fmt: str, extra_pids) -> dict:
    provider.restart()
    asyncio.run(_provider_baseline(provider.base_url, texts[:64], args, fmt))  # connections, imports
    provider.restart()  # full rate-limit buckets for the timed part
    window = CpuWindow({"fake provider": (provider.pid, False), **extra_pids}).start()
    rows = asyncio.run(_provider_baseline(provider.base_url, texts, args, fmt))
    window.stop()
    return dict(rows=rows, wall=window.wall, cpu=window.used, load=window.load)


# --------------------------------------------------------------------------- baseline B


def bench_copy(url: str, args, storage_external: bool, pids: dict) -> dict:
    import numpy as np
    import psycopg
    from pgvector.psycopg import register_vector

    rng = np.random.default_rng(7)
    pool = rng.standard_normal((min(args.rows, 4096), args.dimensions), dtype=np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    table = "bench_copy_external" if storage_external else "bench_copy"
    with psycopg.connect(url) as conn:
        register_vector(conn)
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, embedding vector({args.dimensions}) NOT NULL)")
        if storage_external:
            conn.execute(f"ALTER TABLE {table} ALTER COLUMN embedding SET STORAGE EXTERNAL")
        vec_oid = conn.execute("SELECT 'vector'::regtype::oid").fetchone()[0]
        conn.commit()
        window = CpuWindow(pids).start()
        for start in range(0, args.rows, args.max_inputs):
            with conn.cursor() as cur:
                with cur.copy(f"COPY {table} (id, embedding) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types([20, vec_oid])
                    for i in range(start, min(args.rows, start + args.max_inputs)):
                        copy.write_row((i, pool[i % len(pool)]))
            conn.commit()
        window.stop()
        n = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        conn.execute(f"DROP TABLE {table}")
        conn.commit()
    return dict(rows=n, wall=window.wall, cpu=window.used, load=window.load)


# --------------------------------------------------------------------------- baseline P

#: Rows per transaction of the pipelined baseline's writer.
PIPE_TXN_ROWS = 1000


def make_pipe_tables(url: str, source: str, texts, dimensions: int) -> tuple[str, str]:
    """The pipelined baseline's tables (untimed): ``source`` (as a job's), a queue of its
    keys, and ``(id bigint PRIMARY KEY, embedding vector(d))`` for the vectors."""
    import psycopg
    from psycopg import sql

    fill_source(url, source, texts)
    queue, vectors = f"{source}_queue", f"{source}_vectors"
    with psycopg.connect(url) as conn:
        for table in (queue, vectors):
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
        conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY)").format(sql.Identifier(queue)))
        conn.execute(sql.SQL("INSERT INTO {} SELECT id FROM {}").format(sql.Identifier(queue), sql.Identifier(source)))
        conn.execute(
            sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, embedding vector({}) NOT NULL)").format(
                sql.Identifier(vectors), sql.Literal(dimensions)
            )
        )
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(queue)))
    return queue, vectors


def _copy_payload(ids, vectors) -> bytes:
    """The binary COPY stream of ``(id bigint, embedding vector)`` rows, one numpy record a
    row (pgvector's ``vector_recv``: int16 dims, int16 unused, big-endian float32)."""
    import numpy as np

    n, d = vectors.shape
    record = np.dtype(
        [
            ("nfields", ">i2"),
            ("id_len", ">i4"),
            ("id", ">i8"),
            ("vec_len", ">i4"),
            ("dims", ">u2"),
            ("unused", ">u2"),
            ("vec", ">f4", (d,)),
        ]
    )
    rows = np.zeros(n, dtype=record)
    rows["nfields"], rows["id_len"], rows["id"] = 2, 8, ids
    rows["vec_len"], rows["dims"], rows["vec"] = 4 * d + 4, d, vectors
    return b"PGCOPY\n\xff\r\n\x00" + bytes(8) + rows.tobytes() + b"\xff\xff"


async def _pipelined(url: str, base_url: str, args, source: str, queue: str, table: str) -> int:
    """Embed every queued row of ``source`` into ``table``; the number of rows stored.

    ``concurrency`` lanes each take the next ``max_inputs`` pending texts in key order
    (keyset pages under one lock, on one connection: each row is read once), POST them
    with httpx, parse with orjson and decode the base64 with pybase64 into one numpy array,
    as the client does. The decoded answers (at most ``concurrency`` waiting) are cut into
    transactions of :data:`PIPE_TXN_ROWS` rows, each of which COPYs its vectors and deletes
    its queue rows, on ``--pipe-writers`` connections side by side. No Prefect, no leases,
    no token counting, no per-row checks.
    """
    import httpx
    import numpy as np
    import orjson
    import psycopg
    from psycopg import sql
    from pybase64 import b64decode

    # the bound on s.id too: a merge join would otherwise scan the source from its first key
    # for every page (Postgres does not carry an inequality across the join's equality)
    page = sql.SQL(
        "SELECT q.id, s.body FROM {} q JOIN {} s USING (id) WHERE q.id > %(after)s AND s.id > %(after)s "
        "ORDER BY q.id LIMIT %(n)s"
    ).format(sql.Identifier(queue), sql.Identifier(source))
    copy_sql = sql.SQL("COPY {} (id, embedding) FROM STDIN (FORMAT BINARY)").format(sql.Identifier(table))
    dequeue = sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(sql.Identifier(queue))
    request = {"model": MODEL, "encoding_format": "base64"}
    if not args.dims_unknown:
        request["dimensions"] = args.dimensions
    answered: asyncio.Queue = asyncio.Queue(maxsize=args.concurrency)  # decoded, not yet stored
    reading = asyncio.Lock()
    last_key = 0
    stored = 0
    writers = [await psycopg.AsyncConnection.connect(url) for _ in range(args.pipe_writers or args.concurrency)]
    idle: asyncio.Queue = asyncio.Queue()
    for conn in writers:
        idle.put_nowait(conn)

    async with (
        await psycopg.AsyncConnection.connect(url, autocommit=True) as reader,
        httpx.AsyncClient(
            timeout=60.0,
            limits=httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency),
            headers={"Content-Type": "application/json"},
        ) as http,
    ):

        async def next_page() -> list[tuple]:
            nonlocal last_key
            async with reading:
                rows = await (await reader.execute(page, {"after": last_key, "n": args.max_inputs})).fetchall()
                if rows:
                    last_key = rows[-1][0]
                return rows

        async def lane() -> None:
            while rows := await next_page():
                body = orjson.dumps({**request, "input": [r[1] for r in rows]})
                for attempt in range(args.retries + 1):
                    response = await http.post(f"{base_url}/embeddings", content=body)
                    if response.status_code != 429 or attempt == args.retries:  # 429s: with --rpm/--tpm
                        break
                    await asyncio.sleep(float(response.headers.get("retry-after") or 1.0))
                response.raise_for_status()
                data = sorted(orjson.loads(response.content)["data"], key=lambda item: item["index"])
                if len(data) != len(rows):
                    raise RuntimeError(f"sent {len(rows)} inputs, got {len(data)} embeddings")
                raw = bytearray().join(b64decode(item["embedding"], validate=True) for item in data)
                vectors = np.frombuffer(raw, dtype="<f4").reshape(len(rows), -1)
                await answered.put((np.fromiter((r[0] for r in rows), np.int64, len(rows)), vectors))

        async def write(conn, ids, vectors) -> None:
            nonlocal stored
            try:
                async with conn.transaction():
                    async with conn.cursor().copy(copy_sql) as copy:
                        await copy.write(_copy_payload(ids, vectors))
                    await conn.execute(dequeue, (ids.tolist(),))
                stored += len(ids)
            finally:
                idle.put_nowait(conn)

        async def store(group: asyncio.TaskGroup) -> None:
            ids, vectors = [], []  # answers held until PIPE_TXN_ROWS rows are in hand
            held = 0
            while True:
                answer = await answered.get()
                if answer is not None:
                    ids.append(answer[0])
                    vectors.append(answer[1])
                    held += len(answer[0])
                if held and (held >= PIPE_TXN_ROWS or answer is None):
                    all_ids, all_vectors = np.concatenate(ids), np.concatenate(vectors)
                    whole = held if answer is None else held - held % PIPE_TXN_ROWS
                    for start in range(0, whole, PIPE_TXN_ROWS):
                        conn = await idle.get()  # a free writer: at most one transaction each
                        end = min(whole, start + PIPE_TXN_ROWS)
                        group.create_task(write(conn, all_ids[start:end], all_vectors[start:end]))
                    ids, vectors = [all_ids[whole:]], [all_vectors[whole:]]
                    held -= whole
                if answer is None:
                    return

        async def requests() -> None:
            async with asyncio.TaskGroup() as lanes:
                for _ in range(args.concurrency):
                    lanes.create_task(lane())
            await answered.put(None)

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(store(group))
                group.create_task(requests())
        finally:
            for conn in writers:
                await conn.close()
    return stored


def bench_pipelined(url: str, provider: FakeProvider, args, source: str, tables: tuple[str, str], pids) -> dict:
    """Baseline P, timed: every row of ``source`` embedded and stored by :func:`_pipelined`."""
    import psycopg
    from psycopg import sql

    queue, table = tables
    window = CpuWindow({"fake provider": (provider.pid, False), **pids}).start()
    rows = asyncio.run(_pipelined(url, provider.base_url, args, source, queue, table))
    window.stop()
    with psycopg.connect(url) as conn:
        left = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(queue))).fetchone()[0]
        n = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0]
    if left or n != rows:
        raise RuntimeError(f"the pipelined baseline stored {n} rows ({rows} counted) and left {left} queued")
    return dict(rows=n, wall=window.wall, cpu=window.used, load=window.load)


# --------------------------------------------------------------------------- vectorfill


def flow_module():
    """The module ``vectorfill.flows.backfill`` (the package attribute of that name is the flow)."""
    import importlib

    return importlib.import_module("vectorfill.flows.backfill")


@dataclass
class StageClock:
    """Seconds and calls per task ("inner": its body, "outer": the whole call as the flow
    sees it, Prefect's engine included) and per stage inside the slice task ("stage")."""

    inner: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    outer: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    stage: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    stage_calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    flow_body: float = 0.0

    def add(self, kind: str, name: str, seconds: float) -> None:
        getattr(self, kind)[name] += seconds
        if kind == "inner":
            self.calls[name] += 1
        elif kind == "stage":
            self.stage_calls[name] += 1


def _timed(fn, record):
    """The async function ``fn`` wrapped so that each call's duration goes to ``record``
    (every task and stage of the flow is async)."""

    @functools.wraps(fn)
    async def timed(*a, **k):
        t0 = time.perf_counter()
        try:
            return await fn(*a, **k)
        finally:
            record(time.perf_counter() - t0)

    return timed


def _outer(task, record):
    """Stands in for a Task at its call site in the flow module: times the whole call,
    Prefect's engine included."""

    async def call(*a, **k):
        return await task(*a, **k)

    return _timed(call, record)


class _Bare:
    """Stands in for a Task without Prefect: calls its function, and retries it at once on
    a transient error, up to ``retries`` times."""

    def __init__(self, fn, retries: int) -> None:
        self.fn, self.retries = fn, retries

    def __call__(self, *a, **k):
        from prefect.utilities.annotations import BaseAnnotation

        from vectorfill.errors import is_transient

        # a caller may quote() its arguments for Prefect; a plain call gets the values
        a = tuple(x.unwrap() if isinstance(x, BaseAnnotation) else x for x in a)

        async def call():
            for attempt in range(self.retries + 1):
                try:
                    return await self.fn(*a, **k)
                except Exception as exc:
                    if attempt == self.retries or not is_transient(exc):
                        raise

        return call()


#: The flow module's tasks, by the global name it calls them by.
_TASK_GLOBALS = {
    "prepare": "prepare_run",
    "collect": "collect_batches",
    "switch": "switch_versions",
    "report": "report_run",
}
#: The stage functions a slice calls, by their global name in the engine's ``slice`` module.
_STAGES = {"claim": "claim_rows", "embed": "embed_request", "store": "store_vectors"}


def _artifact_functions(module) -> list[str]:
    """Names of Prefect's artifact functions imported into ``module`` (the core changes)."""
    return [
        n
        for n, v in vars(module).items()
        if "artifact" in n and callable(v) and getattr(v, "__module__", "").startswith("prefect.")
    ]


def _no_op_like(fn):
    if inspect.iscoroutinefunction(fn):

        async def no_op_async(*a, **k):
            return None

        return no_op_async
    return lambda *a, **k: None


@contextlib.contextmanager
def instrumented(mode: str):
    """Patch the flow for one run: ``mode`` "prefect" (time bodies and call sites) or
    "bare" (tasks replaced by their timed functions, each slice run by the engine's own
    runner, ``run_slice``, as sync runs it, and artifacts by no-ops). Either way the stages
    inside each slice are timed.

    What is patched: the flow module's task globals (:data:`_TASK_GLOBALS`) and its
    ``BACKFILL`` policy; ``slice_task`` in ``vectorfill.tasks.slice`` (which the policy's
    runner, ``as_task_run``, calls); the stage functions in ``vectorfill.engine.slice``
    (:data:`_STAGES`); Prefect's artifact functions in ``vectorfill.tasks.report``."""
    import importlib

    fb = flow_module()
    task_mod = importlib.import_module("vectorfill.tasks.slice")
    engine_mod = importlib.import_module("vectorfill.engine.slice")
    report_mod = importlib.import_module("vectorfill.tasks.report")
    clock = StageClock()
    tasks = {stage: getattr(fb, g) for stage, g in _TASK_GLOBALS.items()}
    tasks["slice"] = task_mod.fill_slice
    saved: list[tuple[object, str, object]] = []  # (object, attribute, original value)

    def patch(obj, attr: str, value) -> None:
        saved.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, value)

    try:
        for stage, g in _STAGES.items():
            patch(engine_mod, g, _timed(getattr(engine_mod, g), functools.partial(clock.add, "stage", stage)))
        if mode == "prefect":
            for name, t in tasks.items():
                patch(t, "fn", _timed(t.fn, functools.partial(clock.add, "inner", name)))
            for name, g in _TASK_GLOBALS.items():
                patch(fb, g, _outer(tasks[name], functools.partial(clock.add, "outer", name)))
            slice_task = task_mod.slice_task
            record_slice = functools.partial(clock.add, "outer", "slice")
            patch(task_mod, "slice_task", lambda attempts: _outer(slice_task(attempts), record_slice))
            for name in _artifact_functions(report_mod):
                if "progress" in name:
                    patch(
                        report_mod,
                        name,
                        _timed(getattr(report_mod, name), functools.partial(clock.add, "outer", "artifacts")),
                    )

            def record_body(s: float) -> None:
                clock.flow_body = s

            patch(fb.backfill, "fn", _timed(fb.backfill.fn, record_body))
        else:
            for name, g in _TASK_GLOBALS.items():
                timed = _timed(tasks[name].fn, functools.partial(clock.add, "inner", name))
                patch(fb, g, _Bare(timed, tasks[name].retries))
            # each slice in its lane, retried by the engine as Prefect would retry the task
            run_slice = _timed(engine_mod.run_slice, functools.partial(clock.add, "inner", "slice"))
            patch(fb, "BACKFILL", fb.BACKFILL.with_runner(run_slice))
            for name in _artifact_functions(report_mod):  # progress and summary artifacts
                patch(report_mod, name, _no_op_like(getattr(report_mod, name)))
        yield clock
    finally:
        for obj, attr, value in reversed(saved):
            setattr(obj, attr, value)


def run_backfill(job: str, mode: str, args, cpu_pids, profile: bool = False) -> dict:
    fb = flow_module()

    profiler = None
    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001, async_mode="disabled")
    rss_before = psutil.Process().memory_info().rss // 1024 if psutil else None
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with instrumented(mode) as clock:
        window = CpuWindow(cpu_pids).start()
        if profiler:
            profiler.start()
        if mode == "prefect":
            summary = asyncio.run(fb.backfill(job))
        else:  # the flow's body returns its final state (Prefect unwraps it for a flow call)
            summary = asyncio.run(fb.backfill.fn(job))
            summary = getattr(summary, "data", summary)
        if profiler:
            profiler.stop()
        window.stop()
    return dict(
        summary=summary,
        rows=summary.embedded,
        wall=window.wall,
        cpu=window.used,
        load=window.load,
        threads=window.threads,
        clock=clock,
        rss_before_kib=rss_before,
        maxrss_before_kib=maxrss_before,
        maxrss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        profiler=profiler,
    )


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_command(job: str, cpu_pids, env: dict) -> dict:
    """``vectorfill backfill JOB --json`` as a subprocess, as a user runs it: wall time from
    start to exit, and its summary."""
    import json

    window = CpuWindow(cpu_pids).start()
    cpu0 = _children_cpu()
    proc = subprocess.run(
        [sys.executable, "-m", "vectorfill.cli", "backfill", job, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    window.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"vectorfill backfill {job} failed: {proc.stderr[-2000:]}")
    window.used["this process"] = window.used.get("this process", 0.0) + _children_cpu() - cpu0  # the command's CPU
    summary = json.loads(proc.stdout)
    return dict(
        summary=summary,
        rows=summary["embedded"],
        wall=window.wall,
        cpu=window.used,
        load=window.load,
        threads={},
        flow_s=summary["duration_s"],
        stderr=proc.stderr,
    )


def stop_home(env: dict) -> None:
    """``vectorfill stop`` in the home of ``env``: its local Prefect server (it has no
    embedded Postgres of its own)."""
    subprocess.run(
        [sys.executable, "-m", "vectorfill.cli", "stop"], env=env, capture_output=True, text=True, timeout=120
    )


def command_env(url: str) -> dict:
    """A user's environment: the database, and the Prefect API left for the command to find
    (the local server of ``VECTORFILL_HOME``), as it does for a user."""
    env = dict(os.environ, VECTORFILL_DATABASE_URL=url)
    for key in ("PREFECT_API_URL", "PREFECT_API_SSL_CERT_FILE"):
        env.pop(key, None)
    return env


# --------------------------------------------------------------------------- profile report


def profile_report(profiler, top: int) -> str:
    session = profiler.last_session
    root = session.root_frame()
    if root is None:
        return "(no samples)"
    cumulative: dict[str, float] = defaultdict(float)
    own: dict[str, float] = defaultdict(float)
    stack = [(root, frozenset())]
    while stack:
        frame, active = stack.pop()
        key = None
        if not frame.is_synthetic:
            key = f"{frame.function}  {frame.file_path_short}:{frame.line_no}"
            if key not in active:  # count recursion once
                cumulative[key] += frame.time
            own[key] += frame.total_self_time
        for child in frame.children:
            if frame.is_synthetic or key is None:
                stack.append((child, active))
            else:
                stack.append((child, active | {key}))
    total = root.time or 1.0
    lines = [f"pyinstrument, main thread, {total:.2f} s sampled", "", "top by cumulative time:", ""]
    lines.append("| cumulative s | % | function |")
    lines.append("|---:|---:|---|")
    for key, t in sorted(cumulative.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {t:.3f} | {100 * t / total:.1f} | `{key}` |")
    lines += ["", "top by self time:", "", "| self s | % | function |", "|---:|---:|---|"]
    for key, t in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {t:.3f} | {100 * t / total:.1f} | `{key}` |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- report


def _rate(d: dict) -> float:
    return d["rows"] / d["wall"] if d["wall"] > 0 else 0.0


def _bench_cpu_per_krow(d: dict) -> float:
    """CPU seconds the benchmark's processes (not other work on the machine) spent per
    1,000 rows of a phase."""
    cpu = sum(v for k, v in d.get("cpu", {}).items() if k != "other processes")
    return 1000 * cpu / d["rows"] if d["rows"] else 0.0


def _say(what: str, d: dict) -> None:
    """One phase's rate as it ends, with the machine's load then."""
    print(f"{what}: {_rate(d):,.0f} rows/s (load {d['load']:.2f})", flush=True)


def _mib(kib: int | None) -> str:
    return f"{kib / 1024:,.0f} MiB" if kib else "n/a"


def core_version() -> str:
    """The commit measured, and the tracked files changed on top of it (others edit the core)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "diff", "--name-only", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.split()
    except OSError:
        return "unknown"
    return head + (f" + uncommitted changes to {', '.join(dirty)}" if dirty else "")


def _round_ratio(results: dict) -> float:
    """vectorfill's rate over the pipelined baseline P, else over the lower of A base64 and B
    (or its own rate without baselines)."""
    if "p_pipe" in results:
        return _rate(results["vf"]) / _rate(results["p_pipe"])
    if "a_b64" in results and "b_copy" in results:
        return _rate(results["vf"]) / min(_rate(results["a_b64"]), _rate(results["b_copy"]))
    return _rate(results["vf"])


def _prefect_cpu_share(results: dict) -> float:
    """Prefect's CPU over what the machine had during the flow run: this process's CPU in
    excess of the run without Prefect, plus the Prefect server's, over wall x CPUs."""
    vf, bare = results["vf"], results["vf_bare"]
    extra = vf["cpu"].get("this process", 0.0) - bare["cpu"].get("this process", 0.0)
    extra += vf["cpu"].get("Prefect server", 0.0) - bare["cpu"].get("Prefect server", 0.0)
    return max(0.0, extra) / (vf["wall"] * (os.cpu_count() or 1))


def rounds_report(args, rounds: list[dict]) -> str:
    out = ["Every round (each ratio measured within its round):", ""]
    out.append(
        "| round | P rows/s | vectorfill rows/s | vectorfill / P | no Prefect rows/s | A base64 rows/s | B rows/s "
        "| vectorfill / lower of A and B | Prefect share, A/B | other processes' CPU s during vectorfill "
        "| load (1 min) after vectorfill | P's CPU per row / vectorfill's |"
    )
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, r in enumerate(rounds, 1):

        def cell(key: str, r: dict = r) -> str:
            return f"{_rate(r[key]):,.0f}" if key in r else "-"

        def cpu_p(key: str, r: dict = r) -> str:
            if "p_pipe" not in r or key not in r or not _bench_cpu_per_krow(r[key]):
                return "-"
            return f"{100 * _bench_cpu_per_krow(r['p_pipe']) / _bench_cpu_per_krow(r[key]):.0f}%"

        over_p = f"{100 * _rate(r['vf']) / _rate(r['p_pipe']):.0f}%" if "p_pipe" in r else "-"
        ratio = f"{100 * _rate(r['vf']) / min(_rate(r['a_b64']), _rate(r['b_copy'])):.0f}%" if "b_copy" in r else "-"
        share = f"{100 * (1 - r['vf_bare']['wall'] / r['vf']['wall']):.1f}%" if "vf_bare" in r else "-"
        other = r["vf"].get("cpu", {}).get("other processes")
        out.append(
            f"| {i} | {cell('p_pipe')} | {cell('vf')} | {over_p} | {cell('vf_bare')} | {cell('a_b64')} "
            f"| {cell('b_copy')} | {ratio} | {share} | {'-' if other is None else f'{other:.2f}'} "
            f"| {r['vf']['load']:.2f} | {cpu_p('vf')} |"
        )
    with_bare = [r for r in rounds if "vf_bare" in r]
    if len(with_bare) > 1:
        flow = sorted(r["vf"]["wall"] for r in with_bare)[len(with_bare) // 2]
        bare = sorted(r["vf_bare"]["wall"] for r in with_bare)[len(with_bare) // 2]
        cpu = sorted(_prefect_cpu_share(r) for r in with_bare)[len(with_bare) // 2]
        out.append("")
        out.append(
            f"Prefect share over {len(with_bare)} rounds: A/B of the median walls "
            f"(1 - {bare:.2f} s / {flow:.2f} s) {100 * (1 - bare / flow):.1f}%; "
            f"CPU-based, median round {100 * cpu:.1f}% (goal <= 5%)"
        )
    cmd_rounds = [r for r in rounds if "vf_cmd" in r and "a_b64" in r and "b_copy" in r and "p_pipe" in r]
    if cmd_rounds:
        out.append("")
        out.append(
            "| round | command rows/s | command / P | command / lower of A and B | fixed cost s "
            "| new home rows/s | new home / P | load (1 min) after the command | P's CPU per row / the command's |"
        )
        out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for i, r in enumerate(rounds, 1):
            if r in cmd_rounds:
                lower = min(_rate(r["a_b64"]), _rate(r["b_copy"]))
                fixed = r.get("vf_fixed", {}).get("wall")
                home = r.get("vf_home")
                home_p = "-" if home is None else f"{100 * _rate(home) / _rate(r['p_pipe']):.0f}%"
                cmd_cpu = f"{100 * _bench_cpu_per_krow(r['p_pipe']) / (_bench_cpu_per_krow(r['vf_cmd']) or 1.0):.0f}%"
                out.append(
                    f"| {i} | {_rate(r['vf_cmd']):,.0f} | {100 * _rate(r['vf_cmd']) / _rate(r['p_pipe']):.0f}% "
                    f"| {100 * _rate(r['vf_cmd']) / lower:.0f}% | {'-' if fixed is None else f'{fixed:.2f}'} "
                    f"| {'-' if home is None else f'{_rate(home):,.0f}'} "
                    f"| {home_p} "
                    f"| {r['vf_cmd']['load']:.2f} | {cmd_cpu} |"
                )

    def spread(what: str, ratios: list[float]) -> None:
        if ratios:
            ratios.sort()
            out.append(
                f"{what} over {len(ratios)} rounds: min {100 * ratios[0]:.0f}%, "
                f"median {100 * ratios[len(ratios) // 2]:.0f}%, max {100 * ratios[-1]:.0f}%"
            )

    out.append("")
    with_p = [r for r in rounds if "p_pipe" in r]
    spread("vectorfill in-process / P", [_rate(r["vf"]) / _rate(r["p_pipe"]) for r in with_p])
    spread("the command / P", [_rate(r["vf_cmd"]) / _rate(r["p_pipe"]) for r in with_p if "vf_cmd" in r])

    def cpu_ratio(r: dict, key: str) -> float:
        return _bench_cpu_per_krow(r["p_pipe"]) / (_bench_cpu_per_krow(r[key]) or 1.0)

    spread("P's CPU per row / the flow's (in-process)", [cpu_ratio(r, "vf") for r in with_p])
    spread("P's CPU per row / the command's", [cpu_ratio(r, "vf_cmd") for r in with_p if "vf_cmd" in r])
    spread(
        "the command in a new home / P", [_rate(r["vf_home"]) / _rate(r["p_pipe"]) for r in with_p if "vf_home" in r]
    )
    spread(
        "vectorfill / lower of A and B",
        [_rate(r["vf"]) / min(_rate(r["a_b64"]), _rate(r["b_copy"])) for r in rounds if "b_copy" in r],
    )
    return "\n".join(out)


def report(args, meta: dict, results: dict) -> str:
    out: list[str] = []
    short = {
        "a_b64": "A base64",
        "a_float": "A float",
        "b_copy": "B COPY",
        "b_copy_ext": "B COPY, EXTERNAL",
        "vf": "vectorfill (Prefect)",
        "vf_bare": "vectorfill (no Prefect)",
        "p_pipe": "P pipelined",
    }
    lat = f"{args.latency_ms:g} ms"
    out.append(
        f"## vectorfill throughput: {args.rows:,} rows, ~{meta['tokens_mean']:.0f} tokens "
        f"(cl100k, {meta['tokens_min']}-{meta['tokens_max']}), {args.dimensions} dims, provider "
        f"latency {lat}, rpm {args.rpm or '-'}, tpm {args.tpm or '-'}, max_inputs {args.max_inputs}, "
        f"concurrency {args.concurrency}, {os.cpu_count()} CPUs"
    )
    out.append("")
    out.append(f"core measured: {meta['core']}" + (f"; round {meta['round']}" if meta.get("round") else ""))
    out.append("")
    out.append("| measurement | rows | wall s | rows/s | load (1 min) after |")
    out.append("|---|---:|---:|---:|---:|")
    labels = {
        "p_pipe": f"P: pipelined: httpx ({args.concurrency} in flight) -> base64 -> COPY, "
        f"{PIPE_TXN_ROWS:,} rows a transaction, from a queue table",
        "a_b64": f"A: EmbeddingsClient -> fake provider process, base64, {args.concurrency} in flight",
        "a_float": "A: same, encoding_format=float",
        "b_copy": "B: psycopg binary COPY -> vector(d) table (default storage)",
        "b_copy_ext": "B: same, column STORAGE EXTERNAL",
        "vf": "vectorfill backfill, Prefect flow" + (" (profiled)" if results["vf"].get("profiler") else ""),
        "vf_bare": "vectorfill lanes without Prefect (task.fn)"
        + (" (profiled)" if results.get("vf_bare", {}).get("profiler") else ""),
        "vf_cmd": "`vectorfill backfill` command, subprocess, start-up included (local server running)",
        "vf_fixed": "... its fixed cost: the same command with nothing to embed (median of 3)",
        "vf_home": "`vectorfill backfill` command in a new home (its local server's start included)",
    }
    for key, label in labels.items():
        if key in results:
            d = results[key]
            load = f"{d['load']:.2f}" if "load" in d else "-"
            out.append(f"| {label} | {d['rows']:,} | {d['wall']:.2f} | {_rate(d):,.0f} | {load} |")

    if "p_pipe" in results:
        p = _rate(results["p_pipe"])
        out.append("")
        out.append(f"Against the pipelined baseline P ({p:,.0f} rows/s), this job's limit on this machine:")
        out.append("")
        out.append(
            "| configuration | rows/s | / P | goal at 100,000 rows | CPU s per 1,000 rows | P's CPU / its CPU "
            "| load (1 min) after |"
        )
        out.append("|---|---:|---:|---|---:|---:|---:|")
        p_cpu = _bench_cpu_per_krow(results["p_pipe"])
        for key, label, goal in (
            ("p_pipe", "P, pipelined", ""),
            ("vf", "the flow, in-process", ">= 80%"),
            ("vf_bare", "the flow's lanes without Prefect", ""),
            ("vf_cmd", "the whole `vectorfill backfill` command, local server running", ">= 65%"),
            ("vf_home", "the whole command in a new home", ""),
        ):
            if key in results:
                d = results[key]
                cpu = _bench_cpu_per_krow(d)
                out.append(
                    f"| {label} | {_rate(d):,.0f} | {100 * _rate(d) / p:.0f}% | {goal} | {cpu:.2f} "
                    f"| {100 * p_cpu / cpu if cpu else 0:.0f}% | {d['load']:.2f} |"
                )
        out.append("")
        out.append(
            "(CPU: this process or the command, Prefect's server, the fake provider and Postgres, over the "
            "phase; unlike rows/s it hardly moves with other work on the machine, so on a loaded machine "
            "P's CPU / its CPU is the steadier ratio)"
        )

    vf = results["vf"]
    r_vf = _rate(vf)
    out.append("")
    out.append("| ratio / metric | value | goal |")
    out.append("|---|---:|---|")
    for key in ("a_b64", "a_float", "b_copy", "b_copy_ext"):
        if key in results:
            out.append(f"| vectorfill / {short[key]} | {100 * r_vf / _rate(results[key]):.0f}% | |")
    if "a_b64" in results and "b_copy" in results:
        lower = min(_rate(results["a_b64"]), _rate(results["b_copy"]))
        out.append(f"| vectorfill / lower of A base64 and B ({lower:,.0f} rows/s) | {100 * r_vf / lower:.0f}% | |")
    if "vf_cmd" in results:
        cmd = results["vf_cmd"]
        if "a_b64" in results and "b_copy" in results:
            out.append(
                f"| `vectorfill backfill` command / lower of A base64 and B | {100 * _rate(cmd) / lower:.0f}% | |"
            )
        out.append(f"| command / in-process flow (rows/s) | {100 * _rate(cmd) / r_vf:.0f}% | |")
        out.append(
            f"| ... command wall - its flow's own duration (start-up, imports, exit) | {cmd['wall'] - cmd['flow_s']:.2f} s | |"
        )
        if "vf_fixed" in results:
            out.append(
                f"| ... fixed cost: the command with nothing to embed | {results['vf_fixed']['wall']:.2f} s | <= 3 s |"
            )
        if meta.get("first_command_s") is not None:
            out.append(
                f"| first command of the run ({args.warmup_rows:,} rows), local server start included "
                f"| {meta['first_command_s']:.2f} s | <= 30 s |"
            )
    if args.latency_ms:
        out.append(f"| vectorfill rows/s at {lat} latency | {r_vf:,.0f} | >= 2,500 at 200 ms |")
    if "vf_bare" in results:
        share = 1 - results["vf_bare"]["wall"] / vf["wall"]
        out.append(f"| Prefect share of wall time, A/B (1 - bare/flow) | {100 * share:.1f}% | <= 5% |")
        out.append(
            f"| Prefect share, CPU-based (its extra CPU here + its server's, over wall x CPUs) "
            f"| {100 * _prefect_cpu_share(results):.1f}% | <= 5% |"
        )
    clock: StageClock = vf["clock"]
    flow_over = max(0.0, vf["wall"] - clock.flow_body)  # creating and finishing the flow run

    def over(stages) -> float:
        return sum(clock.outer.get(s, 0.0) - clock.inner.get(s, 0.0) for s in stages)

    sequential = over(("prepare", "collect", "switch", "report"))  # run by the flow body, one at a time
    in_lanes = over(("slice",))
    artifacts = clock.outer.get("artifacts", 0.0)
    est = flow_over + sequential + (in_lanes + artifacts) / args.concurrency
    out.append(f"| Prefect share of wall time, instrumented (see docstring) | {100 * est / vf['wall']:.1f}% | <= 5% |")
    out.append(f"| ... flow-run overhead (wall - flow body) | {flow_over:.2f} s | |")
    calls = clock.calls.get("slice", 0)
    if calls:
        out.append(
            f"| ... task-run overhead per slice task (outer - inner) | {1000 * in_lanes / calls:.1f} ms x {calls} | |"
        )
    out.append(f"| ... prepare + collect + switch + report task-run overhead | {sequential:.2f} s | |")
    out.append(f"| ... progress-artifact calls (lane time) | {artifacts:.2f} s | |")
    rss = meta.get("rss", vf)  # the first round's: later rounds follow baselines
    out.append(
        f"| peak RSS of this process after the vectorfill runs (ru_maxrss) | {_mib(rss['maxrss_kib'])} | 200k run within 10% of 20k |"
    )
    out.append(
        f"| ... before the timed run: RSS / ru_maxrss (warm-up, imports, Prefect) | "
        f"{_mib(rss['rss_before_kib'])} / {_mib(rss['maxrss_before_kib'])} | |"
    )
    out.append(f"| peak RSS of this process at the end (after the baselines) | {_mib(meta['maxrss_end_kib'])} | |")
    if meta["provider_hwm"]:
        out.append(
            f"| peak RSS of the fake provider (VmHWM, max over its processes) | {_mib(max(meta['provider_hwm']))} | |"
        )

    # tasks and stages
    out.append("")
    out.append("Seconds per task and per stage inside the slice task (sums over all lanes; the lanes overlap):")
    out.append("")
    out.append(
        "| task / stage | calls | flow: body s | flow: body ms/call | flow: Prefect ms/call | bare: body s | bare: body ms/call |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|")
    bare_clock: StageClock | None = results.get("vf_bare", {}).get("clock")
    rows = [
        ("prepare", "inner"),
        ("collect", "inner"),
        ("slice", "inner"),
        ("claim", "stage"),
        ("embed", "stage"),
        ("store", "stage"),
        ("switch", "inner"),
        ("report", "inner"),
    ]
    for s, kind in rows:
        counts = clock.calls if kind == "inner" else clock.stage_calls
        bare_counts = (bare_clock.calls if kind == "inner" else bare_clock.stage_calls) if bare_clock else {}
        n = counts.get(s, 0)
        if not n and not bare_counts.get(s):
            continue
        inner = getattr(clock, kind).get(s, 0.0)
        over = f"{1000 * (clock.outer.get(s, 0.0) - inner) / max(n, 1):.1f}" if kind == "inner" else ""
        bn = bare_counts.get(s, 0)
        bi = getattr(bare_clock, kind).get(s, 0.0) if bare_clock else 0.0
        label = s if kind == "inner" else f"... {s}"
        out.append(
            f"| {label} | {n} | {inner:.2f} | {1000 * inner / max(n, 1):.1f} | {over} | "
            f"{bi:.2f} | {1000 * bi / max(bn, 1):.1f} |"
        )

    # CPU
    out.append("")
    out.append(
        "CPU seconds during each timed phase (wall x CPUs is what the machine had; "
        "'other processes' is load that is not this benchmark's):"
    )
    out.append("")
    procs = ["this process", "Prefect server", "fake provider", "Postgres", "other processes"]
    out.append("| phase | wall s | wall x CPUs | " + " | ".join(procs) + " |")
    out.append("|---|---:|---:|" + "---:|" * len(procs))
    short["vf_cmd"] = "vectorfill command (this process = the command's CPU)"
    short["vf_home"] = "vectorfill command, new home"
    for key in ("p_pipe", "a_b64", "a_float", "b_copy", "b_copy_ext", "vf", "vf_bare", "vf_cmd", "vf_home"):
        if key in results and "cpu" in results[key]:
            d = results[key]
            cells = [f"{d['cpu'][p]:.2f}" if p in d["cpu"] else "-" for p in procs]
            out.append(
                f"| {short[key]} | {d['wall']:.2f} | {d['wall'] * (os.cpu_count() or 1):.1f} | "
                + " | ".join(cells)
                + " |"
            )
    for key in ("vf", "vf_bare"):
        if key in results and results[key]["threads"]:
            threads = sorted(results[key]["threads"].items(), key=lambda kv: -kv[1])[:8]
            out.append("")
            out.append(f"Threads of this process, {labels[key]}: " + ", ".join(f"{n} {t:.2f} s" for n, t in threads))
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=20_000, help="rows in the backfill (and the baselines)")
    p.add_argument("--dimensions", type=int, default=1536)
    p.add_argument("--tokens", type=int, default=100, help="cl100k tokens per text (at most)")
    p.add_argument("--latency-ms", type=float, default=0.0, help="fake provider latency per request")
    p.add_argument("--rpm", type=int, default=None, help="fake provider requests per minute")
    p.add_argument("--tpm", type=int, default=None, help="fake provider tokens per minute")
    p.add_argument(
        "--max-inputs",
        type=int,
        default=1024,
        help="job setting max_inputs (and the baselines' request size); 1024 gives 20,000 rows "
        "5 requests per lane at concurrency 4",
    )
    p.add_argument("--concurrency", type=int, default=4, help="job setting concurrency (and requests in flight)")
    p.add_argument("--retries", type=int, default=4, help="job setting retries")
    p.add_argument(
        "--warmup-rows",
        type=int,
        default=None,
        help="rows of the untimed warm-up backfill (default: max_inputs x concurrency, so that "
        "concurrency full-size requests have run once; a cold first run is 20-30%% slower)",
    )
    p.add_argument(
        "--dims-unknown",
        action="store_true",
        help="create the jobs without dimensions (the first store types the vector column)",
    )
    p.add_argument("--no-bare", action="store_true", help="skip the run without Prefect")
    p.add_argument("--no-baselines", action="store_true", help="skip baselines A and B")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the timed phases N times (fresh jobs each round); the round of median "
        "ratio is reported in full and every round's ratio is listed (a loaded "
        "machine moves single rounds a lot)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="pyinstrument around the first round's timed backfills, with and without Prefect",
    )
    p.add_argument("--profile-top", type=int, default=25)
    p.add_argument("--db", default=None, help="a postgresql:// URL instead of an embedded Postgres")
    p.add_argument(
        "--command",
        action="store_true",
        help="also time the `vectorfill backfill` command as a subprocess (start-up included) and its "
        "fixed cost, on the local Prefect server of a fresh VECTORFILL_HOME",
    )
    p.add_argument(
        "--pipe-writers",
        type=int,
        default=None,
        help="connections the pipelined baseline P writes on, side by side (default: concurrency)",
    )
    p.add_argument(
        "--new-home",
        action="store_true",
        help="with --command: time the command once more in a new VECTORFILL_HOME, where it starts "
        "its own local Prefect server first (stopped after)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.warmup_rows is None:
        args.warmup_rows = args.max_inputs * args.concurrency
    root = Path(tempfile.mkdtemp(prefix="vf-bench-"))
    data_dir = root / "pgdata"
    if not os.environ.get("PREFECT_API_URL"):
        os.environ["PREFECT_HOME"] = str(root / "prefect")
    if args.command:  # a fresh home: its local Prefect server is started by the first command
        os.environ["VECTORFILL_HOME"] = str(root / "home")
    from vectorfill.orchestration.runtime import prefect_defaults

    prefect_defaults()
    provider = FakeProvider(args, root)
    jobs: list[tuple[str, str]] = []
    url = None
    embedded = False
    try:
        stats: dict = {}
        meta = dict(provider_hwm=provider.peak_rss_kib, core=core_version())
        sample = next(iter_texts(1, args.tokens))
        print(f"texts: e.g. {sample[:120]!r}...", flush=True)

        from vectorfill.local import pgembedded
        from vectorfill.storage.db import migrate

        if args.db:
            url = args.db
        else:
            url = pgembedded.start(data_dir)
            embedded = True
        migrate(url)
        os.environ["VECTORFILL_DATABASE_URL"] = url
        pg_pid = None
        if embedded:
            pg_pid = pgembedded.status(data_dir).pid
        elif psutil is not None:
            import psycopg

            with contextlib.suppress(Exception), psycopg.connect(url) as conn:
                backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
                pg_pid = psutil.Process(backend).ppid()

        provider.start()
        print(
            f"postgres: {'embedded in ' + str(data_dir) if embedded else 'given by --db'}; "
            f"fake provider: {provider.base_url}",
            flush=True,
        )

        if args.command:
            # the first command on this "machine": it starts the local Prefect server, which
            # the in-process runs then use too
            jobs.append(("bench_cmd_warm", "bench_src_cmd_warm"))
            make_job(
                url,
                "bench_cmd_warm",
                "bench_src_cmd_warm",
                iter_texts(args.warmup_rows, args.tokens),
                args,
                provider.base_url,
            )
            first = run_command("bench_cmd_warm", {}, command_env(url))
            meta["first_command_s"] = first["wall"]
            print(
                f"first command, {args.warmup_rows} rows (local Prefect server start included): {first['wall']:.1f} s",
                flush=True,
            )
            from vectorfill.orchestration.api import use_running_api

            use_running_api()

        # vectorfill first, so that ru_maxrss is the backfill's peak and not a baseline's
        jobs.append(("bench_warm", "bench_src_warm"))
        make_job(
            url, "bench_warm", "bench_src_warm", iter_texts(args.warmup_rows, args.tokens), args, provider.base_url
        )
        t0 = time.perf_counter()
        asyncio.run(flow_module().backfill("bench_warm"))
        print(
            f"warm-up backfill of {args.warmup_rows} rows (Prefect server start-up included): "
            f"{time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        prefect_pid = _prefect_server_pid({provider.pid or -1})
        if args.command:
            from vectorfill.orchestration.local_server import recorded

            prefect_pid = recorded().pid  # not our child: the first command started it

        def pids():
            return {
                "Prefect server": (prefect_pid, False),
                "fake provider": (provider.pid, False),
                "Postgres": (pg_pid, True),
            }

        def one_round(r: int) -> dict[str, dict]:
            """The timed phases once: vectorfill with and without Prefect (fresh jobs), then A and B."""
            results: dict[str, dict] = {}
            tag = "" if r == 0 else f"_{r + 1}"
            flow_job, flow_src = f"bench_flow{tag}", f"bench_src_flow{tag}"
            jobs.append((flow_job, flow_src))
            t0 = time.perf_counter()
            make_job(
                url,
                flow_job,
                flow_src,
                iter_texts(args.rows, args.tokens, stats=stats if r == 0 else None),
                args,
                provider.base_url,
            )
            if r == 0:
                meta.update(tokens_mean=stats["sum"] / stats["count"], tokens_min=stats["min"], tokens_max=stats["max"])
            print(
                f"source table of {args.rows:,} texts (~{meta['tokens_mean']:.1f} tokens each) made in "
                f"{time.perf_counter() - t0:.1f} s",
                flush=True,
            )
            if not args.no_bare:
                jobs.append((f"bench_bare{tag}", f"bench_src_bare{tag}"))
                make_job(
                    url,
                    f"bench_bare{tag}",
                    f"bench_src_bare{tag}",
                    iter_texts(args.rows, args.tokens),
                    args,
                    provider.base_url,
                )

            def with_prefect() -> None:
                results["vf"] = run_backfill(flow_job, "prefect", args, pids(), profile=args.profile and r == 0)
                _say("vectorfill (Prefect)", results["vf"])
                if results["vf"]["rows"] != args.rows:
                    print(
                        f"WARNING: the flow embedded {results['vf']['rows']} of {args.rows} rows: {results['vf']['summary']}"
                    )

            def without_prefect() -> None:
                results["vf_bare"] = run_backfill(
                    f"bench_bare{tag}", "bare", args, pids(), profile=args.profile and r == 0
                )
                _say("vectorfill (no Prefect)", results["vf_bare"])
                if results["vf_bare"]["rows"] != args.rows:
                    print(f"WARNING: the bare run embedded {results['vf_bare']['rows']} of {args.rows} rows")

            def command() -> None:
                cmd_job, cmd_src = f"bench_cmd{tag}", f"bench_src_cmd{tag}"
                jobs.append((cmd_job, cmd_src))
                make_job(url, cmd_job, cmd_src, iter_texts(args.rows, args.tokens), args, provider.base_url)
                settle(url)
                provider.restart()
                results["vf_cmd"] = run_command(cmd_job, pids(), command_env(url))
                _say("vectorfill backfill command", results["vf_cmd"])
                if results["vf_cmd"]["rows"] != args.rows:
                    print(f"WARNING: the command embedded {results['vf_cmd']['rows']} of {args.rows} rows")
                empties = sorted(
                    (run_command(cmd_job, pids(), command_env(url)) for _ in range(3)), key=lambda d: d["wall"]
                )
                results["vf_fixed"] = empties[1]
                print(f"its fixed cost (nothing to embed, median of 3): {empties[1]['wall']:.2f} s", flush=True)

            def pipelined() -> None:
                results["p_pipe"] = bench_pipelined(url, provider, args, pipe_src, pipe_tables, pids())
                _say("P pipelined", results["p_pipe"])

            def new_home() -> None:
                """The command in a home of its own: it starts a local Prefect server first (on
                the same Postgres, whose Prefect database the first command made already)."""
                home_job, home_src = f"bench_home{tag}", f"bench_src_home{tag}"
                jobs.append((home_job, home_src))
                make_job(url, home_job, home_src, iter_texts(args.rows, args.tokens), args, provider.base_url)
                settle(url)
                provider.restart()
                env = dict(command_env(url), VECTORFILL_HOME=str(root / f"home_new{tag}"))
                try:
                    results["vf_home"] = run_command(home_job, pids(), env)
                finally:
                    stop_home(env)
                _say("vectorfill backfill command, new home", results["vf_home"])

            pipe_src = f"bench_src_pipe{tag}"
            jobs.append(("", pipe_src))
            pipe_tables = make_pipe_tables(url, pipe_src, iter_texts(args.rows, args.tokens), args.dimensions)
            jobs.extend(("", t) for t in pipe_tables)
            # odd rounds run in the reverse order: whichever runs first meets a colder machine
            order = [with_prefect] + ([] if args.no_bare else [without_prefect]) + [pipelined]
            for phase in order if r % 2 == 0 else order[::-1]:
                settle(url)
                provider.restart()
                phase()
            if args.command:
                command()  # makes its job first: not timed
                if args.new_home:
                    new_home()

            if not args.no_baselines:
                extra = {"Postgres": (pg_pid, True)}
                texts = list(iter_texts(args.rows, args.tokens))  # only now: after the vectorfill peak
                results["a_b64"] = bench_provider(provider, texts, args, "base64", extra)
                _say("A base64", results["a_b64"])
                results["a_float"] = bench_provider(provider, texts, args, "float", extra)
                _say("A float", results["a_float"])
                provider.stop()
                settle(url)
                results["b_copy"] = bench_copy(url, args, False, extra)
                _say("B COPY", results["b_copy"])
                settle(url)
                results["b_copy_ext"] = bench_copy(url, args, True, extra)
                _say("B COPY (EXTERNAL)", results["b_copy_ext"])
            return results

        rounds: list[dict[str, dict]] = []
        for r in range(args.repeat):
            if args.repeat > 1:
                print(f"-- round {r + 1} of {args.repeat}", flush=True)
            rounds.append(one_round(r))
            if r == 0:  # this process's peak is the backfill's only before any baseline ran
                meta["rss"] = {k: rounds[0]["vf"][k] for k in ("maxrss_kib", "rss_before_kib", "maxrss_before_kib")}
        provider.stop()
        meta["maxrss_end_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        results = rounds[0]
        if len(rounds) > 1:  # the round of median ratio stands for the run; all are listed
            results = sorted(rounds, key=_round_ratio)[len(rounds) // 2]
            meta["round"] = f"{rounds.index(results) + 1} of {len(rounds)} (the median ratio)"
        print()
        print(report(args, meta, results))
        if len(rounds) > 1:
            print()
            print(rounds_report(args, rounds))
        for key, name in (("vf", "prefect"), ("vf_bare", "bare")):
            profiler = rounds[0].get(key, {}).get("profiler")
            if not args.profile or profiler is None:
                continue
            html = Path(tempfile.gettempdir()) / f"vectorfill-bench-profile-{name}.html"
            text = Path(tempfile.gettempdir()) / f"vectorfill-bench-profile-{name}.txt"
            profiler.last_session.save(str(html.with_suffix(".pyisession")))  # pyinstrument --load
            html.write_text(profiler.output_html())
            text.write_text(profiler.output_text(unicode=True, show_all=False))
            print()
            print(f"### profile, {'Prefect flow' if key == 'vf' else 'without Prefect'}")
            print()
            print(profile_report(profiler, args.profile_top))
            print(f"\nprofile saved: {html}, {text} and {html.with_suffix('.pyisession')}")
        return 0
    finally:
        provider.stop()
        if args.command:
            with contextlib.suppress(Exception):
                from vectorfill.orchestration import local_server

                local_server.stop()
        with contextlib.suppress(Exception):
            from prefect.server.api.server import SubprocessASGIServer

            for server in list(SubprocessASGIServer._instances.values()):
                server.stop()
        if url and not embedded:
            drop_jobs(url, jobs)
        if embedded:
            with contextlib.suppress(Exception):
                pgembedded.stop(data_dir)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
