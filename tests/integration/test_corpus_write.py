"""The offline demo corpus written with COPY into a real Postgres (reading it: test_corpus.py)."""

from __future__ import annotations

import dataclasses

import psycopg
import pytest

from vectorfill.errors import DatabaseError
from vectorfill.local.corpus import DocRow, load_stdlib_docs, write_corpus

pytestmark = pytest.mark.xdist_group("corpus")  # its module-scoped fixture is made once, on one worker


@pytest.fixture(scope="module")
def rows() -> list[DocRow]:
    return load_stdlib_docs()


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
