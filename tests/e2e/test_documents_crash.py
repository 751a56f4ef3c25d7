"""The chaos guarantees hold for document jobs: a backfill killed (SIGKILL) mid-run, or
Postgres restarted under it, loses nothing, and a later run finishes with every document's
chunks right."""

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


def test_postgres_restarting_mid_document_run_loses_nothing_and_resends_at_most_the_slice_in_flight(
    provider, prefect_server, monkeypatch, tmp_path
):
    """On a server of its own (restarting it disturbs no other test), as the text job's test
    in test_crash.py: the run rides out the restart, and a later run finishes."""
    import threading

    import vectorfill.documents as documents
    from conftest import Env
    from vectorfill.local import pgembedded
    from vectorfill.storage.db import migrate

    data_dir = tmp_path / "pg"
    url = pgembedded.start(data_dir)
    try:
        migrate(url)
        monkeypatch.setenv("VECTORFILL_DATABASE_URL", url)
        monkeypatch.setenv("VF_TEST_API_KEY", API_KEY)
        env = Env(url, provider)
        texts = {}
        with env.connect() as conn:
            conn.execute("CREATE TABLE files (id bigint PRIMARY KEY, uri text)")
            for i in range(1, 81):
                path = tmp_path / f"doc{i}.docx"
                path.write_bytes(make.docx(make.paragraphs(12, seed=100 + i)))
                texts[i] = parse_document(str(path), "docx", path.read_bytes())
                conn.execute("INSERT INTO files VALUES (%s, %s)", (i, str(path)))
        max_inputs, concurrency = 20, 2
        settings = JobSettings(
            max_inputs=max_inputs, concurrency=concurrency, retries=2, documents=DocumentSettings(uri="uri")
        )
        env.create_job(
            table="files",
            template=None,
            text_columns=None,
            settings=settings,
            chunking=ChunkSettings(chunker="recursive", size=60),
        )
        parses: list[str] = []
        real = documents.parse_document

        restarted = threading.Event()

        def counting(uri, fmt, data):
            parses.append(uri)
            if len(parses) == 40:  # in a claim, between its lease and its record, requests in flight
                pgembedded.stop(data_dir)
                time.sleep(0.5)
                pgembedded.start(data_dir)
                restarted.set()
            return real(uri, fmt, data)

        monkeypatch.setattr(documents, "parse_document", counting)
        provider.latency_s = 0.2
        outcome = {}

        def run():
            try:
                outcome["summary"] = env.backfill()
            except Exception as exc:  # kept for the assertion below, which shows it
                outcome["error"] = exc

        worker = threading.Thread(target=run)
        worker.start()
        # a first restart lands in the claim (above); a second while requests are in flight
        assert restarted.wait(120)
        deadline = time.monotonic() + 120
        while env.status().embedded < 20:
            assert worker.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
        pgembedded.stop(data_dir)
        time.sleep(0.5)
        pgembedded.start(data_dir)
        worker.join(180)
        assert not worker.is_alive()
        assert "error" not in outcome, f"the run failed on the restart: {outcome['error']!r}"
        first = outcome["summary"]
        assert first.failed == 0, first
        provider.latency_s = 0
        expire_leases(url)  # the leases of slices that were in flight at the restart
        rest = env.backfill()
        assert first.embedded + rest.embedded == 80, "each document counted once, by the run that stored it"
        st = env.status()
        assert (st.embedded, st.pending, st.failed) == (80, 0, 0)
        with env.connect() as conn:
            rows = conn.execute(
                sql.SQL("SELECT id, string_agg(chunk, '' ORDER BY chunk_seq) FROM vectorfill.docs GROUP BY id")
            ).fetchall()
            stored = conn.execute("SELECT count(*) FROM vectorfill.docs").fetchone()[0]
        assert dict(rows) == texts  # every document's chunks, exactly its text
        resent = len(provider.inputs) - stored
        assert resent <= concurrency * max_inputs, f"{resent} chunks sent twice (more than the requests in flight)"
        reparsed = len(parses) - len(set(parses))
        assert len(set(parses)) == 80 and reparsed <= concurrency * max_inputs, (len(parses), reparsed)
    finally:
        pgembedded.stop(data_dir)
