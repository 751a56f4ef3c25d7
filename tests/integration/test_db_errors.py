"""psycopg's errors leave storage as vectorfill's, through one map: DatabaseUnavailable when a
retry on a new connection can help, DatabaseRefused when Postgres refused the statement;
Postgres's SQLSTATE stays on the error. Each case is produced for real where it can be."""

from __future__ import annotations

import asyncio
import socket

import psycopg
import pytest

from vectorfill.errors import (
    INSUFFICIENT_PRIVILEGE,
    UNDEFINED_TABLE,
    DatabaseError,
    DatabaseRefused,
    DatabaseUnavailable,
    first_line,
    is_transient,
)
from vectorfill.storage.db import LaneConnection, aconnect, connect
from vectorfill.storage.errors import translated


def _refused(url: str, *statements: str) -> DatabaseError:
    """Run ``statements`` in one autocommit session; the error the last one raised."""
    *before, last = statements
    with connect(url, autocommit=True) as conn:
        for statement in before:
            conn.execute(statement)  # type: ignore[arg-type]
        with pytest.raises(DatabaseError) as info, translated():
            conn.execute(last)  # type: ignore[arg-type]
    return info.value


@pytest.mark.parametrize(
    ("statements", "sqlstate"),
    [
        (["SELECT * FROM vectorfill_no_such_table"], UNDEFINED_TABLE),
        (["SELEC 1"], "42601"),  # syntax
        (["SELECT 1/0"], "22012"),  # division by zero
        (["CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t VALUES (1), (1)"], "23505"),  # unique
        (
            ["CREATE TABLE secret (id int)", "SET ROLE pg_monitor", "TABLE secret"],  # a built-in role, no grant
            INSUFFICIENT_PRIVILEGE,
        ),
    ],
    ids=["undefined-table", "syntax", "division-by-zero", "unique-violation", "permission-denied"],
)
def test_a_statement_postgres_refuses_is_a_terminal_refusal_with_its_sqlstate(fresh_db, statements, sqlstate):
    error = _refused(fresh_db, *statements)
    assert type(error) is DatabaseRefused
    assert error.sqlstate == sqlstate and not error.transient and not is_transient(error)
    assert isinstance(error.__cause__, psycopg.Error) and error.__cause__.sqlstate == sqlstate
    assert first_line(error.__cause__) in str(error)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_closed_port_is_a_transient_unavailable_error_without_the_password():
    url = f"postgresql://vf:hunter2@127.0.0.1:{_closed_port()}/x"
    with pytest.raises(DatabaseUnavailable) as info, connect(url):
        pass
    assert info.value.transient and info.value.sqlstate is None
    assert "hunter2" not in str(info.value) and "vf:***@127.0.0.1" in str(info.value)
    assert isinstance(info.value.__cause__, psycopg.OperationalError)


def test_a_lock_timeout_and_a_serialization_failure_are_transient(fresh_db):
    with connect(fresh_db, autocommit=True) as setup:
        setup.execute("CREATE TABLE t (id int PRIMARY KEY, n int)")
        setup.execute("INSERT INTO t VALUES (1, 0)")
    # a lock timeout (55P03): another transaction holds the table
    with connect(fresh_db) as holder:
        holder.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        error = _refused(fresh_db, "SET lock_timeout = '50ms'", "SELECT * FROM t")
        assert type(error) is DatabaseUnavailable and error.sqlstate == "55P03" and error.transient
    # a serialization failure (40001): a repeatable-read transaction updates a row changed after its snapshot
    with connect(fresh_db) as first, connect(fresh_db, autocommit=True) as second:
        first.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        first.execute("SELECT n FROM t WHERE id = 1")
        second.execute("UPDATE t SET n = 1 WHERE id = 1")
        with pytest.raises(DatabaseUnavailable) as info, translated("updating"):
            first.execute("UPDATE t SET n = 2 WHERE id = 1")
        first.rollback()
    assert info.value.sqlstate == "40001" and info.value.transient
    assert str(info.value).startswith("updating failed: ")


def test_a_connection_killed_by_the_server_is_transient_and_a_lane_reconnects(fresh_db):
    async def main() -> None:
        lane = LaneConnection(fresh_db)
        pid = (await lane.execute("SELECT pg_backend_pid()"))[0]  # type: ignore[index]
        with connect(fresh_db, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(DatabaseUnavailable) as info:
            await lane.execute("SELECT 1", doing="polling")
        assert info.value.transient and "polling failed" in str(info.value)
        assert info.value.sqlstate in (None, "57P01")  # the client may or may not have read the server's notice
        row = await lane.execute("SELECT pg_backend_pid()")  # a new connection, opened by the lane
        assert row is not None and row[0] != pid
        with pytest.raises(DatabaseRefused):
            await lane.execute("SELECT * FROM vectorfill_no_such_table")
        await lane.aclose()

    asyncio.run(main())


def test_errors_raised_in_a_connect_block_leave_it_translated(fresh_db):
    async def main() -> None:
        with pytest.raises(DatabaseRefused) as info:
            async with aconnect(fresh_db) as conn:
                await conn.execute("SELECT * FROM vectorfill_no_such_table")
        assert info.value.sqlstate == UNDEFINED_TABLE

    asyncio.run(main())


def test_translated_decorates_sync_and_async_functions(fresh_db):
    @translated("counting")
    def count() -> None:
        with psycopg.connect(fresh_db) as conn:
            conn.execute("SELECT count(*) FROM vectorfill_no_such_table")

    @translated("counting later")
    async def acount() -> None:
        async with await psycopg.AsyncConnection.connect(fresh_db) as conn:
            await conn.execute("SELECT count(*) FROM vectorfill_no_such_table")

    with pytest.raises(DatabaseRefused, match=r"^counting failed: Postgres refused it: "):
        count()
    with pytest.raises(DatabaseRefused, match=r"^counting later failed: "):
        asyncio.run(acount())
    assert count.__name__ == "count" and acount.__name__ == "acount"
