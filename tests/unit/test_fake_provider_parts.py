"""The fake provider's parts without a socket: every corruption mode is covered, its rate
limiter refills continuously, durations are formatted like OpenAI's."""

from __future__ import annotations

import pytest

from fake_clock import FakeClock
from fake_provider import CORRUPT_MODES, FakeProvider, RateLimiter, format_duration

# ---------------------------------------------------------------- scripted faults


def test_every_corruption_mode_is_covered():
    assert set(CORRUPT_MODES) == {"shuffle", "short", "wrong_dims", "nan", "no_index", "floats_when_base64"}
    with pytest.raises(ValueError, match="unknown corruption mode"):
        FakeProvider(8).corrupt_next(1, "garbage")


# ---------------------------------------------------------------- rate limits


def test_rate_limiter_refills_continuously():
    clock = FakeClock()
    limiter = RateLimiter(rpm=60, tpm=600, model="m", clock=clock)
    for _ in range(60):
        assert limiter.admit(1).refused is None
    assert limiter.admit(1).refused == "requests"
    clock.advance(1)  # one request per second comes back
    assert limiter.admit(1).refused is None
    assert limiter.admit(1).refused == "requests"
    clock.advance(60)
    verdict = limiter.admit(600)
    assert verdict.refused is None and verdict.headers["x-ratelimit-remaining-tokens"] == "0"
    verdict = limiter.admit(10)
    assert verdict.refused == "tokens" and verdict.retry_after == pytest.approx(1.0)


@pytest.mark.parametrize(
    "seconds, text",
    [(360, "6m0s"), (1, "1s"), (0.02, "20ms"), (1.5, "1.5s"), (0, "0s"), (3725.25, "1h2m5.25s"), (59.9999, "1m0s")],
)
def test_durations_are_formatted_like_openai(seconds, text):
    assert format_duration(seconds) == text


# ---------------------------------------------------------------- as a process
