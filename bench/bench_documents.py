"""Document jobs: parsing, embedding and keeping a folder in step, on mixed documents.

``--docs`` documents of about ``--pages`` pages each, in a mix of formats (PDF, DOCX,
XLSX, EPUB, HTML, Markdown, text; made here with each format's library), in a folder;
the fake provider as its own process (no latency) and an embedded Postgres:

* **sync**: ``vectorfill documents sync`` of the folder into a new table (in process);
* **backfill**: ``asyncio.run(backfill(job))`` on a document job (``recursive`` chunker,
  ``--chunk-size`` tokens): documents/s, MB/s read and parsed, chunks/s embedded, the
  process's peak RSS after it;
* **parsing alone**: :func:`vectorfill.documents.read_document` over every document in
  this process, after the backfill: its share of the backfill's time;
* **1 % changed**: one paragraph replaced in ``--change-share`` of the documents, then a
  sync and a backfill (rows written, chunks re-sent, seconds); and a sync with nothing
  changed.

    python bench/bench_documents.py --docs 1000 --pages 20

Figures in bench/README.md ("Documents").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _provider import FakeProvider

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import document_helpers as make

MODEL = "fake-embed"
FORMATS = ("pdf", "docx", "xlsx", "epub", "html", "md", "txt")
PARAGRAPHS_PER_PAGE = 5


def make_document(fmt: str, pages: int, seed: int) -> tuple[bytes, list[str]]:
    ps = make.paragraphs(pages * PARAGRAPHS_PER_PAGE, seed=seed, words=(40, 90))
    return _remake(fmt, ps), ps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--pages", type=int, default=20)
    ap.add_argument("--chunk-size", type=int, default=400)
    ap.add_argument("--dimensions", type=int, default=256)
    ap.add_argument("--max-inputs", type=int, default=512)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--change-share", type=float, default=0.01)
    ap.add_argument("--latency-ms", type=int, default=0)
    args = ap.parse_args()
    args.rpm = args.tpm = None

    root = Path(tempfile.mkdtemp(prefix="vf-bench-docs-"))
    os.environ.setdefault("PREFECT_HOME", str(root / "prefect"))
    from vectorfill.orchestration.runtime import prefect_defaults

    prefect_defaults()
    from vectorfill.config import ChunkSettings, DocumentSettings, JobSettings
    from vectorfill.documents import Loader, read_document
    from vectorfill.documents.sync import sync_documents
    from vectorfill.flows.backfill import backfill
    from vectorfill.jobs.registry import create_job
    from vectorfill.local import pgembedded
    from vectorfill.storage.db import connect, migrate

    folder = root / "library"
    folder.mkdir()
    t = time.perf_counter()
    made: dict[Path, tuple[str, list[str]]] = {}
    for i in range(args.docs):
        fmt = FORMATS[i % len(FORMATS)]
        data, ps = make_document(fmt, args.pages, seed=i)
        path = folder / f"doc{i:05d}.{fmt}"
        path.write_bytes(data)
        made[path] = (fmt, ps)
    total_bytes = sum(p.stat().st_size for p in made)
    print(
        f"{args.docs} documents of ~{args.pages} pages ({', '.join(FORMATS)}), {total_bytes / 2**20:.1f} MB, "
        f"made in {time.perf_counter() - t:.0f}s; load {os.getloadavg()}"
    )

    provider = FakeProvider(args, root)
    url = pgembedded.start(root / "pgdata")
    try:
        migrate(url)
        os.environ["VECTORFILL_DATABASE_URL"] = url
        provider.start()
        t = time.perf_counter()
        with connect(url, autocommit=True) as conn:
            synced = sync_documents(conn, str(folder), "library")
        t_sync = time.perf_counter() - t
        print(f"sync: {synced.listed} listed, {synced.added} added in {t_sync:.2f}s")

        chunking = ChunkSettings(chunker="recursive", size=args.chunk_size)
        settings = JobSettings(
            max_inputs=args.max_inputs, concurrency=args.concurrency, documents=DocumentSettings(uri="uri")
        )
        warm = root / "warm"
        warm.mkdir()
        (warm / "a.txt").write_text("A warm-up document: the Prefect server's start is paid here.")
        with connect(url, autocommit=True) as conn:
            sync_documents(conn, str(warm), "warm")
        with connect(url) as conn:
            for name, table in (("warm", "warm"), ("lib", "library")):
                create_job(
                    conn,
                    name=name,
                    table=table,
                    text_columns=None,
                    template=None,
                    key_columns=None,
                    model=MODEL,
                    base_url=provider.base_url,
                    api_key_env=None,
                    settings=settings,
                    chunking=chunking,
                )
        asyncio.run(backfill("warm"))
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t = time.perf_counter()
        asyncio.run(backfill("lib"))
        t_fill = time.perf_counter() - t
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        with connect(url) as conn:
            chunks, docs = conn.execute("SELECT count(*), count(DISTINCT id) FROM vectorfill.lib").fetchone()
        assert docs == args.docs, docs
        print(
            f"backfill: {t_fill:.1f}s: {args.docs / t_fill:.1f} documents/s, {total_bytes / 2**20 / t_fill:.2f} MB/s, "
            f"{chunks / t_fill:,.0f} chunks/s ({chunks:,} chunks); peak RSS {rss_before:.0f} MB before, "
            f"{rss_after:.0f} MB after"
        )

        loader = Loader(max_bytes=64 * 2**20)
        by_format: dict[str, float] = {}
        t = time.perf_counter()
        for path, (fmt, _ps) in made.items():
            t0 = time.perf_counter()
            read_document(loader, str(path))
            by_format[fmt] = by_format.get(fmt, 0.0) + time.perf_counter() - t0
        t_parse = time.perf_counter() - t
        per = ", ".join(f"{f} {s / (args.docs / len(FORMATS)) * 1000:.0f} ms" for f, s in by_format.items())
        print(
            f"parsing alone: {t_parse:.1f}s, {args.docs / t_parse:.1f} documents/s, "
            f"{total_bytes / 2**20 / t_parse:.2f} MB/s: {t_parse / t_fill:.0%} of the backfill's time; per document: {per}"
        )

        t = time.perf_counter()
        with connect(url, autocommit=True) as conn:
            again = sync_documents(conn, str(folder), "library")
        print(f"second sync, nothing changed: {again.written} rows written in {time.perf_counter() - t:.2f}s")

        rng = random.Random(7)
        changed = rng.sample(sorted(made), max(1, int(args.docs * args.change_share)))
        for path in changed:
            fmt, ps = made[path]
            ps = [*ps]
            ps[len(ps) // 2] = "A paragraph that changed since the last sync, and only this one."
            path.write_bytes(_remake(fmt, ps))
        before = provider.stats()
        t = time.perf_counter()
        with connect(url, autocommit=True) as conn:
            synced = sync_documents(conn, str(folder), "library")
        t_sync2 = time.perf_counter() - t
        t = time.perf_counter()
        asyncio.run(backfill("lib"))
        t_fill2 = time.perf_counter() - t
        after = provider.stats()
        sent = after.get("inputs", 0) - before.get("inputs", 0)
        print(
            f"{len(changed)} documents changed ({args.change_share:.0%}): sync {t_sync2:.2f}s ({synced.changed} rows "
            f"written), backfill {t_fill2:.1f}s, {sent} chunks re-sent of {chunks:,}; provider {after}"
        )
        print(f"load at the end: {os.getloadavg()}")
    finally:
        provider.stop()
        pgembedded.stop(root / "pgdata")
        shutil.rmtree(root, ignore_errors=True)


def _remake(fmt: str, ps: list[str]) -> bytes:
    """The document of format ``fmt`` holding ``ps`` (an XLSX page: ~40 rows of three cells)."""
    if fmt == "pdf":
        return make.pdf(ps, per_page=PARAGRAPHS_PER_PAGE)
    if fmt == "docx":
        return make.docx(ps)
    if fmt == "xlsx":
        return make.xlsx({"Data": [[f"row {i}", p.split()[0], len(p)] for i, p in enumerate(ps * 8)]})
    if fmt == "epub":
        return make.epub([(f"Chapter {c}", ps[c::10]) for c in range(10)])
    if fmt == "html":
        return make.html("Page", ps)
    return "\n\n".join(ps).encode()


if __name__ == "__main__":
    main()
