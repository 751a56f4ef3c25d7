"""The spend cap's day: the UTC date of the run's clock, reset at the next midnight UTC."""

from __future__ import annotations

from datetime import UTC, date, datetime

from fake_clock import FakeClock
from vectorfill.engine.spend import day_of, resets_at


def test_the_day_is_the_utc_date_and_it_resets_at_the_next_midnight_utc():
    clock = FakeClock()
    clock.now = datetime(2026, 12, 7, 23, 59, 30, tzinfo=UTC).timestamp()
    assert day_of(clock()) == date(2026, 12, 7)
    assert resets_at(clock()) == datetime(2026, 12, 8, tzinfo=UTC)
    clock.advance(31)  # past midnight UTC: a new day, with its own cap
    assert day_of(clock()) == date(2026, 12, 8)
    assert resets_at(clock()) == datetime(2026, 12, 9, tzinfo=UTC)
