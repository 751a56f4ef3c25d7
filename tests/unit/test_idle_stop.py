"""The local Prefect server's idle stop decides from when a command last used it."""

from __future__ import annotations

import pytest

from vectorfill.orchestration.prefect_server import DEFAULT_IDLE_HOURS, IDLE_HOURS_ENV, idle_hours, should_stop


def test_it_stops_once_unused_for_the_idle_time():
    assert should_stop(last_used=0.0, now=3600.0, idle_s=3600.0, serving=False)
    assert not should_stop(last_used=0.0, now=3599.0, idle_s=3600.0, serving=False)


def test_it_never_stops_under_serve_or_when_turned_off():
    assert not should_stop(last_used=0.0, now=1e9, idle_s=3600.0, serving=True)
    assert not should_stop(last_used=0.0, now=1e9, idle_s=0.0, serving=False)


@pytest.mark.parametrize(
    ("value", "hours"), [(None, DEFAULT_IDLE_HOURS), ("0", 0.0), ("1.5", 1.5), ("x", DEFAULT_IDLE_HOURS)]
)
def test_the_idle_hours_come_from_the_environment(monkeypatch, value, hours):
    if value is None:
        monkeypatch.delenv(IDLE_HOURS_ENV, raising=False)
    else:
        monkeypatch.setenv(IDLE_HOURS_ENV, value)
    assert idle_hours() == hours
