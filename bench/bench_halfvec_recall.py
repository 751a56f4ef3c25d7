"""recall@10 of halfvec (float16) against float32, on real vectors.

Embeds N documents and Q queries of the standard library's docstrings with the bundled
all-MiniLM-L6-v2 (384-d, real sentence embeddings; ``--fake`` for the fake provider's hash
vectors instead, at any ``--dims``), stores them as ``vector`` and as ``halfvec`` in
Postgres, and reports, against the exact float32 neighbours (numpy):

* exact search on halfvec (sequential scan): what the float16 rounding alone costs;
* HNSW on vector and HNSW on halfvec (pgvector defaults m=16, ef_construction=64,
  ef_search=40): what the index costs, per type.

    python bench/bench_halfvec_recall.py --docs 3000 --queries 200 [--url postgresql://...]

Without ``--url`` it starts a throwaway embedded Postgres.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
from pgvector.psycopg import register_vector


def _vectors(texts: list[str], fake: bool, dims: int) -> np.ndarray:
    if fake:
        from vectorfill.local.embeddings_server import expected_vector

        return np.stack([expected_vector(t, dims) for t in texts]).astype(np.float32)
    from vectorfill.local.embeddings_server.encoders import SentenceTransformerEncoder

    enc = SentenceTransformerEncoder(batch_size=32)
    return enc.encode(texts)


def _recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=3000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--fake", action="store_true", help="the fake provider's vectors instead of MiniLM's")
    ap.add_argument("--dims", type=int, default=3072, help="with --fake")
    ap.add_argument("--url")
    args = ap.parse_args()

    from vectorfill.local.corpus import load_stdlib_docs

    rows = load_stdlib_docs(args.docs + args.queries)
    texts = [f"{r.title}\n\n{r.body}" for r in rows]
    # queries: the first line of other objects' docs (held out of the corpus)
    queries = [r.body.split("\n")[0][:200] for r in rows[args.docs :]]
    docs = texts[: args.docs]
    t = time.time()
    dv = _vectors(docs, args.fake, args.dims)
    qv = _vectors(queries, args.fake, args.dims)
    print(f"embedded {len(docs)} docs + {len(queries)} queries ({dv.shape[1]}-d) in {time.time() - t:.1f}s")

    truth = np.argsort(-(qv @ dv.T), axis=1)[:, :10]  # exact cosine (the vectors are normalised)

    root = None
    url = args.url
    if url is None:
        from vectorfill.local import pgembedded

        root = Path(tempfile.mkdtemp(prefix="vf-recall-"))
        url = pgembedded.start(root / "pgdata")
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            register_vector(conn)
            d = dv.shape[1]
            conn.execute("DROP TABLE IF EXISTS recall_f, recall_h")
            conn.execute(f"CREATE TABLE recall_f (id int PRIMARY KEY, e vector({d}))")
            conn.execute(f"CREATE TABLE recall_h (id int PRIMARY KEY, e halfvec({d}))")
            with conn.cursor().copy("COPY recall_f (id, e) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int4", "vector"])
                for i, v in enumerate(dv):
                    copy.write_row((i, v))
            conn.execute("INSERT INTO recall_h SELECT id, e::halfvec FROM recall_f")

            def run(table: str, cast: str) -> list[list[int]]:
                sql = f"SELECT id FROM {table} ORDER BY e <=> %s{cast} LIMIT 10"
                return [[r[0] for r in conn.execute(sql, (q,))] for q in qv]

            conn.execute("SET enable_indexscan = off")
            exact_h = _recall(run("recall_h", "::halfvec"), truth)
            conn.execute("RESET enable_indexscan")
            results = {"halfvec, exact scan": exact_h}
            if d <= 2000:
                t = time.time()
                conn.execute("CREATE INDEX ON recall_f USING hnsw (e vector_cosine_ops)")
                build_f = time.time() - t
                results[f"vector, HNSW (built in {build_f:.1f}s)"] = _recall(run("recall_f", ""), truth)
            t = time.time()
            conn.execute("CREATE INDEX ON recall_h USING hnsw (e halfvec_cosine_ops)")
            build_h = time.time() - t
            results[f"halfvec, HNSW (built in {build_h:.1f}s)"] = _recall(run("recall_h", "::halfvec"), truth)
            sizes = conn.execute(
                "SELECT pg_size_pretty(pg_total_relation_size('recall_f')), "
                "pg_size_pretty(pg_total_relation_size('recall_h'))"
            ).fetchone()
        print(f"recall@10 against exact float32, {len(docs)} vectors, {len(queries)} queries:")
        for k, v in results.items():
            print(f"  {k:40s} {v:.4f}")
        print(f"table + index size: vector {sizes[0]}, halfvec {sizes[1]}")
        print(f"load: {os.getloadavg()}")
    finally:
        if root is not None:
            from vectorfill.local import pgembedded

            pgembedded.stop(root / "pgdata")
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
