"""The offline demo corpus: the standard library's docstrings, and writing them with COPY."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import subprocess
import sys

import psycopg
import pytest

from vectorfill.errors import ConfigError, DatabaseError
from vectorfill.local import corpus
from vectorfill.local.corpus import MAX_BODY_CHARS, DocRow, load_stdlib_docs, write_corpus

pytestmark = pytest.mark.xdist_group("corpus")  # its module-scoped fixture is made once, on one worker


@pytest.fixture(scope="module")
def rows() -> list[DocRow]:
    return load_stdlib_docs()


def _digest(rows: list[DocRow]) -> str:
    return hashlib.sha256(repr([dataclasses.astuple(r) for r in rows]).encode()).hexdigest()


def test_public_api_is_what_all_says():
    assert sorted(corpus.__all__) == sorted(["DocRow", "MAX_BODY_CHARS", "load_stdlib_docs", "write_corpus"])


def test_corpus_has_thousands_of_real_docstrings(rows: list[DocRow]):
    assert len(rows) > 2000
    ids = {r.id for r in rows}
    assert {
        "json",
        "json.dumps",
        "json.JSONDecoder.decode",
        "builtins.dict.get",
        "sqlite3.connect",
    } <= ids


def test_rows_are_clean_unique_and_bounded(rows: list[DocRow]):
    assert len({r.id for r in rows}) == len(rows)
    assert len({r.body for r in rows}) == len(rows)
    for r in rows:
        assert r.title == r.id
        assert r.body and r.body == r.body.strip()
        assert len(r.body) <= MAX_BODY_CHARS
        assert "\x00" not in r.body


def test_private_names_tests_and_side_effect_modules_are_skipped(rows: list[DocRow]):
    ids = {r.id for r in rows}
    assert not {"test", "unittest.test", "ctypes.test", "asyncio.__main__", "encodings.cp1252"} & ids
    for r in rows:
        parts = r.id.split(".")
        assert not any(p.startswith("_") for p in parts), r.id
        assert not re.search(r"(^|\.)(tests?|idle_test)\.", r.id), r.id  # cgi.test is a function
        assert parts[0] not in {"antigravity", "this", "idlelib", "tkinter", "turtle", "lib2to3"}, r.id


def test_same_rows_in_a_fresh_interpreter(rows: list[DocRow]):
    code = (
        "import dataclasses, hashlib; from vectorfill.local.corpus import load_stdlib_docs; "
        "rows = load_stdlib_docs(); "
        "print(hashlib.sha256(repr([dataclasses.astuple(r) for r in rows]).encode()).hexdigest())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == _digest(rows)


def test_same_rows_again_after_the_submodules_are_imported(rows: list[DocRow]):
    # importing curses.has_key turns the attribute curses.has_key from a function into a module
    import curses.has_key  # noqa: F401
    import unittest.main  # noqa: F401

    assert load_stdlib_docs() == rows


def test_limit_keeps_the_first_rows(rows: list[DocRow]):
    assert load_stdlib_docs(limit=25) == rows[:25]
    assert load_stdlib_docs(limit=0) == []
    with pytest.raises(ConfigError):
        load_stdlib_docs(limit=-1)


def _table(url: str, qualified: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT id, title, body FROM {qualified} ORDER BY id").fetchall()


def test_write_corpus_creates_the_table_and_is_idempotent(fresh_db: str, rows: list[DocRow]):
    sample = rows[:300]

    assert write_corpus(fresh_db, sample) == 300
    first = _table(fresh_db, "public.stdlib_docs")
    with psycopg.connect(fresh_db) as conn:
        xmin_before = conn.execute("SELECT sum(xmin::text::bigint) FROM stdlib_docs").fetchone()

    assert write_corpus(fresh_db, sample) == 300

    assert _table(fresh_db, "public.stdlib_docs") == first == sorted(dataclasses.astuple(r) for r in sample)
    with psycopg.connect(fresh_db) as conn:  # unchanged rows were not rewritten
        assert conn.execute("SELECT sum(xmin::text::bigint) FROM stdlib_docs").fetchone() == xmin_before


def test_write_corpus_updates_changed_rows_and_adds_new_ones(fresh_db: str, rows: list[DocRow]):
    write_corpus(fresh_db, rows[:10], schema="demo", table="docs")
    edited = dataclasses.replace(rows[0], body="edited")

    assert write_corpus(fresh_db, [edited, *rows[10:15]], schema="demo", table="docs") == 6

    table = {r[0]: r for r in _table(fresh_db, "demo.docs")}
    assert len(table) == 15
    assert table[rows[0].id][2] == "edited"


def test_write_corpus_accepts_the_sqlalchemy_url(fresh_db: str, rows: list[DocRow]):
    url = "postgresql+psycopg://" + fresh_db.split("://", 1)[1]
    assert write_corpus(url, rows[:3]) == 3


def test_write_corpus_reports_an_unreachable_database_as_database_error(rows: list[DocRow]):
    with pytest.raises(DatabaseError, match="cannot write the corpus"):
        write_corpus("postgresql://nobody@/nowhere?host=/nonexistent-socket-dir", rows[:1])


def test_stdlib_patched_by_a_third_party_package_does_not_change_the_rows(rows: list[DocRow], monkeypatch):
    """torch replaces inspect.getfile, transformers adds methods to logging.Logger: a process
    that imported them must read the same rows as one that did not."""
    import inspect
    import logging

    def warning_once(self, msg):
        """Log once (as transformers patches it in)."""

    def getfile(obj):
        """A wrapper of inspect.getfile (as torch patches it in)."""

    monkeypatch.setattr(logging.Logger, "warning_once", warning_once, raising=False)
    monkeypatch.setattr(inspect, "getfile", getfile)
    again = load_stdlib_docs()
    assert "logging.Logger.warning_once" not in {r.id for r in again}
    assert _digest(again) == _digest(rows)
