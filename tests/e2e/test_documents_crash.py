"""The chaos guarantees hold for document jobs: a backfill killed (SIGKILL) mid-run loses
nothing, and a later run finishes with every document's chunks right."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from psycopg import sql

import document_helpers as make
from conftest import API_KEY, expire_leases
from vectorfill.config import ChunkSettings, DocumentSettings, JobSettings
from vectorfill.documents import parse_document

pytestmark = pytest.mark.slow


def test_a_document_backfill_killed_mid_run_loses_nothing_and_a_later_run_finishes(env, tmp_path, prefect_server):
    texts = {}
    with env.connect() as conn:
        conn.execute("CREATE TABLE files (id bigint PRIMARY KEY, uri text)")
        for i in range(1, 61):
            path = tmp_path / f"doc{i}.docx"
            path.write_bytes(make.docx(make.paragraphs(12, seed=i)))
            texts[i] = parse_document(str(path), "docx", path.read_bytes())
            conn.execute("INSERT INTO files VALUES (%s, %s)", (i, str(path)))
    settings = JobSettings(max_inputs=20, concurrency=2, retries=1, documents=DocumentSettings(uri="uri"))
    env.create_job(
        table="files",
        template=None,
        text_columns=None,
        settings=settings,
        chunking=ChunkSettings(chunker="recursive", size=60),
    )
    env.provider.latency_s = 0.3  # the kill lands while requests are in flight
    script = tmp_path / "worker.py"
    script.write_text(
        textwrap.dedent("""
        import asyncio
        from vectorfill.flows.backfill import backfill
        asyncio.run(backfill("docs"))
        """)
    )
    child_env = dict(
        os.environ,
        VECTORFILL_DATABASE_URL=env.url,
        VF_TEST_API_KEY=API_KEY,
        PREFECT_API_URL=prefect_server,
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=child_env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while len(env.provider.inputs) < 40:  # well into the work: requests answered and in flight
            assert proc.poll() is None, "the worker ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    st = env.status()
    assert st.pending > 0 and st.embedded + st.pending == 60, st
    env.provider.latency_s = 0
    expire_leases(env.url)  # the dead worker's leases end (the time passing, without the wait)
    summary = env.backfill()
    assert summary.failed == 0
    st = env.status()
    assert (st.embedded, st.pending, st.failed) == (60, 0, 0)
    with env.connect() as conn:
        rows = conn.execute(
            sql.SQL("SELECT id, string_agg(chunk, '' ORDER BY chunk_seq) FROM vectorfill.docs GROUP BY id")
        ).fetchall()
    assert dict(rows) == texts  # every document's chunks, exactly its text, none twice
