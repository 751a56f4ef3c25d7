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
* **vectorfill**: ``asyncio.run(backfill(job))``, the real Prefect flow, in this process,
  on a job of ``--rows`` rows of ~100-token (cl100k) English-like texts. Prefect's
  temporary server is started beforehand by a warm-up backfill (``max_inputs x
  concurrency`` rows by default, so that ``concurrency`` full-size requests have run), so
  the timed run excludes its start-up (and the imports, the tokenizer load, the first
  connections and this process's first allocations of full-size requests, which make a
  cold first run markedly slower).
* **vectorfill without Prefect**: the same flow body and lanes, on a fresh job of the
  same texts, with every task replaced by its plain function (``task.fn``), retried as its
  ``retry_condition_fn`` allows, and the progress and summary artifacts by no-ops. Odd
  rounds run it first, even rounds second, so that neither side always meets the colder
  machine.

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
   prepare, switch and report, which the flow runs alone) + (sum of outer - inner of the
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
job), which starts the local server. Targets of the whole command against the lower raw
baseline of the same round: >= 40% at 20,000 rows, >= 60% at 100,000.

Before each timed phase that writes to Postgres the database is settled (``VACUUM
(ANALYZE)`` and ``CHECKPOINT``), so that no phase pays for the previous one's writes.

``--repeat N`` runs every timed phase N times (a fresh job for each vectorfill run): on a
machine shared with other work single rounds swing; the round with the median ratio is
reported in full and each round's ratio is listed.

Usage::

    python bench/bench_throughput.py                         # 20,000 rows, 1536 dims
    python bench/bench_throughput.py --repeat 3              # three rounds, median reported
    python bench/bench_throughput.py --latency-ms 200
    python bench/bench_throughput.py --rows 5000 --profile
    python bench/bench_throughput.py --db postgresql://...   # instead of an embedded Postgres
    python bench/bench_throughput.py --command               # and the whole command, start-up included

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

    def start(self) -> CpuWindow:
        self._busy0 = _machine_busy()
        self._t0 = time.perf_counter()
        self._self0 = _self_cpu()
        self._threads0 = _thread_cpu()
        self._p0 = {k: _proc_cpu(pid, with_children=ch) for k, (pid, ch) in self.pids.items()}
        return self

    def stop(self) -> None:
        self.wall = time.perf_counter() - self._t0
        self.used["this process"] = _self_cpu() - self._self0
        for k, (pid, ch) in self.pids.items():
            if pid is not None:
                self.used[k] = _proc_cpu(pid, with_children=ch) - self._p0[k]
        busy = _machine_busy() - self._busy0
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

    for name, table in jobs:
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
    return dict(rows=rows, wall=window.wall, cpu=window.used)


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
    return dict(rows=n, wall=window.wall, cpu=window.used)


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


class _FailedState:
    """What a ``retry_condition_fn`` reads of a failed state: its exception."""

    def __init__(self, exc: BaseException) -> None:
        self.data = exc


class _Bare:
    """Stands in for a Task without Prefect: calls its function, and retries it at once
    while its ``retry_condition_fn`` allows (the slice task waits out its backoff itself),
    or, without one, retries transient errors up to ``retries`` times."""

    def __init__(self, fn, retries: int, condition=None) -> None:
        self.fn, self.retries, self.condition = fn, retries, condition

    def __call__(self, *a, **k):
        from prefect.utilities.annotations import BaseAnnotation

        from vectorfill.errors import is_transient

        # the flow quote()s its arguments for Prefect; a plain call gets the values
        a = tuple(x.unwrap() if isinstance(x, BaseAnnotation) else x for x in a)

        def may_retry(exc: BaseException) -> bool:
            if self.condition is not None:
                return self.condition(None, None, _FailedState(exc))
            return is_transient(exc)

        async def call():
            for attempt in range(self.retries + 1):
                try:
                    return await self.fn(*a, **k)
                except Exception as exc:
                    if attempt == self.retries or not may_retry(exc):
                        raise

        return call()


#: The flow module's tasks, by the global name it calls them by.
_TASK_GLOBALS = {"prepare": "prepare_run", "switch": "switch_versions", "report": "report_run"}
#: The stage functions the slice task calls, by their global name in tasks/slice.py.
_STAGES = {"claim": "claim_rows", "embed": "embed_request", "store": "store_vectors"}


def _artifact_functions(module) -> list[str]:
    """Names of Prefect's artifact functions imported into ``module`` (the core changes)."""
    return [n for n, v in vars(module).items() if "artifact" in n and callable(v) and n.startswith(("a", "c", "u"))]


def _no_op_like(fn):
    if inspect.iscoroutinefunction(fn):

        async def no_op_async(*a, **k):
            return None

        return no_op_async
    return lambda *a, **k: None


@contextlib.contextmanager
def instrumented(mode: str):
    """Patch the flow module for one run: ``mode`` "prefect" (time bodies and call sites)
    or "bare" (tasks replaced by their timed functions, artifacts by no-ops). Either way
    the stages inside the slice task are timed."""
    import importlib

    fb = flow_module()
    fill_mod = importlib.import_module("vectorfill.tasks.fill")
    slice_mod = importlib.import_module("vectorfill.tasks.slice")
    report_mod = importlib.import_module("vectorfill.tasks.report")
    clock = StageClock()
    tasks = {stage: getattr(fb, g) for stage, g in _TASK_GLOBALS.items()}
    tasks["slice"] = slice_mod.fill_slice
    saved: list[tuple[object, str, object]] = []  # (object, attribute, original value)

    def patch(obj, attr: str, value) -> None:
        saved.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, value)

    try:
        for stage, g in _STAGES.items():
            patch(slice_mod, g, _timed(getattr(slice_mod, g), functools.partial(clock.add, "stage", stage)))
        for name, t in tasks.items():
            patch(t, "fn", _timed(t.fn, functools.partial(clock.add, "inner", name)))
        slice_task = fill_mod.slice_task
        if mode == "prefect":
            for name, g in _TASK_GLOBALS.items():
                patch(fb, g, _outer(tasks[name], functools.partial(clock.add, "outer", name)))
            record_slice = functools.partial(clock.add, "outer", "slice")
            patch(fill_mod, "slice_task", lambda attempts: _outer(slice_task(attempts), record_slice))
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
                patch(fb, g, _Bare(tasks[name].fn, tasks[name].retries))

            def bare_slice(attempts):
                return _Bare(tasks["slice"].fn, attempts.total_retries, attempts.retry_condition())

            patch(fill_mod, "slice_task", bare_slice)
            for module in (report_mod,):  # progress and summary artifacts
                for name in _artifact_functions(module):
                    patch(module, name, _no_op_like(getattr(module, name)))
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
        else:
            summary = asyncio.run(fb.backfill.fn(job))
        if profiler:
            profiler.stop()
        window.stop()
    return dict(
        summary=summary,
        rows=summary.embedded,
        wall=window.wall,
        cpu=window.used,
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
        threads={},
        flow_s=summary["duration_s"],
        stderr=proc.stderr,
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
    """vectorfill's rate over the lower of A base64 and B (or its own rate without baselines)."""
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
        "| round | vectorfill rows/s | no Prefect rows/s | A base64 rows/s | B rows/s | vectorfill / lower of A and B "
        "| Prefect share, A/B | other processes' CPU s during vectorfill |"
    )
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, r in enumerate(rounds, 1):

        def cell(key: str, r: dict = r) -> str:
            return f"{_rate(r[key]):,.0f}" if key in r else "-"

        ratio = f"{100 * _round_ratio(r):.0f}%" if "a_b64" in r and "b_copy" in r else "-"
        share = f"{100 * (1 - r['vf_bare']['wall'] / r['vf']['wall']):.1f}%" if "vf_bare" in r else "-"
        other = r["vf"].get("cpu", {}).get("other processes")
        out.append(
            f"| {i} | {cell('vf')} | {cell('vf_bare')} | {cell('a_b64')} | {cell('b_copy')} | {ratio} | {share} "
            f"| {'-' if other is None else f'{other:.2f}'} |"
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
    cmd_rounds = [r for r in rounds if "vf_cmd" in r and "a_b64" in r and "b_copy" in r]
    if cmd_rounds:
        out.append("")
        out.append("| round | command rows/s | command / lower of A and B | fixed cost s |")
        out.append("|---:|---:|---:|---:|")
        for i, r in enumerate(rounds, 1):
            if r in cmd_rounds:
                lower = min(_rate(r["a_b64"]), _rate(r["b_copy"]))
                fixed = r.get("vf_fixed", {}).get("wall")
                out.append(
                    f"| {i} | {_rate(r['vf_cmd']):,.0f} | {100 * _rate(r['vf_cmd']) / lower:.0f}% "
                    f"| {'-' if fixed is None else f'{fixed:.2f}'} |"
                )
    ratios = sorted(_round_ratio(r) for r in rounds if "a_b64" in r and "b_copy" in r)
    if ratios:
        out.append("")
        out.append(
            f"vectorfill / lower of A and B over {len(ratios)} rounds: min {100 * ratios[0]:.0f}%, "
            f"median {100 * ratios[len(ratios) // 2]:.0f}%, max {100 * ratios[-1]:.0f}%"
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
    out.append("| measurement | rows | wall s | rows/s |")
    out.append("|---|---:|---:|---:|")
    labels = {
        "a_b64": f"A: EmbeddingsClient -> fake provider process, base64, {args.concurrency} in flight",
        "a_float": "A: same, encoding_format=float",
        "b_copy": "B: psycopg binary COPY -> vector(d) table (default storage)",
        "b_copy_ext": "B: same, column STORAGE EXTERNAL",
        "vf": "vectorfill backfill, Prefect flow" + (" (profiled)" if results["vf"].get("profiler") else ""),
        "vf_bare": "vectorfill lanes without Prefect (task.fn)"
        + (" (profiled)" if results.get("vf_bare", {}).get("profiler") else ""),
        "vf_cmd": "`vectorfill backfill` command, subprocess, start-up included (local server running)",
        "vf_fixed": "... its fixed cost: the same command with nothing to embed (median of 3)",
    }
    for key, label in labels.items():
        if key in results:
            d = results[key]
            out.append(f"| {label} | {d['rows']:,} | {d['wall']:.2f} | {_rate(d):,.0f} |")

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
        goal = ">= 50% (no latency)" if args.latency_ms == 0 else ""
        out.append(
            f"| vectorfill / lower of A base64 and B ({lower:,.0f} rows/s) | {100 * r_vf / lower:.0f}% | {goal} |"
        )
    if "vf_cmd" in results:
        cmd = results["vf_cmd"]
        if "a_b64" in results and "b_copy" in results:
            goal = ">= 40% at 20k rows, >= 60% at 100k" if args.latency_ms == 0 else ""
            out.append(
                f"| `vectorfill backfill` command / lower of A base64 and B | {100 * _rate(cmd) / lower:.0f}% | {goal} |"
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

    sequential = over(("prepare", "switch", "report"))  # run by the flow body, one at a time
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
    out.append(f"| ... prepare + switch + report task-run overhead | {sequential:.2f} s | |")
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
    for key in ("a_b64", "a_float", "b_copy", "b_copy_ext", "vf", "vf_bare", "vf_cmd"):
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
                print(f"vectorfill (Prefect): {_rate(results['vf']):,.0f} rows/s", flush=True)
                if results["vf"]["rows"] != args.rows:
                    print(
                        f"WARNING: the flow embedded {results['vf']['rows']} of {args.rows} rows: {results['vf']['summary']}"
                    )

            def without_prefect() -> None:
                results["vf_bare"] = run_backfill(
                    f"bench_bare{tag}", "bare", args, pids(), profile=args.profile and r == 0
                )
                print(f"vectorfill (no Prefect): {_rate(results['vf_bare']):,.0f} rows/s", flush=True)
                if results["vf_bare"]["rows"] != args.rows:
                    print(f"WARNING: the bare run embedded {results['vf_bare']['rows']} of {args.rows} rows")

            def command() -> None:
                cmd_job, cmd_src = f"bench_cmd{tag}", f"bench_src_cmd{tag}"
                jobs.append((cmd_job, cmd_src))
                make_job(url, cmd_job, cmd_src, iter_texts(args.rows, args.tokens), args, provider.base_url)
                settle(url)
                provider.restart()
                results["vf_cmd"] = run_command(cmd_job, pids(), command_env(url))
                print(f"vectorfill backfill command: {_rate(results['vf_cmd']):,.0f} rows/s", flush=True)
                if results["vf_cmd"]["rows"] != args.rows:
                    print(f"WARNING: the command embedded {results['vf_cmd']['rows']} of {args.rows} rows")
                empties = sorted(
                    (run_command(cmd_job, pids(), command_env(url)) for _ in range(3)), key=lambda d: d["wall"]
                )
                results["vf_fixed"] = empties[1]
                print(f"its fixed cost (nothing to embed, median of 3): {empties[1]['wall']:.2f} s", flush=True)

            # odd rounds run without Prefect first: whichever runs first meets a colder machine
            order = [with_prefect] + ([] if args.no_bare else [without_prefect])
            for phase in order if r % 2 == 0 else order[::-1]:
                settle(url)
                provider.restart()
                phase()
            if args.command:
                command()  # makes its job first: not timed

            if not args.no_baselines:
                extra = {"Postgres": (pg_pid, True)}
                texts = list(iter_texts(args.rows, args.tokens))  # only now: after the vectorfill peak
                results["a_b64"] = bench_provider(provider, texts, args, "base64", extra)
                print(f"A base64: {_rate(results['a_b64']):,.0f} rows/s", flush=True)
                results["a_float"] = bench_provider(provider, texts, args, "float", extra)
                print(f"A float: {_rate(results['a_float']):,.0f} rows/s", flush=True)
                provider.stop()
                settle(url)
                results["b_copy"] = bench_copy(url, args, False, extra)
                print(f"B COPY: {_rate(results['b_copy']):,.0f} rows/s", flush=True)
                settle(url)
                results["b_copy_ext"] = bench_copy(url, args, True, extra)
                print(f"B COPY (EXTERNAL): {_rate(results['b_copy_ext']):,.0f} rows/s", flush=True)
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
