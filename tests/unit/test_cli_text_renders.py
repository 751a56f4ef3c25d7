"""Every help text and message prints as written: nothing in brackets is eaten as rich
markup (``serve-embeddings --help`` used to show ``all-MiniLM-L6-v2 (needs )``)."""

from __future__ import annotations

import ast
import inspect
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import vectorfill
from vectorfill import errors
from vectorfill.cli import _output
from vectorfill.cli.app import app

BRACKETED = re.compile(r"\[[^\]\s]*[A-Za-z][^\]]*\]")
SRC = Path(vectorfill.__file__).parent


def _commands(cmd, path: tuple[str, ...] = ()):
    """Every command under ``cmd`` (typer ships its own copy of click: duck-typed)."""
    yield path, cmd
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, (*path, name))


def _flat(text: str) -> str:
    return " ".join(text.split())


def _all_commands():
    return list(_commands(typer.main.get_command(app)))


def test_the_walk_meets_every_command():
    names = {" ".join(p) for p, _ in _all_commands()}
    assert {"backfill", "serve-embeddings", "job create", "db start", "demo"} <= names


@pytest.mark.parametrize("path", [p for p, _ in _all_commands()], ids=lambda p: " ".join(p) or "vectorfill")
def test_help_shows_every_bracketed_word(path):
    cmd = dict(_all_commands())[path]
    written = [cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params]
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    assert result.exit_code == 0, result.output
    shown = _flat(result.output)
    for text in written:
        for word in BRACKETED.findall(text):
            assert word in shown, f"{' '.join(path)} --help lost {word!r}:\n{result.output}"
    assert "()" not in shown.replace("main()", ""), result.output


def test_serve_embeddings_help_names_the_local_extra():
    result = CliRunner().invoke(app, ["serve-embeddings", "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    assert "all-MiniLM-L6-v2 (needs [local]) or fake-embed" in _flat(result.output)


def _error_classes():
    return [
        getattr(errors, name)
        for name in errors.__all__
        if inspect.isclass(getattr(errors, name)) and issubclass(getattr(errors, name), errors.VectorfillError)
    ]


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_every_error_prints_its_brackets_as_written(cls):
    if cls is errors.RowsFailed:
        exc = cls(None, 3, "docs")
        wanted = ["vectorfill failures docs"]
    elif issubclass(cls, errors.DocumentError):
        exc = cls("s3://b/[k].pdf", "needs the [documents] extra", job="docs", setting="[x]", fix="see [y]")
        wanted = ["s3://b/[k].pdf: needs the [documents] extra", "job 'docs'", "[x]", "see [y]"]
    elif cls is errors.SpendCapReached:
        when = datetime(2026, 12, 8, tzinfo=UTC)
        exc = cls(job="docs", setting="[x]", cap=1.0, spent=0.99, cost=0.02, resets_at=when, fix="see [y]")
        wanted = ["job 'docs'", "[x]", "see [y]", "2026-12-08 00:00 UTC"]
    else:
        exc = cls("needs the [local] extra: pip install '.[local]'", job="docs", setting="[x]", fix="see [y]")
        wanted = ["needs the [local] extra: pip install '.[local]'", "job 'docs'", "[x]", "see [y]"]
    with _output.err.capture() as cap:
        _output.print_error(exc)
    printed = cap.get()
    for word in wanted:
        assert word in printed, printed
    assert printed.count("error:") + printed.count("warning:") == 1, printed


def test_notes_print_their_brackets():
    with _output.err.capture() as cap:
        _output.note("pip install '.[local]' [bold]x[/]")
    assert "pip install '.[local]' [bold]x[/]" in cap.get()


def test_no_message_is_written_in_rich_markup():
    """The consoles read no markup, so a markup tag in a message would print as is."""
    tag = re.compile(r"\[/[a-z ]*\]")
    found = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            text = node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else ""
            if tag.search(text) and "``" not in text:  # (a docstring quoting markup in ``...`` is fine)
                found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not found, found
