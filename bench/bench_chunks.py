"""Chunked backfills and edits: throughput against raw baselines, and what an edit re-sends.

On ``--docs`` documents of about ``--tokens`` cl100k tokens each (paragraphs of English-like
words), with the ``recursive`` chunker at ``--chunk-size`` tokens, the fake provider as its
own process (``--dimensions``, no latency) and an embedded Postgres:

* **chunking alone**: :func:`vectorfill.provider.chunking.chunk_text` over every document,
  in this process (chunks/s, docs/s);
* **raw baseline**: the same chunks posted by ``EmbeddingsClient`` (``--max-inputs`` a
  request, ``--concurrency`` in flight) and binary-COPYed into a plain table, one
  transaction per request: chunking + HTTP + COPY with no queue, no hashes, no Prefect;
* **vectorfill**: ``asyncio.run(backfill(job))`` (the real flow; the Prefect server's start
  is paid by a warm-up job first) on a job with that chunker;
* **edits**: one paragraph replaced in ``--edit-share`` of the documents, then a backfill:
  the tokens the provider billed for it (vectorfill re-sends only chunks whose text is new)
  against the tokens of every chunk of the edited rows (what re-embedding each edited
  row whole, as pgai does, would send), both counted by the provider/the same tokenizer.

    python bench/bench_chunks.py --docs 2000 --tokens 5000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from _provider import FakeProvider

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "his",
    "her",
    "it",
    "an",
    "were",
    "are",
    "which",
    "this",
    "be",
    "or",
    "had",
    "not",
    "but",
    "have",
    "they",
    "one",
    "their",
    "all",
    "new",
    "more",
    "time",
    "year",
    "people",
    "first",
    "two",
    "after",
    "other",
    "also",
    "into",
    "over",
    "only",
    "some",
    "system",
    "data",
    "model",
    "vector",
    "search",
    "index",
    "table",
    "query",
    "document",
    "paragraph",
    "chapter",
    "section",
    "river",
    "mountain",
]
MODEL = "fake-embed"


def _paragraph(rng: random.Random) -> str:
    n = rng.randint(40, 160)
    words = [rng.choice(WORDS) for _ in range(n)]
    return " ".join(words).capitalize() + "."


def make_docs(n: int, tokens: int, seed: int = 1) -> list[list[str]]:
    from vectorfill.provider.tokens import counter_for

    counter = counter_for(MODEL)
    rng = random.Random(seed)
    sample = [_paragraph(rng) for _ in range(200)]
    per_paragraph = sum(counter.count(sample)) / len(sample)
    k = max(1, round(tokens / per_paragraph))
    return [[_paragraph(rng) for _ in range(k)] for _ in range(n)]


def fill(url: str, table: str, docs: list[list[str]]) -> None:
    import psycopg

    with psycopg.connect(url) as conn:
        conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, body text NOT NULL)")
        with conn.cursor().copy(f"COPY {table} (id, body) FROM STDIN") as copy:
            for i, ps in enumerate(docs, 1):
                copy.write_row((i, "\n\n".join(ps)))


async def raw_baseline(base_url: str, url: str, chunks: list[str], args) -> float:
    import psycopg
    from pgvector.psycopg import register_vector_async

    from vectorfill.provider.client import EmbeddingsClient

    t = time.perf_counter()
    groups = iter([chunks[i : i + args.max_inputs] for i in range(0, len(chunks), args.max_inputs)])
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await register_vector_async(conn)
        await conn.execute(f"CREATE TABLE raw_chunks (id bigint, seq int, embedding vector({args.dimensions}))")
        await conn.commit()
        lock = asyncio.Lock()
        counter = iter(range(10**12))
        async with EmbeddingsClient(base_url=base_url, model=MODEL, max_connections=args.concurrency * 2) as client:

            async def worker() -> None:
                for group in groups:
                    result = await client.embed(group)
                    async with lock:
                        async with conn.cursor() as cur:
                            async with cur.copy("COPY raw_chunks (id, seq, embedding) FROM STDIN") as copy:
                                for v in result.vectors:
                                    await copy.write_row((next(counter), 0, v))
                        await conn.commit()

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--tokens", type=int, default=5000)
    ap.add_argument("--chunk-size", type=int, default=400)
    ap.add_argument("--dimensions", type=int, default=256)
    ap.add_argument("--max-inputs", type=int, default=512)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--edit-share", type=float, default=0.10)
    ap.add_argument("--latency-ms", type=int, default=0)
    args = ap.parse_args()
    args.rpm = args.tpm = None

    root = Path(tempfile.mkdtemp(prefix="vf-bench-chunks-"))
    os.environ.setdefault("PREFECT_HOME", str(root / "prefect"))
    from vectorfill.orchestration.runtime import prefect_defaults

    prefect_defaults()
    from vectorfill.config import ChunkSettings, JobSettings
    from vectorfill.flows.backfill import backfill
    from vectorfill.jobs.registry import create_job
    from vectorfill.local import pgembedded
    from vectorfill.provider.chunking import chunk_text
    from vectorfill.provider.tokens import counter_for
    from vectorfill.storage.db import connect, migrate

    provider = FakeProvider(args, root)
    url = pgembedded.start(root / "pgdata")
    try:
        migrate(url)
        os.environ["VECTORFILL_DATABASE_URL"] = url
        provider.start()
        docs = make_docs(args.docs, args.tokens)
        texts = ["\n\n".join(ps) for ps in docs]
        counter = counter_for(MODEL)
        settings = ChunkSettings(chunker="recursive", size=args.chunk_size)
        job_settings = JobSettings(max_inputs=args.max_inputs, concurrency=args.concurrency)
        print(f"{args.docs} docs of ~{args.tokens} tokens, {len(docs[0])} paragraphs each; load {os.getloadavg()}")

        t = time.perf_counter()
        all_chunks = [chunk_text(x, settings, counter, limit=8191) for x in texts]
        t_chunk = time.perf_counter() - t
        n_chunks = sum(len(c) for c in all_chunks)
        chunk_tokens = sum(c.tokens for cs in all_chunks for c in cs)
        print(
            f"chunking alone: {n_chunks} chunks ({chunk_tokens / n_chunks:.0f} tokens mean) in {t_chunk:.1f}s: "
            f"{n_chunks / t_chunk:,.0f} chunks/s, {args.docs / t_chunk:,.1f} docs/s"
        )

        t_raw = asyncio.run(raw_baseline(provider.base_url, url, [c.text for cs in all_chunks for c in cs], args))
        t_raw_total = t_raw + t_chunk
        print(
            f"raw baseline (chunk + POST + COPY): {t_raw_total:.1f}s: {n_chunks / t_raw_total:,.0f} chunks/s, "
            f"{args.docs / t_raw_total:,.1f} docs/s (HTTP + COPY alone {t_raw:.1f}s)"
        )

        fill(url, "warm", docs[:20])
        fill(url, "docs", docs)
        with connect(url) as conn:
            for name, table in (("warm", "warm"), ("docs", "docs")):
                create_job(
                    conn,
                    name=name,
                    table=table,
                    text_columns=["body"],
                    template=None,
                    key_columns=None,
                    model=MODEL,
                    base_url=provider.base_url,
                    api_key_env=None,
                    settings=job_settings,
                    chunking=settings,
                )
        asyncio.run(backfill("warm"))
        before = provider.stats()
        t = time.perf_counter()
        asyncio.run(backfill("docs"))
        t_vf = time.perf_counter() - t
        after = provider.stats()
        with connect(url) as conn:
            stored = conn.execute("SELECT count(*), count(DISTINCT id) FROM vectorfill.docs").fetchone()
        assert stored == (n_chunks, args.docs), (stored, n_chunks)
        print(
            f"vectorfill backfill: {t_vf:.1f}s: {n_chunks / t_vf:,.0f} chunks/s, {args.docs / t_vf:,.1f} docs/s "
            f"({t_vf / t_raw_total:.2f}x the raw baseline's time); provider: {after} (before {before})"
        )

        rng = random.Random(42)
        edited = rng.sample(range(1, args.docs + 1), int(args.docs * args.edit_share))
        with connect(url) as conn:
            whole = 0
            for i in edited:
                ps = docs[i - 1]
                ps[rng.randrange(len(ps))] = _paragraph(rng)
                conn.execute("UPDATE docs SET body = %s WHERE id = %s", ("\n\n".join(ps), i))
                whole += sum(c.tokens for c in chunk_text("\n\n".join(ps), settings, counter, limit=8191))
        before = provider.stats()
        t = time.perf_counter()
        asyncio.run(backfill("docs"))
        t_edit = time.perf_counter() - t
        after = provider.stats()
        sent_tokens = after["tokens_billed"] - before["tokens_billed"]
        sent_inputs = after["inputs"] - before["inputs"] if "inputs" in after else None
        with connect(url) as conn:
            total = conn.execute("SELECT count(*) FROM vectorfill.docs WHERE id = ANY(%s)", (edited,)).fetchone()[0]
            rows = conn.execute("SELECT id, chunk_seq, chunk FROM vectorfill.docs WHERE id = ANY(%s)", (edited,))
            for i, _seq, chunk in rows.fetchall()[:50]:
                assert chunk in "\n\n".join(docs[i - 1])
        print(
            f"edits: one paragraph in {len(edited)} docs: re-sent {sent_tokens:,} tokens"
            + (f" in {sent_inputs:,} chunks ({sent_inputs / len(edited):.2f} a doc)" if sent_inputs else "")
            + f", against {whole:,} tokens for every chunk of the edited rows ({total:,} chunks): "
            f"{sent_tokens / whole:.1%} of it; backfill {t_edit:.1f}s"
        )
        print(f"load at the end: {os.getloadavg()}")
    finally:
        provider.stop()
        pgembedded.stop(root / "pgdata")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
