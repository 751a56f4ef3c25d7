"""The database error map without a database: what the SQLSTATE says a retry can help, the
error kinds' tree, the first line of a message, a URL resolved without starting anything."""

from __future__ import annotations

import psycopg
import pytest

from vectorfill.errors import (
    BudgetUnavailable,
    ConfigError,
    DatabaseError,
    DatabaseRefused,
    DatabaseUnavailable,
    first_line,
    sqlstate_is_transient,
)
from vectorfill.storage.errors import translate


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (psycopg.errors.AdminShutdown, True),  # 57P01
        (psycopg.errors.CannotConnectNow, True),  # 57P03
        (psycopg.errors.DeadlockDetected, True),  # 40P01
        (psycopg.errors.TooManyConnections, True),  # 53300
        (psycopg.errors.ConnectionFailure, True),  # 08006
        (psycopg.errors.LockNotAvailable, True),  # 55P03
        (psycopg.errors.DatabaseDropped, False),  # 57P04
        (psycopg.errors.ObjectInUse, False),  # 55006: class 55 is not transient but for the lock timeout
        (psycopg.errors.InternalError_, False),  # XX000
        (psycopg.errors.NotNullViolation, False),  # 23502
        (psycopg.errors.UndefinedColumn, False),  # 42703
    ],
)
def test_the_sqlstate_decides_what_a_retry_can_help(error, transient):
    """The cases that cannot be produced on a test server on demand, by their class: the map
    reads only the SQLSTATE the server sent, which psycopg's class carries."""
    translated_error = translate(error("boom"))
    assert translated_error.sqlstate == error.sqlstate
    assert translated_error.transient is transient
    assert isinstance(translated_error, DatabaseUnavailable if transient else DatabaseRefused)
    assert sqlstate_is_transient(error.sqlstate) is transient


def test_without_a_sqlstate_only_connection_failures_are_transient():
    assert sqlstate_is_transient(None) is None
    assert isinstance(translate(psycopg.OperationalError("connection refused")), DatabaseUnavailable)
    assert isinstance(translate(psycopg.InterfaceError("the connection is closed")), DatabaseUnavailable)
    assert isinstance(
        translate(psycopg.ProgrammingError("the query has 2 placeholders but 1 parameter")), DatabaseRefused
    )


def test_the_error_kinds_sit_in_one_tree():
    assert issubclass(DatabaseUnavailable, DatabaseError) and DatabaseUnavailable.transient
    assert issubclass(DatabaseRefused, DatabaseError) and not DatabaseRefused.transient
    assert issubclass(BudgetUnavailable, DatabaseUnavailable)
    assert DatabaseError("x").transient  # a plain one, as before


def test_first_line_is_the_message_s_first_line_or_the_type():
    assert first_line(ValueError("  one\nDETAIL: two\n")) == "one"
    assert first_line(ValueError()) == "ValueError"


def test_a_database_url_is_resolved_without_starting_anything(monkeypatch):
    from vectorfill.database import resolve_database_url

    monkeypatch.delenv("VECTORFILL_DATABASE_URL", raising=False)
    assert resolve_database_url("postgresql+psycopg://u@h/db") == "postgresql://u@h/db"
    monkeypatch.setenv("VECTORFILL_DATABASE_URL", "postgres://u@h/env")
    assert resolve_database_url(None) == "postgresql://u@h/env"
    monkeypatch.delenv("VECTORFILL_DATABASE_URL")
    with pytest.raises(ConfigError, match="no database given"):
        resolve_database_url(None, start_embedded=False)
