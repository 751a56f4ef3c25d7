"""The engine meets the database only through storage's edge: a lane's block of statements,
the Batch API's lock and sync's poll see vectorfill's DatabaseError (with ``.transient`` and
``.sqlstate``), never psycopg's, and decide from it as they did before."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from vectorfill.engine import follow
from vectorfill.engine.fill import Tally
from vectorfill.engine.follow import Followed, _Following
from vectorfill.engine.submit import batch_lock
from vectorfill.errors import UNDEFINED_TABLE, DatabaseError, DatabaseRefused, DatabaseUnavailable, JobError
from vectorfill.storage.db import LaneConnection, connect


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- a lane's block


def test_a_lane_block_turns_a_dropped_table_into_a_job_error_and_keeps_its_connection(fresh_db):
    async def main() -> None:
        db = LaneConnection(fresh_db)
        try:
            with pytest.raises(JobError) as info:
                async with db.translating("claiming rows", job="docs") as conn:
                    await conn.execute("SELECT * FROM vectorfill_no_such_queue")
            assert "claiming rows failed" in str(info.value) and info.value.job == "docs"
            assert db.connected, "a refusal does not cost the lane its connection"
            assert await db.execute("SELECT 1") == (1,)
        finally:
            await db.aclose()

    asyncio.run(main())


def test_a_lane_block_that_loses_its_connection_is_transient_and_reconnects(fresh_db):
    async def main() -> None:
        db = LaneConnection(fresh_db)
        try:
            row = await db.execute("SELECT pg_backend_pid()")
            assert row is not None
            with connect(fresh_db, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (row[0],))
            with pytest.raises(DatabaseUnavailable) as info:
                async with db.translating("storing vectors", job="docs") as conn:
                    await conn.execute("SELECT 1")
            assert info.value.transient and "storing vectors failed" in str(info.value)
            assert not db.connected, "the lost connection is dropped"
            again = await db.execute("SELECT pg_backend_pid()")
            assert again is not None and again[0] != row[0]
        finally:
            await db.aclose()

    asyncio.run(main())


# --------------------------------------------------------------------------- the Batch API's lock


def test_the_batch_lock_is_held_by_one_session_at_a_time_and_released_after(fresh_db):
    async def main() -> None:
        async with batch_lock(fresh_db, 41) as first:
            assert first is True
            async with batch_lock(fresh_db, 41) as second:
                assert second is False, "another session holds it: do not wait"
            async with batch_lock(fresh_db, 42) as other_job:
                assert other_job is True
        async with batch_lock(fresh_db, 41) as after:
            assert after is True, "released when the block ended"

    asyncio.run(main())


def test_the_batch_lock_on_an_unreachable_database_is_a_transient_database_error():
    async def main() -> None:
        async with batch_lock(f"postgresql://vf:hunter2@127.0.0.1:{_closed_port()}/x", 1):
            pytest.fail("the lock cannot be taken")

    with pytest.raises(DatabaseUnavailable) as info:
        asyncio.run(main())
    assert info.value.transient and "taking the batch lock" in str(info.value)
    assert "hunter2" not in str(info.value)


# --------------------------------------------------------------------------- sync's poll


async def _no_switch(job: str) -> int | None:
    return None


def _following(monkeypatch: pytest.MonkeyPatch, fresh_db: str, answers: list) -> tuple[_Following, list[str]]:
    """A followed job whose polls answer ``answers`` in turn (an exception is raised) and
    whose reloads are recorded."""
    monkeypatch.setattr(follow, "database_url", lambda: fresh_db)
    monkeypatch.setattr(follow, "POLL_BACKOFF_S", (0.01, 0.02))
    monkeypatch.setattr(follow, "POLL_S", 0.01)
    following = _Following("docs", Tally(), Followed(), _no_switch)
    done: list[str] = []
    polls = iter(answers)

    async def poll() -> bool | str:
        answer = next(polls)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def reload() -> None:
        done.append("reload")

    monkeypatch.setattr(following, "_poll", poll)
    monkeypatch.setattr(following, "reload", reload)
    return following, done


def test_sync_reloads_the_job_when_a_versions_tables_were_dropped(monkeypatch, fresh_db):
    gone = DatabaseRefused("relation does not exist", sqlstate=UNDEFINED_TABLE)
    following, done = _following(monkeypatch, fresh_db, [gone])
    assert asyncio.run(following.wait(time.time() + 30)) is True
    assert done == ["reload"] and following.stats.reloads == 1


def test_sync_backs_off_through_an_outage_and_goes_on_polling(monkeypatch, fresh_db):
    lost = DatabaseUnavailable("cannot use the database", sqlstate="57P01")
    following, done = _following(monkeypatch, fresh_db, [lost, DatabaseError("no row"), False, True])
    assert asyncio.run(following.wait(time.time() + 30)) is True
    assert done == [], "an outage is waited out, the job is not reloaded"


def test_sync_stops_on_a_refusal_that_is_not_a_dropped_table(monkeypatch, fresh_db):
    refused = DatabaseRefused("permission denied for table queue", sqlstate="42501")
    following, done = _following(monkeypatch, fresh_db, [refused])
    with pytest.raises(DatabaseRefused):
        asyncio.run(following.wait(time.time() + 30))
    assert done == []
