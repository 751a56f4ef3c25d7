"""Connections and migrations: the one place that turns a URL into a Postgres session.

The database URL comes from ``--db`` or ``VECTORFILL_DATABASE_URL``; when neither is set,
commands fall back to the embedded Postgres (``vectorfill db start``) and say so.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from pgvector.psycopg import register_vector, register_vector_async

from vectorfill.config import DATABASE_URL_ENV, database_url_from_env
from vectorfill.errors import ConfigError, DatabaseError, JobError, VectorfillError

__all__ = [
    "LaneConnection",
    "aconnect",
    "connect",
    "current_revision",
    "migrate",
    "redact_url",
    "resolve_database_url",
]


def _migrations_dir() -> Path:
    import importlib

    migrations = importlib.import_module("vectorfill.migrations")  # the top-level migrations/ folder, mapped in
    return Path(str(migrations.__file__)).resolve().parent


def resolve_database_url(url: str | None = None, *, announce=None, start_embedded: bool = True) -> str:
    """``url``, else ``$VECTORFILL_DATABASE_URL``, else the embedded Postgres (started if needed)."""
    url = url or database_url_from_env()
    if url:
        return _normalise(url)
    if not start_embedded:
        raise ConfigError(f"no database given: pass --db or set {DATABASE_URL_ENV}")
    from vectorfill.local import pgembedded

    found = pgembedded.start()
    if announce:
        announce(
            f"No --db or {DATABASE_URL_ENV} given: using the embedded Postgres in "
            f"{pgembedded.status().data_dir} (`vectorfill db stop` stops it)."
        )
    return _normalise(found)


def _normalise(url: str) -> str:
    """psycopg wants ``postgresql://``; accept SQLAlchemy's ``postgresql+psycopg://`` too."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


def redact_url(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", url)


#: Errors that mean the job's own tables (or the source's columns) are gone or changed under
#: a run: a job dropped mid-run, a column removed. Retrying cannot help.
_SCHEMA_GONE = (
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedColumn,
    psycopg.errors.UndefinedFunction,
    psycopg.errors.InvalidSchemaName,
)


def translate_error(
    exc: psycopg.Error, doing: str, *, job: str | None = None, url: str | None = None
) -> VectorfillError:
    """The one map from psycopg's errors to vectorfill's (as httpx maps httpcore's):

    - the server unreachable, the connection lost (OperationalError, InterfaceError):
      :class:`DatabaseError`, transient (a retry on a new connection can work);
    - the job's tables or the source's columns gone (a job dropped mid-run): :class:`JobError`,
      terminal;
    - anything else Postgres refused: :class:`DatabaseError`, terminal.

    ``doing`` says what failed ("claiming rows"); the message keeps Postgres's first line,
    never the password of ``url``.
    """
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, _SCHEMA_GONE):
        return JobError(
            f"{doing} failed: {first}. The job's tables or the source's columns changed under the run "
            "(was the job dropped, or a column removed?): see `vectorfill job list` and the source table",
            job=job,
        )
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        where = f" at {redact_url(url)}" if url else ""
        return DatabaseError(
            f"{doing} failed: cannot use the database{where}: {first}. "
            f"Check --db / {DATABASE_URL_ENV} and that Postgres is running",
            job=job,
        )
    error = DatabaseError(f"{doing} failed: Postgres refused it: {first}", job=job)
    error.transient = False
    return error


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


def _translate(exc: psycopg.Error, url: str) -> VectorfillError:
    return translate_error(exc, "connecting", url=url)


async def lane_error(db: LaneConnection, exc: psycopg.Error, doing: str, *, job: str | None = None) -> VectorfillError:
    """:func:`translate_error` for a lane's statements; after a lost connection the lane's
    connection is dropped first, so that a retry opens a new one (``raise await
    lane_error(...) from None``)."""
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        await db.discard()
    return translate_error(exc, doing, job=job)


@contextlib.contextmanager
def connect(url: str, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
    """A psycopg connection with pgvector's types registered."""
    try:
        conn = psycopg.connect(url, autocommit=autocommit, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise _translate(exc, url) from None
    with conn:
        try:
            register_vector(conn)
        except psycopg.ProgrammingError:
            pass  # the vector extension is created by `vectorfill migrate`
        yield conn


@contextlib.asynccontextmanager
async def aconnect(url: str) -> AsyncIterator[psycopg.AsyncConnection]:
    try:
        conn = await psycopg.AsyncConnection.connect(url, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise _translate(exc, url) from None
    async with conn:
        await register_vector_async(conn)
        yield conn


class LaneConnection:
    """One autocommit connection that a lane's tasks share for a whole run, reopened after
    a failure. Transactions are explicit (``async with conn.transaction()``), so the
    connection never idles inside one.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.AsyncConnection | None = None

    async def get(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True, connect_timeout=10)
            except psycopg.OperationalError as exc:
                raise _translate(exc, self.url) from None
            await register_vector_async(conn)
            self._conn = conn
        return self._conn

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
        if isinstance(orig, psycopg.OperationalError):
            raise _translate(orig, url) from None
        raise
    finally:
        engine.dispose()


def migrate(
    url: str, revision: str = "head", *, downgrade: bool = False, report: Callable[[str], None] | None = None
) -> str | None:
    """Upgrade (or downgrade) vectorfill's schema; returns the revision now in place.

    An upgrade also re-installs the triggers of jobs created by an older release
    (:func:`vectorfill.jobs.registry.upgrade_triggers`), telling ``report`` which."""
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
        from vectorfill.jobs.registry import upgrade_triggers

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
