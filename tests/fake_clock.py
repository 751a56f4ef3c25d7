"""Fake clocks: :class:`FakeTime` for the rate limiter and the shared budget (time moves only
when someone sleeps), :class:`FakeClock` for the fake provider's rate limiter (time moves when
the test says)."""

from __future__ import annotations

import asyncio
import threading


class FakeTime:
    """A clock that moves only when someone sleeps on it."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        until = self.now + seconds
        await asyncio.sleep(0)
        self.now = max(self.now, until)


class FakeClock:
    """A thread-safe clock that moves only when the test advances it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds
