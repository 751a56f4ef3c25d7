"""A real, offline corpus for ``vectorfill demo``: the docstrings of Python's standard library.

Every machine with Python has thousands of real texts (modules, classes, functions,
methods), so the demo needs no network and no data download::

    rows = load_stdlib_docs()                  # ~5,000 DocRow (Python 3.11), well under 1 s
    write_corpus(url, rows)                    # public.stdlib_docs (id, title, body)

What is loaded, and what is not
-------------------------------
* Modules: the public names of :data:`sys.stdlib_module_names` and their public submodules,
  in sorted order; each module's docstring, then its public classes and functions (those
  in ``__all__``; without ``__all__``, those defined in the module or in its private
  accelerator, like ``sqlite3.connect`` from ``_sqlite3``), then each class's own public
  methods. Ids and titles are qualified names: ``json.dumps``,
  ``json.JSONDecoder.decode``.
* Skipped: private names; packages of tests; modules that act on import or only exist for
  a GUI, a REPL or the build (``antigravity``, ``this``, ``idlelib``, ``tkinter``,
  ``turtle``, ``lib2to3``, ``ensurepip``, ``readline``, ...); ``distutils`` (in a virtualenv
  setuptools swaps in its own copy); the ~100 generated codec modules under
  ``encodings``; empty docstrings; an object reached under a second name; a docstring
  identical to one already taken.
* Modules are imported with stdout/stderr captured and warnings silenced; any module that
  fails to import (platform-specific ones, missing optional C libraries) is skipped.

The result is deterministic for a given Python build: modules, members and rows are sorted,
and docstrings are cleaned with :func:`inspect.cleandoc` and cut to :data:`MAX_BODY_CHARS`.
Builds that lack optional C modules (``_curses``, ``_dbm``, ...) give slightly fewer rows.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import pkgutil
import subprocess
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import ModuleType

from psycopg import sql

from vectorfill.errors import ConfigError, DatabaseRefused, DatabaseUnavailable, first_line
from vectorfill.storage.db import connect

__all__ = ["MAX_BODY_CHARS", "DocRow", "load_stdlib_docs", "write_corpus"]

MAX_BODY_CHARS = 4000
"""Longer docstrings are cut (at a line break when one is near) to this many characters."""

# Top-level modules never imported: side effects on import, GUI/REPL/build tooling, or
# content that depends on what is installed rather than on the Python version.
_SKIP_MODULES = frozenset(
    {
        "antigravity",  # opens a web browser
        "this",  # prints the Zen of Python
        "idlelib",
        "tkinter",
        "turtle",
        "turtledemo",
        "lib2to3",
        "ensurepip",
        "distutils",  # replaced by setuptools' copy inside virtualenvs
        "readline",  # can write terminal control codes to fd 1 when imported
        "rlcompleter",  # imports readline
        "pydoc_data",  # one big generated dict
        "test",
        "site",
        "sitecustomize",
        "usercustomize",
        "msilib",
        "winreg",
        "winsound",
        "msvcrt",
        "nt",
    }
)
# Any dotted part equal to one of these skips the module and everything below it.
_SKIP_PARTS = frozenset({"test", "tests", "idle_test", "__main__"})
# Hooks that tools swap at run time; sys and threading keep the originals as __<name>__.
_HOOKS = frozenset({"breakpointhook", "displayhook", "excepthook", "unraisablehook"})
# Packages whose submodules are skipped (the package's own docstring is kept).
_SKIP_SUBMODULES_OF = frozenset({"encodings"})


@dataclass(frozen=True, slots=True)
class DocRow:
    """One documented object of the standard library."""

    id: str
    """Stable key: the qualified name, e.g. ``json.dumps`` or ``json.JSONDecoder.decode``."""
    title: str
    """The qualified name (the same as ``id``), shown as the row's heading."""
    body: str
    """The cleaned docstring, at most :data:`MAX_BODY_CHARS` characters, never empty."""


def load_stdlib_docs(limit: int | None = None) -> list[DocRow]:
    """The standard library's docstrings as rows, in a deterministic order.

    ``limit`` keeps the first ``limit`` rows (the same rows on every call). The rows are read
    in a fresh interpreter (about 0.5 s on Python 3.11), not in this process: third-party
    packages patch stdlib modules at run time (torch replaces ``inspect.getfile``,
    transformers adds methods to ``logging.Logger``), so rows read here would depend on what
    this process had imported, and the demo would re-embed rows that only seemed to change.
    That also keeps the few hundred stdlib modules it imports out of this process.
    """
    if limit is not None and limit < 0:
        raise ConfigError(f"corpus limit must be zero or more, not {limit}")
    code = "from vectorfill.local.corpus import _print_rows; _print_rows()"
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, check=True, timeout=300, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        raise ConfigError(
            f"could not read the standard library's docstrings in a fresh interpreter ({sys.executable}): "
            f"{exc}; {detail.decode(errors='replace')[-500:]}"
        ) from None
    rows = [DocRow(*fields) for fields in json.loads(out.stdout.rsplit(b"\n", 1)[-1])]
    return rows if limit is None else rows[:limit]


def _print_rows() -> None:
    """Write every row as JSON to stdout (run by :func:`load_stdlib_docs` in a fresh interpreter)."""
    rows = [[row.id, row.title, row.body] for row in _iter_rows()]
    sys.stdout.write("\n" + json.dumps(rows))  # on the last line, whatever an import printed


def write_corpus(
    conn_url: str,
    rows: Iterable[DocRow],
    *,
    schema: str = "public",
    table: str = "stdlib_docs",
) -> int:
    """Create ``schema.table`` if missing and upsert ``rows`` into it; returns the row count.

    The table is ``(id text primary key, title text not null, body text not null)``. Rows go
    in with one ``COPY`` into a temporary table, then one ``INSERT ... ON CONFLICT (id) DO
    UPDATE`` that changes a row only when its title or body differ, so writing the same
    corpus again is a no-op (no updated rows, so triggers do not queue re-embeddings). All in
    one transaction: readers see the old table or the new one. When ``rows`` repeats an id,
    the last one wins. The count is the number of distinct ids written.
    """
    by_id = {row.id: row for row in rows}
    url = _psycopg_url(conn_url)
    target = sql.Identifier(schema, table)
    try:
        # one transaction: committed when the block ends, rolled back on any error
        with connect(url) as conn:
            found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema])
            if found.fetchone() is None:
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            conn.execute(_CREATE_TABLE.format(target=target))
            conn.execute(_CREATE_STAGE)
            with conn.cursor() as cur, cur.copy(_COPY_STAGE) as copy:
                for row in by_id.values():
                    copy.write_row((row.id, row.title, row.body))
            conn.execute(_UPSERT.format(target=target))
    except DatabaseUnavailable as exc:
        raise DatabaseUnavailable(
            f"cannot write the corpus to {schema}.{table}: {first_line(exc.__cause__ or exc)}. Check the "
            f"database URL (--db / VECTORFILL_DATABASE_URL) and that Postgres is running",
            sqlstate=exc.sqlstate,
        ) from exc
    except DatabaseRefused as exc:
        raise DatabaseRefused(
            f"Postgres refused the corpus write to {schema}.{table}: {first_line(exc.__cause__ or exc)}. If the "
            f"table exists with other columns, drop it or choose another --table",
            sqlstate=exc.sqlstate,
        ) from exc
    return len(by_id)


# --- SQL -------------------------------------------------------------------------------------

_CREATE_TABLE = sql.SQL(
    "CREATE TABLE IF NOT EXISTS {target} ( id text PRIMARY KEY, title text NOT NULL, body text NOT NULL)"
)
_CREATE_STAGE = sql.SQL(
    "CREATE TEMPORARY TABLE vectorfill_corpus_stage (id text, title text, body text) ON COMMIT DROP"
)
_COPY_STAGE = sql.SQL("COPY vectorfill_corpus_stage (id, title, body) FROM STDIN")
# Touches only rows whose content changed: a re-run updates nothing and fires no triggers.
_UPSERT = sql.SQL(
    "INSERT INTO {target} AS t (id, title, body)"
    " SELECT id, title, body FROM vectorfill_corpus_stage ORDER BY id"
    " ON CONFLICT (id) DO UPDATE SET title = excluded.title, body = excluded.body"
    " WHERE (t.title, t.body) IS DISTINCT FROM (excluded.title, excluded.body)"
)


# --- loading ---------------------------------------------------------------------------------


def _iter_rows() -> Iterator[DocRow]:
    """Rows in order, lazily: a small ``limit`` imports only the first few modules."""
    seen_objects: set[int] = set()
    seen_bodies: set[str] = set()
    seen_ids: set[str] = set()
    alive: list[object] = []  # keeps every object seen alive, so no id() is reused meanwhile

    def first_visit(obj: object) -> bool:
        if id(obj) in seen_objects:
            return False
        seen_objects.add(id(obj))
        alive.append(obj)
        return True

    def row(qualname: str, obj: object) -> DocRow | None:
        body = _clean(_own_doc(obj))
        if not body or body in seen_bodies or qualname in seen_ids:
            return None  # e.g. unittest.main: the TestProgram alias, then the submodule
        seen_bodies.add(body)
        seen_ids.add(qualname)
        return DocRow(id=qualname, title=qualname, body=body)

    for module in _stdlib_modules():
        if not first_visit(module):
            continue
        if found := row(module.__name__, module):
            yield found
        for name, member in _public_members(module):
            if not first_visit(member):
                continue  # reached under a second name: documented where first seen
            qualname = f"{module.__name__}.{name}"
            if found := row(qualname, member):
                yield found
            if inspect.isclass(member):
                for method_name, method in _own_methods(member):
                    if first_visit(method) and (found := row(f"{qualname}.{method_name}", method)):
                        yield found


def _stdlib_modules() -> Iterator[ModuleType]:
    """Every importable public stdlib module, sorted by name, each once."""
    for top in sorted(sys.stdlib_module_names):
        if top.startswith("_") or top in _SKIP_MODULES:
            continue
        module = _quiet_import(top)
        if module is None:
            continue
        yield module
        if top in _SKIP_SUBMODULES_OF:
            continue
        yield from _submodules(module)


def _submodule_names(package: ModuleType) -> set[str]:
    paths = getattr(package, "__path__", None)
    if not paths:
        return set()
    return {info.name for info in pkgutil.iter_modules(list(paths))}


def _submodules(package: ModuleType) -> Iterator[ModuleType]:
    for short in sorted(_submodule_names(package)):
        if short.startswith("_") or short in _SKIP_PARTS:
            continue
        module = _quiet_import(f"{package.__name__}.{short}")
        if module is None:
            continue
        yield module
        yield from _submodules(module)


def _quiet_import(name: str) -> ModuleType | None:
    """Import ``name`` with output captured and warnings silenced; None if it fails or is an
    alias of a module known under another name (``os.path`` is ``posixpath``)."""
    sink = io.StringIO()
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
        ):
            warnings.simplefilter("ignore")
            module = importlib.import_module(name)
    except (KeyboardInterrupt, GeneratorExit):
        raise
    except BaseException:  # ImportError, OSError, SystemExit, anything a module may raise
        return None
    if module.__name__ != name:
        return None
    return module


def _public_members(module: ModuleType) -> list[tuple[str, object]]:
    """Public classes and functions of ``module``, sorted by name."""
    # A package attribute named like one of its submodules (curses.has_key, unittest.main)
    # is the function before the submodule is imported and the module after: skip it, the
    # submodule is documented on its own.
    shadowed = _submodule_names(module)
    exported = getattr(module, "__all__", None)
    members: list[tuple[str, object]] = []
    if isinstance(exported, (list, tuple)):
        for name in sorted({n for n in exported if isinstance(n, str) and not n.startswith("_")}):
            if name in shadowed:
                continue
            obj = _original(module, name)
            if _is_documentable(obj) and _from_stdlib(obj):
                members.append((name, obj))
        return members
    # Without __all__: what the module defines, or re-exports from its private accelerator
    # (sqlite3.connect comes from _sqlite3; any module named like pkg._impl counts too).
    homes = {module.__name__, "_" + module.__name__}
    for name in sorted(vars(module)):
        if name.startswith("_") or name in shadowed:
            continue
        obj = _original(module, name)
        if not _is_documentable(obj):
            continue
        home = getattr(obj, "__module__", None)
        if home in homes or (isinstance(home, str) and home.startswith(module.__name__ + "._")):
            members.append((name, obj))
    return members


def _original(module: ModuleType, name: str) -> object:
    """``module.name``, or the original that ``module.__name__`` keeps when a hook was swapped
    (pytest replaces ``sys.unraisablehook`` and ``threading.excepthook``)."""
    try:
        original = getattr(module, f"__{name}__", None) if name in _HOOKS else None
        return original if original is not None else getattr(module, name, None)
    except Exception:
        return None


def _from_stdlib(obj: object) -> bool:
    """False for objects a third-party package patched into a stdlib module at run time."""
    home = getattr(obj, "__module__", None)
    if not isinstance(home, str):
        return True  # some C objects do not say; they come from the interpreter
    return home.split(".")[0] in sys.stdlib_module_names


def _is_documentable(obj: object) -> bool:
    return inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)


def _own_methods(cls: type) -> list[tuple[str, object]]:
    """The public methods defined in ``cls`` itself (not inherited), sorted by name."""
    methods: list[tuple[str, object]] = []
    for name, attr in sorted(vars(cls).items()):
        if name.startswith("_"):
            continue
        if isinstance(attr, (staticmethod, classmethod)):
            attr = attr.__func__
        if (
            inspect.isfunction(attr) or inspect.ismethoddescriptor(attr) or inspect.isbuiltin(attr)
        ) and not inspect.isclass(attr):
            methods.append((name, attr))
    return methods


def _own_doc(obj: object) -> str:
    """The object's own docstring (``inspect.getdoc`` would inherit a base class's)."""
    try:
        doc = obj.__doc__
    except Exception:
        return ""
    return doc if isinstance(doc, str) else ""


def _clean(doc: str) -> str:
    body = inspect.cleandoc(doc).replace("\x00", "").strip()
    if len(body) <= MAX_BODY_CHARS:
        return body
    cut = body[:MAX_BODY_CHARS]
    newline = cut.rfind("\n")
    if newline >= MAX_BODY_CHARS // 2:
        cut = cut[:newline]
    return cut.rstrip()


# --- helpers ---------------------------------------------------------------------------------


def _psycopg_url(url: str) -> str:
    """Accept SQLAlchemy's ``postgresql+psycopg://`` as well as ``postgresql://``."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.startswith(("postgresql+", "postgres+")):
        return "postgresql://" + rest
    return url
