"""A daily spend cap (max_usd_per_day): checked before each request, the run stops cleanly
when the next request would pass it, and goes on after midnight UTC (a fake clock)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from psycopg import sql

from fake_clock import FakeClock
from vectorfill.errors import SpendCapReached
from vectorfill.provider.tokens import counter_for


def _queued(env) -> int:
    with env.connect() as conn:
        conn.execute("SELECT vectorfill._absorb_1()")
        return conn.execute(sql.SQL("SELECT count(*) FROM vectorfill._q_1_1")).fetchone()[0]


def _leased(env) -> int:
    with env.connect() as conn:
        return conn.execute("SELECT count(*) FROM vectorfill._q_1_1 WHERE claimed_by IS NOT NULL").fetchone()[0]


def _spent(env) -> dict:
    with env.connect() as conn:
        return {(s, d.isoformat()): u for s, d, u in conn.execute("SELECT scope, day, usd FROM vectorfill.spend")}


def test_a_cap_stops_the_run_before_the_request_that_would_pass_it_and_resets_at_midnight(env, monkeypatch):
    clock = FakeClock()
    clock.now = datetime(2026, 12, 7, 23, 58, tzinfo=UTC).timestamp()
    monkeypatch.setattr("vectorfill.engine.spend.wall_clock", clock)
    env.make_table(100)
    # $1,000 per million tokens: a request of 10 rows (~150 tokens) costs ~$0.15
    env.create_job(
        settings_kw={
            "retries": 1,
            "max_inputs": 10,
            "concurrency": 1,
            "prices": {"fake-embed": 1000.0},
            "max_usd_per_day": 0.5,
        }
    )
    with pytest.raises(SpendCapReached) as stopped:
        env.backfill()
    err = stopped.value
    assert "max_usd_per_day=0.5" in str(err) and "2026-12-08 00:00 UTC" in str(err) and "'docs'" in str(err)
    assert err.resets_at == datetime(2026, 12, 8, tzinfo=UTC)
    sent = env.provider.requests
    assert 1 <= sent < 10  # stopped mid-way
    billed = env.provider.tokens_billed * 1000.0 / 1e6
    (spent,) = _spent(env).values()
    assert spent == pytest.approx(billed) and spent <= 0.5  # what was billed, never over the cap
    assert len(env.vectors()) == sent * 10  # each request sent was stored
    assert _queued(env) == 100 - sent * 10 and _leased(env) == 0  # the rest queued, claims given back

    with pytest.raises(SpendCapReached):  # the same day: nothing more is sent
        env.backfill()
    assert env.provider.requests == sent

    clock.advance(180)  # past midnight UTC: a new day's cap
    with pytest.raises(SpendCapReached):
        env.backfill()
    again = env.provider.requests - sent
    assert 1 <= again < 10 and len(env.vectors()) == (sent + again) * 10
    spent_by_day = {d: u for (_s, d), u in _spent(env).items()}
    assert set(spent_by_day) == {"2026-12-07", "2026-12-08"} and max(spent_by_day.values()) <= 0.5


def test_a_cap_raised_with_job_set_lets_the_same_day_go_on(env, monkeypatch):
    from typer.testing import CliRunner

    from vectorfill.cli.app import app

    monkeypatch.setenv("VECTORFILL_DATABASE_URL", env.url)
    env.make_table(40)
    env.create_job(
        settings_kw={"retries": 1, "max_inputs": 10, "concurrency": 1, "prices": {"fake-embed": 1000.0}}
        | {"max_usd_per_day": 0.2}
    )
    with pytest.raises(SpendCapReached) as stopped:
        env.backfill()
    assert "`vectorfill job set docs --max-usd-per-day USD`" in str(stopped.value)
    assert stopped.value.setting == "max_usd_per_day"
    sent = env.provider.requests

    refused = CliRunner().invoke(app, ["job", "set", "docs", "--max-usd-per-day", "-1"])
    assert refused.exit_code == 1 and "max_usd_per_day" in str(refused.exception)
    raised = CliRunner().invoke(app, ["job", "set", "docs", "--max-usd-per-day", "100", "--rpm", "6000"])
    assert raised.exit_code == 0, raised.output
    assert "max_usd_per_day=100.0" in raised.output and "rpm=6000" in raised.output

    summary = env.backfill()  # the same day, under the raised cap: the rest goes out
    assert summary.embedded == 40 - sent * 10 and len(env.vectors()) == 40 and _queued(env) == 0

    removed = CliRunner().invoke(app, ["job", "set", "docs", "--max-usd-per-day", "0", "--rpm", "0"])
    assert removed.exit_code == 0 and "max_usd_per_day=none" in removed.output and "rpm=none" in removed.output
    with env.connect() as conn:
        (settings,) = conn.execute("SELECT settings FROM vectorfill.jobs WHERE name = 'docs'").fetchone()
    assert settings["max_usd_per_day"] is None and settings["rpm"] is None and settings["concurrency"] == 1


def test_job_set_refuses_what_changes_a_vectors_meaning(env):
    from vectorfill.errors import ConfigError
    from vectorfill.jobs.registry import set_job_settings

    env.make_table(1)
    env.create_job()
    with env.connect() as conn, pytest.raises(ConfigError, match="cannot change on_too_long"):
        set_job_settings(conn, "docs", {"on_too_long": "fail"})


def test_a_cap_the_whole_backfill_fits_in_changes_nothing(env, monkeypatch):
    env.make_table(30)
    env.create_job(settings_kw={"retries": 1, "max_inputs": 10, "max_usd_per_day": 100.0})
    summary = env.backfill()
    assert summary.embedded == 30
    (spent,) = _spent(env).values()
    assert spent == pytest.approx(summary.cost_usd)


def test_a_sync_run_waits_for_the_reset_instead_of_failing(env, monkeypatch):
    import asyncio

    from vectorfill.flows.sync import sync

    clock = FakeClock()
    clock.now = datetime(2026, 12, 7, 23, 0, tzinfo=UTC).timestamp()  # an hour before the reset
    monkeypatch.setattr("vectorfill.engine.spend.wall_clock", clock)
    env.make_table(100)
    env.create_job(
        settings_kw={
            "retries": 1,
            "max_inputs": 10,
            "concurrency": 1,
            "prices": {"fake-embed": 1000.0},
            "max_usd_per_day": 0.5,
        }
    )
    # a 4-second window: the cap is reached at once, the run waits (the reset is an hour away
    # on the run's clock, so it waits out the window) and ends with its summary, not an error
    summary = asyncio.run(sync(job="docs", window_s=4.0, aligned=False))
    sent = env.provider.requests
    assert summary.job == "docs" and 1 <= sent < 10 and len(env.vectors()) == sent * 10
    assert _queued(env) == 100 - sent * 10 and _leased(env) == 0


def test_a_batch_is_charged_at_the_batch_price_and_one_over_the_cap_is_not_created(env):
    env.make_table(100)
    prices = {"prices": {"fake-embed": 1000.0}, "batch_prices": {"fake-embed": 500.0}}
    env.create_job(settings_kw={"retries": 1, "max_inputs": 50, "max_usd_per_day": 0.1, **prices})
    with pytest.raises(SpendCapReached):  # ~2,000 tokens at $500/M = ~$1: over the cap
        env.backfill(batch=True)
    assert env.provider.batch_api.batches == {} and _leased(env) == 0 and _queued(env) == 100
    assert _spent(env) == {}

    with env.connect() as conn:  # a cap the batch fits in
        conn.execute(
            "UPDATE vectorfill.jobs SET settings = settings || '{\"max_usd_per_day\": 100.0}'::jsonb WHERE name = 'docs'"
        )
    summary = env.backfill(batch=True)
    assert summary.batches_submitted == 1
    (spent,) = _spent(env).values()
    tokens = sum(counter_for("fake-embed").count(list(env.texts().values())))
    assert spent == pytest.approx(tokens * 500.0 / 1e6)  # the batch price, not the online one
