"""A huge document does not hold a batch's memory hostage: a 200 MB file in the queue is
failed as too large without being read, and a claim reads at most its byte bound.

Peak memory is the backfill process's own (``ru_maxrss`` of a subprocess), compared with
the same backfill without the huge file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from psycopg import sql

import document_helpers as make
from conftest import API_KEY
from vectorfill.config import ChunkSettings, DocumentSettings, JobSettings

pytestmark = pytest.mark.slow

MB = 2**20


def _doc_table(env, table: str, uris: list[str]) -> None:
    with env.connect() as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, uri text)").format(sql.Identifier(table)))
        for i, uri in enumerate(uris, 1):
            conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(sql.Identifier(table)), (i, uri))


def _job(env, name: str, table: str, **documents) -> None:
    settings = JobSettings(retries=1, documents=DocumentSettings(uri="uri", **documents))
    env.create_job(
        name,
        table=table,
        template=None,
        text_columns=None,
        settings=settings,
        chunking=ChunkSettings(chunker="recursive"),
    )


def _backfill_peak_rss(env, job: str, tmp_path: Path, prefect_server: str) -> dict:
    script = tmp_path / f"run_{job}.py"
    script.write_text(
        textwrap.dedent(f"""
        import asyncio, json, resource
        from vectorfill.errors import RowsFailed
        from vectorfill.flows.backfill import backfill
        try:
            summary = asyncio.run(backfill({job!r}))
        except RowsFailed as exc:
            summary = exc.summary
        print(json.dumps({{"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                           "embedded": summary.embedded, "failed": summary.failed}}))
        """)
    )
    child_env = dict(
        os.environ, VECTORFILL_DATABASE_URL=env.url, VF_TEST_API_KEY=API_KEY, PREFECT_API_URL=prefect_server
    )
    done = subprocess.run(
        [sys.executable, str(script)], env=child_env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_200_mb_file_fails_as_too_large_unread_and_peak_memory_stays_bounded(env, tmp_path, prefect_server):
    small = []
    for i in range(20):
        path = tmp_path / f"doc{i}.txt"
        path.write_text("\n\n".join(make.paragraphs(30, seed=i)))
        small.append(str(path))
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as f:  # 200 MB of real text, on disk
        block = ("\n\n".join(make.paragraphs(200, seed=99)) + "\n\n").encode()
        while f.tell() < 200 * MB:
            f.write(block)
    _doc_table(env, "with_huge", [*small[:10], str(huge), *small[10:]])
    _doc_table(env, "without", small)
    _job(env, "with_huge", "with_huge")
    _job(env, "without", "without")

    baseline = _backfill_peak_rss(env, "without", tmp_path, prefect_server)
    measured = _backfill_peak_rss(env, "with_huge", tmp_path, prefect_server)
    assert (baseline["embedded"], baseline["failed"]) == (20, 0)
    assert (measured["embedded"], measured["failed"]) == (20, 1)
    assert measured["peak_mb"] - baseline["peak_mb"] < 40, (baseline, measured)  # not 200 MB more
    from vectorfill.jobs.registry import list_failures

    with env.connect() as conn:
        (failure,) = list_failures(conn, "with_huge")
    assert failure["reason"] == "too_large" and str(huge) in failure["message"] and "200.0 MB" in failure["message"]


def test_a_claim_reads_at_most_its_byte_bound_and_gives_the_rest_back_uncounted(env, tmp_path):
    uris = []
    for i in range(6):
        path = tmp_path / f"doc{i}.md"
        path.write_text(f"# Document {i}\n\n" + "x" * 100_000)
        uris.append(str(path))
    _doc_table(env, "files", uris)
    _job(env, "docs", "files", max_batch_bytes=150_000)  # two documents a claim
    summary = env.backfill()
    assert (summary.embedded, summary.failed) == (6, 0)
    assert env.provider.requests >= 3  # three claims, each of its own request(s)
    with env.connect() as conn:
        assert conn.execute("SELECT count(*) FROM vectorfill.failures").fetchone()[0] == 0
