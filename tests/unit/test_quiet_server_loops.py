"""The local Prefect server's slower loops keep what their callers rely on: a pub/sub read
returns a queued message at once, waits for one, or gives None after its wait; uvicorn's
main loop refreshes its headers at every tick and ends when told to exit."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest

from vectorfill.orchestration import prefect_server
from vectorfill.orchestration.prefect_server import pubsub_queue_get, web_server_main_loop


@pytest.fixture
def fast_poll(monkeypatch):
    monkeypatch.setattr(prefect_server, "DOCKET_POLL", timedelta(milliseconds=20))
    monkeypatch.setattr(prefect_server, "WEB_SERVER_TICK_S", 0.01)


def _pubsub(*messages: object) -> SimpleNamespace:
    q: queue.Queue[object] = queue.Queue()
    for m in messages:
        q.put_nowait(m)
    return SimpleNamespace(_queue=q)


def test_a_queued_message_is_returned_at_once_whatever_the_timeout(fast_poll):
    for timeout in (0.0, 0.1, None):
        assert asyncio.run(pubsub_queue_get(_pubsub("m"), timeout)) == "m"


def test_an_empty_read_gives_none_after_at_least_its_timeout(fast_poll):
    ps = _pubsub()
    assert asyncio.run(pubsub_queue_get(ps, 0.0)) is None
    started = time.monotonic()
    assert asyncio.run(pubsub_queue_get(ps, 0.001)) is None
    assert time.monotonic() - started >= 0.02  # one poll, however short the timeout


def test_a_blocking_read_gets_a_message_put_later_from_another_thread(fast_poll):
    ps = _pubsub()
    threading.Timer(0.05, ps._queue.put_nowait, args=("late",)).start()
    assert asyncio.run(asyncio.wait_for(pubsub_queue_get(ps, None), timeout=5)) == "late"


def test_uvicorns_loop_refreshes_every_tick_and_ends_on_exit(fast_poll):
    counters: list[int] = []

    async def on_tick(counter: int) -> bool:
        counters.append(counter)
        return len(counters) == 4

    asyncio.run(asyncio.wait_for(web_server_main_loop(SimpleNamespace(on_tick=on_tick)), timeout=5))
    assert counters == [0, 10, 20, 30]  # counter % 10 == 0: the once-a-second work runs at each tick
