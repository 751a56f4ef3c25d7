"""Connections and migrations: the one place that turns a URL into a Postgres session.

The database URL comes from ``--db`` or ``VECTORFILL_DATABASE_URL``
(:func:`given_database_url`); when neither is set, commands fall back to the embedded
Postgres (``vectorfill db start``), which :func:`vectorfill.database.resolve_database_url`
starts: storage does not know it. psycopg's errors leave these helpers as vectorfill's
(:mod:`vectorfill.storage.errors`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from pgvector.psycopg import register_vector, register_vector_async

from vectorfill.config import database_url_from_env
from vectorfill.errors import DUPLICATE_DATABASE, DatabaseError, DatabaseUnavailable, VectorfillError
from vectorfill.storage.errors import redact_url, translate, translate_error, translated
from vectorfill.storage.jobs import upgrade_triggers

__all__ = [
    "LaneConnection",
    "aconnect",
    "aone_row",
    "connect",
    "create_database",
    "current_revision",
    "given_database_url",
    "head_revision",
    "lane_error",
    "migrate",
    "one_row",
    "redact_url",
    "scalar",
    "translate_error",
]


def _migrations_dir() -> Path:
    import importlib

    migrations = importlib.import_module("vectorfill.migrations")  # the top-level migrations/ folder, mapped in
    return Path(str(migrations.__file__)).resolve().parent


def given_database_url(url: str | None = None) -> str | None:
    """``url``, else ``$VECTORFILL_DATABASE_URL``, normalised for psycopg; None when neither is
    set (:func:`vectorfill.database.resolve_database_url` then starts the embedded Postgres)."""
    url = url or database_url_from_env()
    return _normalise(url) if url else None


def _normalise(url: str) -> str:
    """psycopg wants ``postgresql://``; accept SQLAlchemy's ``postgresql+psycopg://`` too."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


def one_row(cursor: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    """The one row a statement returns (a count, a lookup by key). None would be a bug in
    the statement or a row deleted under it: an error that says so, not a TypeError."""
    row = cursor.fetchone()
    if row is None:
        raise DatabaseError("a statement that returns one row returned none", job=None)
    return tuple(row)


def scalar(cursor: psycopg.Cursor[Any]) -> Any:
    """The first column of :func:`one_row`."""
    return one_row(cursor)[0]


async def aone_row(cursor: psycopg.AsyncCursor[Any]) -> tuple[Any, ...]:
    """:func:`one_row` for an async cursor."""
    row = await cursor.fetchone()
    if row is None:
        raise DatabaseError("a statement that returns one row returned none", job=None)
    return tuple(row)


async def lane_error(db: LaneConnection, exc: psycopg.Error, doing: str, *, job: str | None = None) -> VectorfillError:
    """:func:`translate_error` for a lane's statements; after a lost connection the lane's
    connection is dropped first, so that a retry opens a new one (``raise await
    lane_error(...) from exc``)."""
    error = translate_error(exc, doing, job=job)
    if isinstance(error, DatabaseUnavailable):
        await db.discard()
    return error


@contextlib.contextmanager
def connect(url: str, *, autocommit: bool = False, vector_types: bool = True) -> Iterator[psycopg.Connection]:
    """A psycopg connection with pgvector's types registered (unless ``vector_types`` is
    False: DDL needs none, and the look-up costs a round trip). A psycopg error, connecting
    or raised out of the block, leaves it as vectorfill's (:mod:`vectorfill.storage.errors`)."""
    with translated(url=url):
        conn = psycopg.connect(url, autocommit=autocommit, connect_timeout=10)
        with conn:
            if vector_types:
                try:
                    register_vector(conn)
                except psycopg.ProgrammingError:
                    pass  # the vector extension is created by `vectorfill migrate`
            yield conn


@contextlib.asynccontextmanager
async def aconnect(url: str) -> AsyncIterator[psycopg.AsyncConnection]:
    """:func:`connect` for asyncio (not autocommit; pgvector's types registered)."""
    with translated(url=url):
        conn = await psycopg.AsyncConnection.connect(url, connect_timeout=10)
        async with conn:
            await register_vector_async(conn)
            yield conn


class LaneConnection:
    """One autocommit connection that a lane's tasks share for a whole run, reopened after
    a failure. Transactions are explicit (``async with conn.transaction()``), so the
    connection never idles inside one.

    :meth:`execute` runs one statement and translates its errors (dropping the connection
    after a :class:`~vectorfill.errors.DatabaseUnavailable`, so that a retry opens a new one);
    :meth:`translating` hands out the connection itself for a block (a transaction, a COPY)
    and translates the block's errors as :func:`lane_error` does; :meth:`get` hands it out
    bare, for callers that translate their errors themselves.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.AsyncConnection | None = None

    async def get(self, doing: str = "connecting") -> psycopg.AsyncConnection:
        """The connection, opened first if need be (failing, as ``doing`` failed)."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            with translated(doing, url=self.url):
                conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True, connect_timeout=10)
                await register_vector_async(conn)
            self._conn = conn
        return self._conn

    @property
    def connected(self) -> bool:
        """The connection is open and usable (False before the first :meth:`get`, and after
        a failure dropped it)."""
        conn = self._conn
        return conn is not None and not conn.closed and not conn.broken

    @contextlib.asynccontextmanager
    async def translating(self, doing: str, *, job: str | None = None) -> AsyncIterator[psycopg.AsyncConnection]:
        """The lane's connection for a block of statements; a psycopg error out of the block
        leaves as :func:`lane_error`'s (the connection dropped after a lost one)::

            async with db.translating("storing vectors", job="docs") as conn:
                async with conn.transaction():
                    ...
        """
        conn = await self.get(doing)
        try:
            yield conn
        except psycopg.Error as exc:
            raise await lane_error(self, exc, doing, job=job) from None

    async def execute(
        self, statement: Any, params: Any = None, *, doing: str | None = None, job: str | None = None
    ) -> tuple[Any, ...] | None:
        """Run one statement on the lane's connection; its first row (None: it returns none)."""
        try:
            conn = await self.get(doing or "connecting")
            cur = await conn.execute(statement, params)
            row = await cur.fetchone() if cur.description is not None else None
        except psycopg.Error as exc:
            error = translate(exc, doing, job=job, url=self.url)
            if isinstance(error, DatabaseUnavailable):
                await self.discard()
            raise error from exc
        return tuple(row) if row is not None else None

    async def discard(self) -> None:
        """Drop the connection (after an error); the next :meth:`get` opens a new one."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except psycopg.Error:
                pass

    async def aclose(self) -> None:
        await self.discard()


def create_database(url: str, name: str) -> bool:
    """Create the database ``name`` in ``url``'s cluster unless it exists; True when this call
    created it. Another process creating it meanwhile is not an error. Raises the
    :class:`~vectorfill.errors.DatabaseError` of the refusal otherwise (``sqlstate`` tells
    which: a role without CREATEDB is ``INSUFFICIENT_PRIVILEGE``)."""
    from psycopg import sql as pgsql

    try:
        with connect(url, autocommit=True, vector_types=False) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None:
                return False
            conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
            return True
    except DatabaseError as exc:
        if exc.sqlstate == DUPLICATE_DATABASE:
            return False  # created by another process meanwhile
        raise


def _alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", "postgresql+psycopg://" + url.split("://", 1)[1])
    return cfg


def head_revision() -> str:
    """The newest revision of vectorfill's schema, as this release ships it."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config("postgresql://unused")).get_current_head()
    assert head is not None
    return head


def _alembic_run(url: str, fn, revision: str) -> None:
    from sqlalchemy import create_engine, pool

    engine = create_engine("postgresql+psycopg://" + url.split("://", 1)[1], poolclass=pool.NullPool)
    cfg = _alembic_config(url)
    try:
        with engine.connect() as conn:
            cfg.attributes["connection"] = conn
            fn(cfg, revision)
            conn.commit()
    except Exception as exc:  # sqlalchemy wraps psycopg errors
        orig = getattr(exc, "orig", None)
        if isinstance(orig, psycopg.Error):
            raise translate(orig, "migrating", url=url) from exc
        raise
    finally:
        engine.dispose()


def migrate(
    url: str, revision: str = "head", *, downgrade: bool = False, report: Callable[[str], None] | None = None
) -> str | None:
    """Upgrade (or downgrade) vectorfill's schema; returns the revision now in place.

    An upgrade also re-installs the triggers of jobs created by an older release
    (:func:`vectorfill.storage.jobs.upgrade_triggers`), telling ``report`` which."""
    from alembic import command

    if downgrade:
        _alembic_run(url, command.downgrade, revision)
        if revision == "base":
            with connect(url, autocommit=True) as conn:
                conn.execute("DROP TABLE IF EXISTS vectorfill.alembic_version")
                left = scalar(
                    conn.execute(
                        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = 'vectorfill'"
                    )
                )
                if not left:
                    conn.execute("DROP SCHEMA IF EXISTS vectorfill")
    else:
        _alembic_run(url, command.upgrade, revision)
        with connect(url) as conn:
            for job in upgrade_triggers(conn):
                if report:
                    report(f"job {job}: triggers upgraded to statement-level triggers")
    return current_revision(url)


def current_revision(url: str) -> str | None:
    with connect(url, autocommit=True) as conn:
        exists = scalar(conn.execute("SELECT to_regclass('vectorfill.alembic_version')"))
        if not exists:
            return None
        row = conn.execute("SELECT version_num FROM vectorfill.alembic_version").fetchone()
        return row[0] if row else None
