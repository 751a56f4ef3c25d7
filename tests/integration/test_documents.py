"""Document jobs end to end: files of every format named in a column, parsed, chunked,
embedded through the fake provider; bad documents failed with the reason; edits, renames
and deletes kept in step."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from psycopg import sql

import document_helpers as make
from vectorfill.config import ChunkSettings, DocumentSettings, JobSettings
from vectorfill.documents import parse_document

CHUNK = ChunkSettings(chunker="recursive", size=60)


def _table(env, rows: dict[int, str | None], table: str = "files") -> None:
    with env.connect() as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, uri text)").format(sql.Identifier(table)))
        for i, uri in rows.items():
            conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(sql.Identifier(table)), (i, uri))


def _doc_job(env, table: str = "files", **documents):
    settings = JobSettings(retries=1, documents=DocumentSettings(uri="uri", **documents))
    return env.create_job(table=table, template=None, text_columns=None, settings=settings, chunking=CHUNK)


def _chunks(env, job: str = "docs") -> dict[int, list[str]]:
    with env.connect() as conn:
        rows = conn.execute(
            sql.SQL("SELECT id, chunk FROM {} ORDER BY id, chunk_seq").format(sql.Identifier("vectorfill", job))
        ).fetchall()
    out: dict[int, list[str]] = {}
    for i, chunk in rows:
        out.setdefault(i, []).append(chunk)
    return out


def _failures(env, job: str = "docs") -> dict[int, tuple[str, str]]:
    from vectorfill.jobs.registry import list_failures

    with env.connect() as conn:
        return {int(f["row_key"][0]): (f["reason"], f["message"]) for f in list_failures(conn, job)}


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


@pytest.fixture
def library(tmp_path: Path) -> dict[str, tuple[Path, str, bytes]]:
    """One document of each format: (path, format, bytes)."""
    ps = make.paragraphs(16, seed=3)
    docs = {
        "report.pdf": ("pdf", make.pdf(ps[:8])),
        "memo.docx": ("docx", make.docx(ps[8:12], table=[["name", "value"], ["alpha", "1"]])),
        "figures.xlsx": (
            "xlsx",
            make.xlsx({"Q1": [["item", "count"], ["alpha", 3], ["beta", 4.5]], "Q2": [["gamma", 7]]}),
        ),
        "book.epub": ("epub", make.epub([("One", ps[:3]), ("Two", ps[3:6])])),
        "page.html": ("html", make.html("A page", ps[12:16])),
        "notes.md": ("markdown", ("# Notes\n\n" + "\n\n".join(f"- {p}" for p in ps[:5])).encode()),
        "plain.txt": ("text", "\n\n".join(ps[5:10]).encode() + " — café, naïve, ½".encode()),
        "latin1.txt": ("text", "Déjà vu: a café in Zürich, señor. ".encode("latin-1") * 20),
    }
    return {name: (_write(tmp_path, name, data), fmt, data) for name, (fmt, data) in docs.items()}


def test_a_document_job_embeds_every_format_as_the_parsers_text_chunked(env, library):
    names = sorted(library)
    rows = {}
    for i, name in enumerate(names, 1):
        path = library[name][0]
        rows[i] = f"file://{path}" if i % 2 else str(path)  # plain paths and file:// URIs
    _table(env, rows)
    _doc_job(env)
    summary = env.backfill()
    assert summary.failed == 0
    chunks = _chunks(env)
    for i, name in enumerate(names, 1):
        _path, fmt, data = library[name]
        text = parse_document(rows[i], fmt, data)
        assert "".join(chunks[i]) == text, name  # the chunks are exactly the parser's text
        assert all(c in env.provider.inputs for c in chunks[i])
    html = "".join(chunks[names.index("page.html") + 1])
    assert not any(b in html for b in make.BOILERPLATE)
    assert "Déjà vu: a café in Zürich, señor." in "".join(chunks[names.index("latin1.txt") + 1])
    assert "café, naïve, ½" in "".join(chunks[names.index("plain.txt") + 1])
    assert "alpha\t3" in "".join(chunks[names.index("figures.xlsx") + 1])


def test_bad_documents_fail_with_the_uri_and_the_reason_and_the_batch_goes_on(env, tmp_path):
    good = _write(tmp_path, "good.txt", b"A perfectly good document about embeddings.")
    cases = {
        2: (str(tmp_path / "missing.pdf"), "not_found", "no such file"),
        3: (str(_write(tmp_path, "secret.pdf", make.pdf(make.paragraphs(3), password="pw"))), "encrypted", "encrypted"),
        4: (str(_write(tmp_path, "scan.pdf", make.scanned_pdf())), "no_text_layer", "OCR is not supported"),
        5: (str(_write(tmp_path, "empty.txt", b"")), "empty_document", "empty"),
        6: (str(_write(tmp_path, "blob.bin", os.urandom(4096))), "unknown_format", "unknown format"),
        7: (str(_write(tmp_path, "broken.pdf", b"%PDF-1.7\n" + os.urandom(2000))), "corrupt", "not a readable PDF"),
        8: (str(_write(tmp_path, "broken.docx", b"PK\x03\x04 not really a zip")), "corrupt", "DOCX"),
        9: (str(_write(tmp_path, "big.txt", b"x" * 300_000)), "too_large", "max_document_bytes"),
        10: ("https://example.com/a.pdf", "bad_uri", "not supported"),
        11: (
            str(_write(tmp_path, "blank.html", b"<html><body><nav>only a menu</nav></body></html>")),
            "empty_document",
            "no text",
        ),
    }
    _table(env, {1: str(good)} | {i: c[0] for i, c in cases.items()})
    _doc_job(env, max_document_bytes=200_000)
    summary = env.backfill()
    assert summary.failed == len(cases)
    assert _chunks(env) == {1: ["A perfectly good document about embeddings."]}
    failures = _failures(env)
    for i, (uri, reason, words) in cases.items():
        got_reason, message = failures[i]
        assert got_reason == reason, (i, failures[i])
        assert uri in message and words in message, (i, message)


def test_an_edited_document_resends_only_its_changed_chunks_and_a_rename_or_touch_sends_nothing(env, tmp_path):
    ps = make.paragraphs(12, seed=5)
    a = _write(tmp_path, "a.docx", make.docx(ps))
    b = _write(tmp_path, "b.md", "\n\n".join(ps).encode())
    _table(env, {1: str(a), 2: str(b)})
    _doc_job(env)
    env.backfill()
    before = _chunks(env)
    assert len(before[1]) > 3

    env.provider.reset()
    edited = [*ps]
    edited[6] = "An entirely new paragraph about something else."
    a.write_bytes(make.docx(edited))
    renamed = b.rename(tmp_path / "renamed.md")
    with env.connect() as conn:  # the row's URI column changes (a rename), and a re-queue of row 1
        conn.execute("UPDATE files SET uri = %s WHERE id = 2", (str(renamed),))
        conn.execute("UPDATE files SET uri = uri || '' WHERE id = 1")
        conn.execute("UPDATE files SET uri = %s WHERE id = 1", (f"file://{a}",))
    env.backfill()
    after = _chunks(env)
    assert after[2] == before[2]  # renamed: nothing sent for it
    changed = [c for c in after[1] if c not in before[1]]
    assert changed and all("entirely new paragraph" in c for c in changed)
    assert sorted(env.provider.inputs) == sorted(changed)  # only the changed chunk(s) were paid for

    with env.connect() as conn:
        conn.execute("DELETE FROM files WHERE id = 1")
    assert set(_chunks(env)) == {2}


def test_an_estimate_of_a_document_job_reads_the_documents_and_counts_what_the_backfill_sends(env, library, tmp_path):
    from vectorfill.jobs.estimate import estimate

    rows = {i: str(library[name][0]) for i, name in enumerate(sorted(library), 1)}
    rows[len(rows) + 1] = str(tmp_path / "missing.pdf")
    _table(env, rows)
    _doc_job(env)
    with env.connect() as conn:
        (before,) = estimate(conn, "docs")
    summary = env.backfill()
    assert before.failing == 1  # the missing file, as the run fails it
    # chunks that repeat (within a document or across them) are sent once, and copied
    assert before.chunks == len(env.provider.inputs) == summary.sent
    assert summary.sent + summary.reused == sum(len(c) for c in _chunks(env).values())
    assert before.rows == len(library)


def _count_parses(monkeypatch) -> list[str]:
    """The URIs parsed from now on (every parse of the engine goes through this function)."""
    import vectorfill.documents as documents

    parsed: list[str] = []
    real = documents.parse_document

    def counting(uri, fmt, data):
        parsed.append(uri)
        return real(uri, fmt, data)

    monkeypatch.setattr(documents, "parse_document", counting)
    return parsed


def _records(env) -> dict[int, bytes]:
    with env.connect() as conn:
        rows = conn.execute("SELECT row_key, sha256 FROM vectorfill.document_hashes").fetchall()
    return {int(k[0]): bytes(h) for k, h in rows}


def test_a_document_queued_again_with_the_same_bytes_is_neither_parsed_nor_sent(env, tmp_path, monkeypatch):
    import hashlib

    ps = make.paragraphs(12, seed=7)
    data_a, data_b = make.docx(ps), "\n\n".join(ps[:6]).encode()
    a = _write(tmp_path, "a.docx", data_a)
    b = _write(tmp_path, "b.md", data_b)
    _table(env, {1: str(a), 2: str(b)})
    _doc_job(env)
    parsed = _count_parses(monkeypatch)
    env.backfill()
    before = _chunks(env)
    assert len(parsed) == 2 and len(before[1]) > 3
    assert _records(env) == {1: hashlib.sha256(data_a).digest(), 2: hashlib.sha256(data_b).digest()}

    # re-uploaded unchanged (the same bytes written again, the row queued by a new URI
    # spelling), and renamed (moved, the row's URI changed): both queued, neither parsed
    parsed.clear()
    env.provider.reset()
    a.write_bytes(data_a)
    renamed = b.rename(tmp_path / "renamed.md")
    with env.connect() as conn:
        conn.execute("UPDATE files SET uri = %s WHERE id = 1", (f"file://{a}",))
        conn.execute("UPDATE files SET uri = %s WHERE id = 2", (str(renamed),))
    summary = env.backfill()
    assert (summary.unchanged, summary.failed) == (2, 0)
    assert parsed == [] and env.provider.requests == 0
    assert _chunks(env) == before and env.status().pending == 0

    # changed bytes: parsed again, and only the changed chunks sent
    edited = [*ps]
    edited[4] = "A wholly different fourth paragraph about tides."
    data_a2 = make.docx(edited)
    a.write_bytes(data_a2)
    with env.connect() as conn:
        conn.execute("UPDATE files SET uri = %s WHERE id = 1", (str(a),))
    env.backfill()
    after = _chunks(env)
    changed = [c for c in after[1] if c not in before[1]]
    assert parsed == [str(a)]
    assert changed and sorted(env.provider.inputs) == sorted(changed)
    assert "".join(after[1]) == parse_document(str(a), "docx", data_a2)
    assert _records(env)[1] == hashlib.sha256(data_a2).digest()

    # a row deleted, then made again with the same document: its old record is not trusted
    # (the row has no stored chunks), so it is parsed and embedded as a new row
    with env.connect() as conn:
        conn.execute("DELETE FROM files WHERE id = 1")
    env.backfill()
    parsed.clear()
    env.provider.reset()
    with env.connect() as conn:
        conn.execute("INSERT INTO files VALUES (1, %s)", (str(a),))
    again = env.backfill()
    # parsed again, and every chunk embedded again, except those another row has (copied)
    assert parsed == [str(a)] and set(env.provider.inputs) <= set(after[1])
    assert len(env.provider.inputs) == again.sent and again.sent + again.reused == len(after[1])
    assert _chunks(env) == {1: after[1], 2: before[2]}


def test_a_record_whose_chunks_are_not_stored_is_not_trusted(env, tmp_path, monkeypatch):
    """The record is written at the claim, before the request: if the chunks never reach
    the store (a run killed, a row failed, vectors dropped), the same bytes are parsed and
    embedded again, never settled as up to date."""
    ps = make.paragraphs(6, seed=9)
    a = _write(tmp_path, "a.md", "\n\n".join(ps).encode())
    _table(env, {1: str(a)})
    _doc_job(env)
    parsed = _count_parses(monkeypatch)
    env.backfill()
    before = _chunks(env)
    with env.connect() as conn:  # the chunks are gone, the record stays (as after a lost store)
        (table,) = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'vectorfill' AND tablename LIKE '\\_v\\_%'"
        ).fetchone()
        conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier("vectorfill", table)))
        conn.execute("UPDATE files SET uri = %s WHERE id = 1", (f"file://{a}",))
    assert _records(env)
    parsed.clear()
    env.provider.reset()
    env.backfill()
    assert parsed == [f"file://{a}"]
    assert _chunks(env) == before and sorted(env.provider.inputs) == sorted(before[1])


def test_the_served_documents_sync_flow_keeps_a_folder_in_step_on_a_schedule(env, tmp_path):
    import datetime

    from vectorfill.flows.documents import documents_sync
    from vectorfill.orchestration.serve import build_deployments

    folder = tmp_path / "kb"
    folder.mkdir()
    _write(folder, "a.md", b"# A\n\nFirst document.")
    _write(folder, "b.txt", b"Second document.")
    [served] = build_deployments([], cron=None, reembed=False, documents=[(str(folder), "kb")])
    assert served.name == "documents-sync-kb"
    assert served.parameters == {"source": str(folder), "table": "kb"}
    assert [s.schedule.interval for s in served.schedules] == [datetime.timedelta(seconds=600)]
    assert not [d for d in build_deployments(["docs"], cron=None) if d.name.startswith("documents-sync")]  # asked only

    first = documents_sync(**served.parameters)  # what `vectorfill serve --documents` runs
    assert (first["listed"], first["added"]) == (2, 2)
    with env.connect() as conn:
        uris = sorted(r[0] for r in conn.execute("SELECT uri FROM kb"))
    assert [u.rsplit("/", 1)[1] for u in uris] == ["a.md", "b.txt"]
    (folder / "b.txt").unlink()
    second = documents_sync(**served.parameters)
    assert (second["listed"], second["deleted"], second["added"]) == (1, 1, 0)
    nothing = {"listed": 1, "added": 0, "changed": 0, "renamed": 0, "deleted": 0}
    assert documents_sync(**served.parameters) == nothing  # a third sync, nothing changed: nothing written
