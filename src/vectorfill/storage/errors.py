"""The one edge between psycopg's errors and vectorfill's (as httpx maps httpcore's).

:func:`translate` maps any :class:`psycopg.Error` to
:class:`~vectorfill.errors.DatabaseUnavailable` (transient) or
:class:`~vectorfill.errors.DatabaseRefused` (terminal), keeping Postgres's SQLSTATE as
``.sqlstate`` and the original as ``__cause__``:

- with a SQLSTATE, :func:`vectorfill.errors.sqlstate_is_transient` decides (classes 08
  connection, 40 serialization/deadlock, 53 resources, 57 shutdown/cancel, and 55P03 lock
  timeout are transient; everything else, 42 permissions/undefined/syntax, 23 constraints,
  22 data, is a refusal);
- without one (the client failed before or without an answer: cannot connect, the
  connection closed), :class:`psycopg.OperationalError` and :class:`psycopg.InterfaceError`
  are transient, anything else a refusal.

:class:`translated` applies it to a block or a function, sync or async::

    with translated("claiming rows", job="docs"):
        conn.execute(...)

    @translated("leasing the budget")
    async def lease(...): ...

Storage's connection helpers (:mod:`vectorfill.storage.db`) use it, so that their callers see
only vectorfill's errors. Code above ``storage`` never catches psycopg's.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, TypeVar

import psycopg

from vectorfill.config import DATABASE_URL_ENV
from vectorfill.errors import (
    SCHEMA_GONE,
    DatabaseError,
    DatabaseRefused,
    DatabaseUnavailable,
    JobError,
    VectorfillError,
    first_line,
    sqlstate_is_transient,
)

__all__ = ["redact_url", "translate", "translate_error", "translated"]

F = TypeVar("F", bound=Callable[..., Any])


def redact_url(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", url)


def _is_transient(exc: psycopg.Error) -> bool:
    by_state = sqlstate_is_transient(exc.sqlstate)
    if by_state is not None:
        return by_state
    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))


def translate(
    exc: psycopg.Error, doing: str | None = None, *, job: str | None = None, url: str | None = None
) -> DatabaseError:
    """``exc`` as a :class:`DatabaseUnavailable` or :class:`DatabaseRefused` (see the module
    docstring), with ``.sqlstate``. ``doing`` says what failed ("claiming rows"); the message
    keeps Postgres's first line, never the password of ``url``."""
    first = first_line(exc)
    failed = f"{doing} failed: " if doing else ""
    if _is_transient(exc):
        where = f" at {redact_url(url)}" if url else ""
        return DatabaseUnavailable(
            f"{failed}cannot use the database{where}: {first}. "
            f"Check --db / {DATABASE_URL_ENV} and that Postgres is running",
            job=job,
            sqlstate=exc.sqlstate,
        )
    return DatabaseRefused(f"{failed}Postgres refused it: {first}", job=job, sqlstate=exc.sqlstate)


def translate_error(
    exc: psycopg.Error, doing: str, *, job: str | None = None, url: str | None = None
) -> VectorfillError:
    """:func:`translate` for a run's statements on a job's tables: the job's tables or the
    source's columns gone (:data:`~vectorfill.errors.SCHEMA_GONE`, a job dropped mid-run)
    become a terminal :class:`~vectorfill.errors.JobError` that says so."""
    if exc.sqlstate in SCHEMA_GONE:
        return JobError(
            f"{doing} failed: {first_line(exc)}. The job's tables or the source's columns changed under the run "
            "(was the job dropped, or a column removed?): see `vectorfill job list` and the source table",
            job=job,
        )
    return translate(exc, doing, job=job, url=url)


class translated:
    """Re-raise any psycopg error in a block (``with``/``async with``) or a function (as a
    decorator, sync or async) as :func:`translate`'s, ``from`` the original."""

    def __init__(self, doing: str | None = None, *, job: str | None = None, url: str | None = None) -> None:
        self.doing = doing
        self.job = job
        self.url = url

    def __enter__(self) -> translated:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        if isinstance(exc, psycopg.Error):
            raise translate(exc, self.doing, job=self.job, url=self.url) from exc
        return False

    async def __aenter__(self) -> translated:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        return self.__exit__(kind, exc, tb)

    def __call__(self, fn: F) -> F:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with self:
                    return await fn(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]
