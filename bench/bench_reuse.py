"""Reuse: what repeated inputs, a dimension change and a re-embed cost before and after
content-addressed reuse, and what its look-up costs a backfill where nothing repeats.

Both sides run in one process, against one embedded Postgres and one fake provider
(``tests/fake_provider.py`` as its own process, 1,536 dimensions, model
``text-embedding-3-small``), with the engine's flow body run without Prefect (the bare
runner of ``bench_throughput.py``: every task replaced by its function, each slice run by
``run_slice``), so that the figures are the engine's, not the Prefect server's:

* **before** is main's behaviour: the claim does no look-up (``claim_rows(reuse=False)``,
  which is main's claim exactly) and the version's vector table has no ``input_hash`` index
  (dropped after the version is created);
* **after** is this branch as it ships.

``--figures`` runs the three cases of issue 22 and a realistic corpus (chunked documents, as
``bench_chunks.py`` makes them, each with the same header and licence footer), and prints
inputs and tokens the provider received (its own counters), dollars at OpenAI's online
price for the model, and wall time of the timed backfill:

1. 1,000 rows holding 10 distinct texts: a first backfill;
2. 1,000 rows embedded at 1,536 dimensions, then ``set-model --dimensions 256``: the re-embed;
3. 1,000 chunked rows, then a chunker change (``--chunk-size`` 120 -> 160): the re-embed;
4. the corpus: a first backfill of ``--docs`` documents.

``--hotpath`` times a first backfill of ``--rows`` distinct texts (bench_throughput's
texts, ~100 tokens each) before and after, ``--rounds`` times, alternating which side runs
first, and reports each round's ratio and the ratio of the medians.

    python bench/bench_reuse.py --figures
    python bench/bench_reuse.py --hotpath --rows 100000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import bench_throughput as bt
from _provider import FakeProvider
from bench_chunks import make_docs

MODEL = "text-embedding-3-small"
PRICE = 0.02  # USD per million tokens, OpenAI's online price for text-embedding-3-small
HEADER = "ACME Corporation - internal engineering handbook. Confidential: do not forward outside the company."
FOOTER = (  # the MIT licence, as many repositories append it to each document
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this software and "
    "associated documentation files (the Software), to deal in the Software without restriction, including "
    "without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell "
    "copies of the Software, and to permit persons to whom the Software is furnished to do so, subject to the "
    "following conditions: The above copyright notice and this permission notice shall be included in all "
    "copies or substantial portions of the Software. THE SOFTWARE IS PROVIDED AS IS, WITHOUT WARRANTY OF ANY "
    "KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A "
    "PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR "
    "ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, "
    "OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE."
)


@contextlib.contextmanager
def main_behaviour(before: bool):
    """``before``: the claim as on main (no look-up)."""
    import vectorfill.engine.slice as engine_slice

    original = engine_slice.claim_rows
    if before:
        engine_slice.claim_rows = functools.partial(original, reuse=False)
    try:
        yield
    finally:
        engine_slice.claim_rows = original


def drop_hash_index(url: str, job: str) -> None:
    """main's vector tables have no ``input_hash`` index: drop it from each version's."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT format('vectorfill._v_%%s_%%s', v.job_id, v.version) FROM vectorfill.versions v "
            "JOIN vectorfill.jobs j ON j.id = v.job_id WHERE j.name = %s",
            (job,),
        ).fetchall()
        for (t,) in tables:
            conn.execute(f"DROP INDEX IF EXISTS {t}_input_hash")


def backfill(job: str) -> tuple[object, float]:
    """The flow body without Prefect (bench_throughput's bare mode): its summary and wall."""
    summary, wall, _stages = timed_backfill(job)
    return summary, wall


def timed_backfill(job: str) -> tuple[object, float, dict[str, float]]:
    """:func:`backfill`, with the seconds of each stage inside the slices (claim, embed,
    store; sums over the lanes)."""
    fb = bt.flow_module()
    with bt.instrumented("bare") as clock:
        t = time.perf_counter()
        result = asyncio.run(fb.backfill.fn(job))
        wall = time.perf_counter() - t
    return getattr(result, "data", result), wall, dict(clock.stage)


def create(url: str, name: str, table: str, rows, base_url: str, *, chunking=None, max_inputs: int = 2048) -> None:
    from vectorfill.config import JobSettings
    from vectorfill.jobs.registry import create_job
    from vectorfill.storage.db import connect

    bt.fill_source(url, table, rows)
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
            settings=JobSettings(max_inputs=max_inputs, concurrency=4, retries=4),
            chunking=chunking,
        )


def set_model(url: str, name: str, base_url: str, **kw) -> None:
    from vectorfill.jobs import versions
    from vectorfill.storage.db import connect

    with connect(url) as conn:
        versions.set_model(conn, name, model=MODEL, base_url=base_url, **kw)


def measured(provider: FakeProvider, job: str) -> dict:
    s0 = provider.stats()
    summary, wall, stages = timed_backfill(job)
    s1 = provider.stats()
    tokens = s1["tokens_billed"] - s0["tokens_billed"]
    return dict(
        inputs=s1["inputs"] - s0["inputs"],
        requests=s1["requests"] - s0["requests"],
        tokens=tokens,
        usd=tokens * PRICE / 1e6,
        wall=wall,
        embedded=summary.embedded,
        stages={k: round(v, 2) for k, v in stages.items()},
    )


def case(url: str, provider: FakeProvider, name: str, before: bool, setup, timed_change=None) -> dict:
    """Set a job up (untimed), then time one backfill, on main's behaviour or this branch's."""
    job = f"{name}_{'before' if before else 'after'}"
    with main_behaviour(before):
        setup(job)
        if before:
            drop_hash_index(url, job)
        if timed_change is not None:  # the change whose backfill is timed (a re-embed)
            timed_change(job)
            if before:
                drop_hash_index(url, job)
        bt.settle(url)
        return measured(provider, job)


def figures(url: str, provider: FakeProvider, args) -> list[tuple[str, dict, dict]]:
    from vectorfill.config import ChunkSettings

    base = provider.base_url
    rng = random.Random(7)
    distinct = list(bt.iter_texts(10, 100, seed=1))
    repeated = [distinct[rng.randrange(10)] for _ in range(1000)]
    thousand = list(bt.iter_texts(1000, 100, seed=2))
    docs = ["\n\n".join(ps) for ps in make_docs(1000, 600, seed=3)]
    corpus = ["\n\n".join([HEADER, *ps, FOOTER]) for ps in make_docs(args.docs, 1500, seed=4)]
    size_a = ChunkSettings(chunker="recursive", size=120)
    size_b = ChunkSettings(chunker="recursive", size=160)
    out = []
    cases = [
        ("1,000 rows, 10 distinct texts", lambda j: create(url, j, f"src_{j}", repeated, base), None),
        (
            "1,536 -> 256 dimensions (re-embed)",
            lambda j: (create(url, j, f"src_{j}", thousand, base), backfill(j)),
            lambda j: set_model(url, j, base, dimensions=256),
        ),
        (
            "chunker 120 -> 160 tokens (re-embed)",
            lambda j: (create(url, j, f"src_{j}", docs, base, chunking=size_a, max_inputs=512), backfill(j)),
            lambda j: set_model(url, j, base, chunking=size_b),
        ),
        (
            f"{args.docs:,} documents with a shared header and licence",
            lambda j: create(
                url, j, f"src_{j}", corpus, base, chunking=ChunkSettings(chunker="recursive", size=400), max_inputs=512
            ),
            None,
        ),
    ]
    for n, (label, setup, change) in enumerate(cases):
        runs: dict[bool, list[dict]] = {True: [], False: []}
        for r in range(args.repeat):  # alternating which side runs first
            for before in (True, False) if r % 2 == 0 else (False, True):
                runs[before].append(case(url, provider, f"case{n + 1}_{r}", before, setup, change))
        for side in runs.values():  # inputs and tokens are the same each time; the wall is the median
            assert len({(m["inputs"], m["tokens"]) for m in side}) == 1, side
        before, after = (
            {**runs[b][0], "wall": statistics.median(m["wall"] for m in runs[b]), "walls": [m["wall"] for m in runs[b]]}
            for b in (True, False)
        )
        print(f"{label}: before {before}\n    after {after}", flush=True)
        out.append((label, before, after))
    return out


def figures_table(rows: list[tuple[str, dict, dict]]) -> str:
    lines = [
        "| case | inputs sent (before -> after) | tokens sent | USD at $0.02/1M | wall s, median (timed backfill) |",
        "|---|---|---|---|---|",
    ]
    for label, b, a in rows:
        lines.append(
            f"| {label} | {b['inputs']:,} -> {a['inputs']:,} | {b['tokens']:,} -> {a['tokens']:,} | "
            f"{b['usd']:.4f} -> {a['usd']:.4f} | {b['wall']:.2f} -> {a['wall']:.2f} |"
        )
    return "\n".join(lines)


def hotpath(url: str, provider: FakeProvider, args) -> str:
    walls: dict[str, list[float]] = {"before": [], "after": []}
    ratios = []
    # a warm-up (untimed): imports, first connections, the tokenizer, first allocations
    create(url, "hot_warm", "src_hot_warm", bt.iter_texts(8192, 100, seed=99), provider.base_url)
    backfill("hot_warm")
    for r in range(args.rounds):
        order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
        got = {}
        for side in order:
            job = f"hot_{side}_{r}"
            with main_behaviour(side == "before"):
                create(url, job, f"src_{job}", bt.iter_texts(args.rows, 100), provider.base_url)
                if side == "before":
                    drop_hash_index(url, job)
                bt.settle(url)
                m = measured(provider, job)
            assert m["embedded"] == args.rows, m
            got[side] = m["wall"]
            walls[side].append(m["wall"])
            print(
                f"round {r + 1} {side}: {m['wall']:.2f} s ({args.rows / m['wall']:,.0f} rows/s); "
                f"stage seconds (summed over lanes) {m['stages']}",
                flush=True,
            )
            bt.drop_jobs(url, [(job, f"src_{job}")])
        ratios.append(got["after"] / got["before"])
    mb, ma = statistics.median(walls["before"]), statistics.median(walls["after"])
    return (
        f"{args.rows:,} distinct rows, {args.rounds} rounds (order alternating): before "
        f"{', '.join(f'{w:.2f}' for w in walls['before'])} s, after {', '.join(f'{w:.2f}' for w in walls['after'])} s; "
        f"per-round after/before {', '.join(f'{x:.3f}' for x in ratios)}; medians {mb:.2f} -> {ma:.2f} s "
        f"({(ma / mb - 1) * 100:+.1f}%)"
    )


def lookup_cost(url: str, args) -> str:
    """The look-up's own cost, measured directly (the machine is too noisy for a 5% wall-time
    difference to show): the store's binary COPY of ``--rows`` rows of 1,536 dimensions, in
    slices of 4,096 rows as a backfill stores them, into a version's real vector table (with
    its ``input_hash`` index) and into a copy of it without the index, alternating which
    goes first; and the claim's query (``find_vectors``, 4,096 hashes not in the table)
    before each slice. Per slice: with-index COPY + query against the plain COPY."""
    import hashlib

    import numpy as np
    import psycopg

    from vectorfill.engine.claim import Item
    from vectorfill.engine.store import binary_copy_payload
    from vectorfill.jobs.registry import load_job
    from vectorfill.storage import sql as vsql
    from vectorfill.storage.db import connect

    create(url, "lookup", "src_lookup", (f"row {i}" for i in range(10)), "http://127.0.0.1:9/v1")
    with connect(url) as conn:
        job = load_job(conn, "lookup")
        version = job.versions[0]
        conn.execute("DROP VIEW IF EXISTS vectorfill.lookup")  # (the column's type changes under it)
        conn.execute(vsql.JobSQL(job, version).set_vector_dims(args.dimensions))
        conn.commit()
    table = f"vectorfill.{version.vector_table}"
    js = vsql.JobSQL(job, version)
    rng = np.random.default_rng(1)
    slice_rows = 4096
    copy_with, copy_without, queries = [], [], []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE vectorfill.plain_copy (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        conn.execute("ALTER TABLE vectorfill.plain_copy ADD PRIMARY KEY (k1, chunk_seq)")
        for n, first in enumerate(range(0, args.rows, slice_rows)):
            keys = range(first, min(first + slice_rows, args.rows))
            texts = [f"text {k} {rng.random()}" for k in keys]
            items = [
                Item((k,), 1, t, hashlib.sha256(t.encode()).digest(), 20) for k, t in zip(keys, texts, strict=True)
            ]
            vectors = rng.standard_normal((len(items), args.dimensions)).astype(np.float32)
            payload = binary_copy_payload(("bigint",), items, vectors, {(k,) for k in keys}, MODEL)
            probe = [hashlib.sha256(f"absent {n} {i}".encode()).digest() for i in range(slice_rows)]

            def copy_into(target: str, payload: bytes | bytearray | None) -> float:
                t = time.perf_counter()
                with conn.transaction(), conn.cursor() as cur:
                    with cur.copy(
                        f"COPY {target} (k1, chunk_seq, embedding, input_hash, model, chunk) FROM STDIN (FORMAT BINARY)"
                    ) as copy:
                        copy.write(payload)
                return time.perf_counter() - t

            t = time.perf_counter()
            found = conn.execute(js.find_vectors(), {"hashes": vsql.digests(probe)}, binary=True).fetchall()
            queries.append(time.perf_counter() - t)
            assert not found
            order = [(table, copy_with), ("vectorfill.plain_copy", copy_without)]
            for target, out in order if n % 2 == 0 else reversed(order):
                out.append(copy_into(target, payload))
        conn.execute("DROP TABLE vectorfill.plain_copy")
    added = [w - wo + q for w, wo, q in zip(copy_with, copy_without, queries, strict=True)]
    return (
        f"{args.rows:,} rows in {len(queries)} slices of {slice_rows:,}: COPY with the index {sum(copy_with):.2f} s, "
        f"without {sum(copy_without):.2f} s; the look-up query {sum(queries):.3f} s "
        f"(median {statistics.median(queries) * 1000:.1f} ms a slice); added per slice, median "
        f"{statistics.median(added) * 1000:.1f} ms, in all {sum(added):.2f} s "
        f"({sum(added) / sum(copy_without) * 100:+.1f}% of the plain COPY)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--figures", action="store_true")
    ap.add_argument("--hotpath", action="store_true")
    ap.add_argument("--lookup", action="store_true", help="the look-up's own cost, measured directly")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--docs", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each case and side (the median wall is shown)")
    ap.add_argument("--dimensions", type=int, default=1536)
    ap.add_argument("--latency-ms", type=int, default=0)
    args = ap.parse_args()
    args.model = MODEL
    root = Path(tempfile.mkdtemp(prefix="vf-bench-reuse-"))
    os.environ["PREFECT_HOME"] = str(root / "prefect")
    from vectorfill.local import pgembedded
    from vectorfill.orchestration.runtime import prefect_defaults
    from vectorfill.storage.db import migrate

    prefect_defaults()
    url = pgembedded.start(root / "pgdata")
    try:
        migrate(url)
        os.environ["VECTORFILL_DATABASE_URL"] = url
        with FakeProvider(args, root) as provider:
            if args.figures:
                print(figures_table(figures(url, provider, args)))
            if args.hotpath:
                print(hotpath(url, provider, args))
            if args.lookup:
                print(lookup_cost(url, args))
    finally:
        pgembedded.stop(root / "pgdata")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
