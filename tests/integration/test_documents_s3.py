"""Document jobs on S3 (moto's server on loopback) and document tables kept in step with a
bucket prefix or a directory by `documents sync`."""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from psycopg import sql

import document_helpers as make
from fake_s3 import FakeS3
from vectorfill.config import ChunkSettings, DocumentSettings, JobSettings
from vectorfill.documents import parse_document
from vectorfill.documents._listing import Listed, Listing
from vectorfill.documents.sync import sync_documents, sync_listing
from vectorfill.engine import slice as slice_mod
from vectorfill.errors import DocumentStoreUnavailable

BUCKET = "library"
CHUNK = ChunkSettings(chunker="recursive", size=60)


@pytest.fixture
def s3(monkeypatch) -> Iterator[FakeS3]:
    with FakeS3() as fake:
        for name, value in fake.env().items():
            monkeypatch.setenv(name, value)
        fake.client().create_bucket(Bucket=BUCKET)
        yield fake


def _put(s3: FakeS3, key: str, data: bytes, content_type: str | None = None) -> None:
    extra = {"ContentType": content_type} if content_type else {}
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=data, **extra)


def _sync(env, source: str, table: str = "kb"):
    from vectorfill.storage.db import connect

    with connect(env.url, autocommit=True) as conn:
        return sync_documents(conn, source, table)


def _doc_job(env, table: str = "kb", **documents):
    settings = JobSettings(retries=1, documents=DocumentSettings(uri="uri", **documents))
    return env.create_job(table=table, template=None, text_columns=None, settings=settings, chunking=CHUNK)


def _chunks_by_uri(env, table: str = "kb") -> dict[str, list[str]]:
    with env.connect() as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT t.uri, v.chunk FROM vectorfill.docs v JOIN {} t ON t.id = v.id ORDER BY t.uri, v.chunk_seq"
            ).format(sql.Identifier(table))
        ).fetchall()
    out: dict[str, list[str]] = {}
    for uri, chunk in rows:
        out.setdefault(uri, []).append(chunk)
    return out


def _rows(env, table: str = "kb") -> dict[str, tuple]:
    """uri -> (id, etag, xmin): xmin changes whenever a row is written."""
    with env.connect() as conn:
        rows = conn.execute(
            sql.SQL("SELECT uri, id, etag, xmin::text FROM {}").format(sql.Identifier(table))
        ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


def test_a_bucket_synced_and_embedded_then_edits_renames_and_deletes_cost_only_the_changed_chunks(env, s3):
    ps = make.paragraphs(24, seed=11)
    files = {
        "kb/guide.pdf": (make.pdf(ps[:8]), None),
        "kb/memo.docx": (make.docx(ps[8:14]), None),
        "kb/page": (make.html("Handbook", ps[14:20]), "text/html"),  # no extension: the content type says
        "kb/notes.md": ("\n\n".join(ps[20:]).encode(), None),
        "other/skip.txt": (b"outside the prefix", None),
    }
    for key, (data, ctype) in files.items():
        _put(s3, key, data, ctype)
    synced = _sync(env, f"s3://{BUCKET}/kb/")
    assert (synced.listed, synced.added, synced.written) == (4, 4, 4)
    _doc_job(env)
    summary = env.backfill()
    assert summary.failed == 0
    chunks = _chunks_by_uri(env)
    for key, (data, _ctype) in files.items():
        uri = f"s3://{BUCKET}/{key}"
        if key.startswith("other/"):
            assert uri not in chunks
            continue
        fmt = {"pdf": "pdf", "docx": "docx", "md": "markdown"}.get(key.rsplit(".", 1)[-1], "html")
        assert "".join(chunks[uri]) == parse_document(uri, fmt, data), key

    # nothing changed: the second sync writes nothing, and nothing is queued
    rows_before = _rows(env)
    again = _sync(env, f"s3://{BUCKET}/kb/")
    assert again.written == 0 and again.listed == 4
    assert _rows(env) == rows_before
    assert env.status().pending == 0

    # an edit, an unchanged re-upload, a rename (copy + delete) and a delete
    env.provider.reset()
    edited = [*ps[8:14]]
    edited[2] = "A brand new paragraph that was never embedded before."
    _put(s3, "kb/memo.docx", make.docx(edited))
    _put(s3, "kb/notes.md", files["kb/notes.md"][0])  # the same bytes: the same ETag
    client = s3.client()
    client.copy_object(Bucket=BUCKET, Key="kb/renamed-guide.pdf", CopySource={"Bucket": BUCKET, "Key": "kb/guide.pdf"})
    client.delete_object(Bucket=BUCKET, Key="kb/guide.pdf")
    client.delete_object(Bucket=BUCKET, Key="kb/page")
    synced = _sync(env, f"s3://{BUCKET}/kb/")
    # changed: the edit, and the re-upload's last_modified (its ETag, which the job watches, is the same)
    assert (synced.changed, synced.renamed, synced.deleted, synced.added) == (2, 1, 1, 0)
    after_rows = _rows(env)
    assert after_rows[f"s3://{BUCKET}/kb/renamed-guide.pdf"][0] == rows_before[f"s3://{BUCKET}/kb/guide.pdf"][0]
    assert after_rows[f"s3://{BUCKET}/kb/notes.md"][:2] == rows_before[f"s3://{BUCKET}/kb/notes.md"][:2]

    env.backfill()
    after = _chunks_by_uri(env)
    assert after[f"s3://{BUCKET}/kb/renamed-guide.pdf"] == chunks[f"s3://{BUCKET}/kb/guide.pdf"]
    assert f"s3://{BUCKET}/kb/page" not in after
    new_chunks = [c for c in after[f"s3://{BUCKET}/kb/memo.docx"] if c not in chunks[f"s3://{BUCKET}/kb/memo.docx"]]
    assert new_chunks and all("brand new paragraph" in c for c in new_chunks)
    assert sorted(env.provider.inputs) == sorted(new_chunks)  # the rename and the re-upload cost nothing


def test_s3_access_denied_and_a_missing_object_fail_their_rows_and_a_503_is_retried(env, s3):
    for key in ("kb/a.txt", "kb/denied.txt", "kb/flaky.txt", "kb/gone.txt"):
        _put(s3, key, f"The text of {key}.".encode())
    _sync(env, f"s3://{BUCKET}/kb/")
    s3.client().delete_object(Bucket=BUCKET, Key="kb/gone.txt")  # listed, then deleted before the backfill
    s3.deny("kb/denied.txt")
    s3.fail("kb/flaky.txt", status=503, code="SlowDown", times=1)
    _doc_job(env)
    summary = env.backfill()
    assert summary.failed == 2
    from vectorfill.jobs.registry import list_failures

    with env.connect() as conn:
        failures = {
            f["message"].split(": ", 1)[1].split(":", 2)[0] + ":" + f["message"].split(":", 3)[2]: f["reason"]
            for f in list_failures(conn, "docs")
        }
        reasons = {f["reason"] for f in list_failures(conn, "docs")}
        messages = " ".join(f["message"] for f in list_failures(conn, "docs"))
    assert failures and reasons == {"access_denied", "not_found"}
    assert f"s3://{BUCKET}/kb/denied.txt" in messages and f"s3://{BUCKET}/kb/gone.txt" in messages
    chunks = _chunks_by_uri(env)
    assert chunks[f"s3://{BUCKET}/kb/flaky.txt"] == ["The text of kb/flaky.txt."]  # retried, not failed
    assert s3.gets["kb/flaky.txt"] == 2


def test_a_lasting_s3_outage_stops_the_run_with_every_row_still_queued_and_no_attempt_counted(env, s3, monkeypatch):
    monkeypatch.setattr(slice_mod, "STAGE_DELAYS", {"claim": (0.05,), "store": (0.05,)})
    for i in range(3):
        _put(s3, f"kb/{i}.txt", f"Document number {i}.".encode())
    _sync(env, f"s3://{BUCKET}/kb/")
    _doc_job(env)
    for i in range(3):
        s3.fail(f"kb/{i}.txt", status=503, code="ServiceUnavailable", times=None)
    with pytest.raises(DocumentStoreUnavailable, match="503"):
        env.backfill()
    status = env.status()
    assert (status.pending, status.failed, status.embedded) == (3, 0, 0)
    with env.connect() as conn:
        attempts = [r[0] for r in conn.execute("SELECT attempts FROM vectorfill._q_1_1")]
    assert attempts == [0, 0, 0]  # the store's fault, not the rows'

    s3.clear_faults()
    summary = env.backfill()
    assert summary.failed == 0 and len(_chunks_by_uri(env)) == 3


def test_a_directory_sync_keeps_renames_edits_and_deletes_and_a_second_sync_writes_nothing(env, tmp_path: Path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.txt", "b.txt", "sub/c.txt"):
        (folder / name).write_text(f"The text of {name}.")
    (folder / ".hidden").write_text("skipped")
    first = _sync(env, str(folder))
    assert (first.listed, first.added) == (3, 3)
    rows = _rows(env)
    assert _sync(env, str(folder)).written == 0 and _rows(env) == rows

    os.rename(folder / "a.txt", folder / "sub" / "a-renamed.txt")
    (folder / "b.txt").write_text("The text of b.txt, edited.")
    (folder / "sub" / "c.txt").unlink()
    synced = _sync(env, str(folder))
    assert (synced.renamed, synced.changed, synced.deleted, synced.added) == (1, 1, 1, 0)
    after = _rows(env)
    assert after[str(folder / "sub" / "a-renamed.txt")][0] == rows[str(folder / "a.txt")][0]
    assert set(after) == {str(folder / "sub" / "a-renamed.txt"), str(folder / "b.txt")}


def test_a_listing_of_100000_objects_is_streamed_page_by_page_and_a_second_sync_writes_nothing(env):
    n, page = 100_000, 1000
    made = datetime(2026, 1, 1, tzinfo=UTC)

    def pages() -> Iterator[list[Listed]]:
        for start in range(0, n, page):
            yield [Listed(f"s3://big/k/{i:06d}.pdf", f"etag{i}", 1000 + i, made) for i in range(start, start + page)]

    from vectorfill.storage.db import connect

    with connect(env.url, autocommit=True) as conn:
        tracemalloc.start()
        synced = sync_listing(conn, Listing("s3://big/k/", pages()), "big")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert synced.added == n
        # 100,000 objects held at once would be ~40 MB of Python objects; a page is ~0.4 MB
        assert peak < 8 * 2**20, peak
        xmins = conn.execute("SELECT sum(xmin::text::bigint), count(*) FROM big").fetchone()
        assert sync_listing(conn, Listing("s3://big/k/", pages()), "big").written == 0
        assert conn.execute("SELECT sum(xmin::text::bigint), count(*) FROM big").fetchone() == xmins


def test_a_sync_into_a_table_that_is_not_a_document_table_is_refused_with_what_it_needs(env, tmp_path):
    from vectorfill.errors import SourceError

    (tmp_path / "a.txt").write_text("text")
    with env.connect() as conn:
        conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY, uri text UNIQUE, body text)")
    with pytest.raises(SourceError, match="needs the columns id, uri text, etag text, size bigint"):
        _sync(env, str(tmp_path), "notes")
