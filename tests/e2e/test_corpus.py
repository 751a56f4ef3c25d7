"""The offline demo corpus: the standard library's docstrings, and writing them with COPY."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import subprocess
import sys

import pytest

from vectorfill.errors import ConfigError
from vectorfill.local.corpus import MAX_BODY_CHARS, DocRow, load_stdlib_docs

pytestmark = pytest.mark.xdist_group("corpus")  # its module-scoped fixture is made once, on one worker


@pytest.fixture(scope="module")
def rows() -> list[DocRow]:
    return load_stdlib_docs()


def _digest(rows: list[DocRow]) -> str:
    return hashlib.sha256(repr([dataclasses.astuple(r) for r in rows]).encode()).hexdigest()


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
