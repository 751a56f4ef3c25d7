"""A model vectorfill knows no tokenizer for, behind a server that refuses inputs over its
limit (LiteLLM's proxy in front of a 256-token model, its real error body, `param` dropped):
the limit is learnt from the first refusal, remembered for the endpoint, and long inputs are
cut to it from then on without another refusal; a stored chunk is the text its vector was
made from."""

from __future__ import annotations

import random

import numpy as np
import pytest
from psycopg import sql

from conftest import API_KEY, Env
from vectorfill.provider.tokens import Cl100k

LIMIT = 256
MODEL = "acme/embed-small"  # no known tokenizer: counted by the bytes/3 estimate


@pytest.fixture
def limited(migrated_db, prefect_server, monkeypatch):
    from fake_provider import FakeProvider

    monkeypatch.setenv("VECTORFILL_DATABASE_URL", migrated_db)
    monkeypatch.setenv("VF_TEST_API_KEY", API_KEY)
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    with FakeProvider(dimensions=32, api_key=API_KEY, model=MODEL) as fake:
        fake.behave_like("litellm", max_input_tokens=LIMIT)
        yield Env(migrated_db, fake)


def long_text(seed: int) -> str:
    rng = random.Random(seed)
    words = ["vector", "database", "embedding", "token", "server", "request", "postgres", "queue"]
    return " ".join(rng.choice(words) for _ in range(1500))  # ~1,500 tokens


def add_rows(env: Env, start: int, short: int, long: list[int]) -> None:
    with env.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS notes (id int PRIMARY KEY, body text)")
        for i in range(start, start + short):
            conn.execute("INSERT INTO notes VALUES (%s, %s)", (i, f"a short note number {i}"))
        for i in long:
            conn.execute("INSERT INTO notes VALUES (%s, %s)", (i, long_text(i)))


def stored(env: Env) -> dict[int, tuple[str, np.ndarray]]:
    with env.connect() as conn:
        rows = conn.execute(
            sql.SQL("SELECT id, chunk, embedding FROM {}").format(sql.Identifier("vectorfill", "notes"))
        ).fetchall()
    return {r[0]: (r[1], np.asarray(r[2].to_numpy())) for r in rows}


def test_a_learnt_input_limit_cuts_long_inputs_after_one_refusal_and_is_remembered(limited):
    env = limited
    add_rows(env, 1, 60, [901, 902, 903])
    env.create_job("notes", table="notes", template=None, text_columns=["body"], model=MODEL)
    first = env.backfill("notes")
    assert first.embedded == 63 and first.failed == 0
    # one refusal taught the limit; the batch was sent again with its long inputs cut (no bisecting)
    assert env.provider.refused == 1, env.provider.refused
    assert first.truncated == 3
    with env.connect() as conn:
        remembered, ratio = conn.execute(
            "SELECT max_input_tokens, input_token_ratio FROM vectorfill.endpoint_caps"
        ).fetchone()
    assert remembered == LIMIT
    # the refusal named the server's count of the long input: the estimate is calibrated by it
    # (these words are ~8.6 bytes a cl100k token: ~0.35 of the server's tokens per bytes/3)
    assert 0.3 < ratio < 0.4, ratio

    rows = stored(env)
    counter = Cl100k()  # the fake model's own tokenizer
    for i in (901, 902, 903):
        chunk, vector = rows[i]
        assert long_text(i).startswith(chunk) and len(chunk) < len(long_text(i))
        # cut by the calibrated estimate: close under the limit (by bytes/3 alone: ~96 of 256)
        assert 0.9 * LIMIT <= counter.count([chunk])[0] <= LIMIT, counter.count([chunk])
        # the stored text is exactly what the vector was made from
        assert np.allclose(vector, env.provider.expected_vector(chunk), atol=1e-6)

    # the next run (another process would do the same) knows the limit: no refusal at all
    requests = env.provider.requests
    add_rows(env, 100, 10, [904, 905])
    second = env.backfill("notes")
    assert second.embedded == 12 and second.truncated == 2
    assert env.provider.refused == 1 and env.provider.requests > requests
    rows = stored(env)
    for i in (904, 905):  # cut by the remembered calibration, as close to the limit
        assert 0.9 * LIMIT <= counter.count([rows[i][0]])[0] <= LIMIT


def test_a_copied_vector_of_a_cut_input_stores_the_text_it_was_made_from(limited):
    """Reuse copies a vector by its planned input's hash; when that input was cut to the
    learnt limit before it was sent, the copy stores the cut text, within a claim and
    across runs, never the whole one."""
    env = limited
    add_rows(env, 1, 5, [901])
    with env.connect() as conn:  # the same long text in another row of the same claim
        conn.execute("INSERT INTO notes VALUES (911, %s)", (long_text(901),))
    env.create_job("notes", table="notes", template=None, text_columns=["body"], model=MODEL)
    first = env.backfill("notes")
    assert first.embedded == 7 and first.reused == 1
    with env.connect() as conn:  # and again in a later run: copied from the stored vector
        conn.execute("INSERT INTO notes VALUES (912, %s)", (long_text(901),))
    requests = env.provider.requests
    second = env.backfill("notes")
    assert second.embedded == 1 and second.reused == 1 and env.provider.requests == requests
    rows = stored(env)
    cut, vector = rows[901]
    assert len(cut) < len(long_text(901))
    for i in (911, 912):
        chunk, copied = rows[i]
        assert chunk == cut and np.array_equal(copied, vector)
        assert np.allclose(copied, env.provider.expected_vector(chunk), atol=1e-6)


def test_without_truncation_a_row_over_the_learnt_limit_fails_with_the_servers_reason(limited):
    from vectorfill.config import JobSettings

    env = limited
    add_rows(env, 1, 10, [901])
    env.create_job(
        "notes",
        table="notes",
        template=None,
        text_columns=["body"],
        model=MODEL,
        settings=JobSettings(retries=1, on_too_long="fail"),
    )
    summary = env.backfill("notes")
    assert summary.embedded == 10 and summary.failed == 1 and summary.truncated == 0
    with env.connect() as conn:
        (message,) = conn.execute("SELECT message FROM vectorfill.failures").fetchone()
    assert "maximum context length is 256 tokens" in message


@pytest.fixture
def silent(migrated_db, prefect_server, monkeypatch):
    """Infinity as 0.0.78 serves MiniLM: long inputs cut silently at the model's limit, and
    usage.prompt_tokens counting characters."""
    from fake_provider import FakeProvider

    monkeypatch.setenv("VECTORFILL_DATABASE_URL", migrated_db)
    monkeypatch.setenv("VF_TEST_API_KEY", API_KEY)
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    with FakeProvider(dimensions=32, api_key=API_KEY, model=MODEL) as fake:
        fake.behave_like("infinity", truncate_at=LIMIT, usage_chars=True, base64=True)
        yield Env(migrated_db, fake)


def test_a_server_that_truncates_silently_is_reported_and_its_character_usage_not_believed(silent, caplog):
    env = silent
    add_rows(env, 1, 30, [901, 902])
    env.create_job("notes", table="notes", template=None, text_columns=["body"], model=MODEL)
    with caplog.at_level("WARNING", logger="vectorfill"):
        summary = env.backfill("notes")
    assert summary.embedded == 32 and env.provider.refused == 0
    # vectorfill cannot know where the server cut: it says the two long rows may have been
    assert summary.maybe_truncated == 2 and summary.truncated == 0
    # usage counted characters: the run's tokens are counted here instead, and marked estimated
    chars = sum(len(t) for t in env.provider.inputs)
    assert summary.tokens_estimated == summary.tokens and 0 < summary.tokens < chars / 2
    said = [r.getMessage() for r in caplog.records if "usage.prompt_tokens" in r.getMessage()]
    assert len(said) == 1 and "not tokens" in said[0]  # told once

    # `vectorfill runs` reads both figures back from the run's summary (and marks the tokens)
    import time

    from vectorfill.orchestration.history import recent_runs

    deadline = time.monotonic() + 60
    while not (runs := recent_runs("notes", 5)) or runs[0].tokens is None:
        assert time.monotonic() < deadline, "the run's summary was not recorded"
        time.sleep(0.5)
    assert runs[0].tokens_estimated == summary.tokens_estimated and runs[0].maybe_truncated == 2

    # `status` and `failures` say it too, from what is stored (both long rows, none of the short)
    from typer.testing import CliRunner

    from vectorfill.cli.app import app
    from vectorfill.jobs.registry import job_status

    with env.connect() as conn:
        assert job_status(conn, "notes").maybe_truncated == 2
    for command in (["status", "notes"], ["failures", "notes"]):
        said = CliRunner().invoke(app, command)
        assert said.exit_code == 0, said.output
        text = " ".join(said.output.split())
        assert "2 stored rows (or chunks) of notes may have been truncated by the server" in text, text
    # once the model's limit is known for the endpoint (here: remembered as if learnt), nothing is said
    from vectorfill.provider.budgets import endpoint_key

    with env.connect() as conn:
        conn.execute(
            "INSERT INTO vectorfill.endpoint_caps (endpoint, max_input_tokens) VALUES (%s, %s)",
            (endpoint_key(env.provider.base_url, MODEL), LIMIT),
        )
        assert job_status(conn, "notes").maybe_truncated == 0
    assert "truncated" not in CliRunner().invoke(app, ["status", "notes"]).output


def test_a_limit_set_on_the_job_cuts_long_inputs_before_a_silent_server_does(silent):
    from vectorfill.config import JobSettings

    env = silent
    add_rows(env, 1, 5, [901])
    env.create_job(
        "notes",
        table="notes",
        template=None,
        text_columns=["body"],
        model=MODEL,
        settings=JobSettings(retries=1, max_input_tokens=LIMIT),
    )
    summary = env.backfill("notes")
    assert summary.embedded == 6 and summary.truncated == 1 and summary.maybe_truncated == 0
    chunk, vector = stored(env)[901]
    assert Cl100k().count([chunk])[0] <= LIMIT  # within the limit: the server embedded all of it
    assert np.allclose(vector, env.provider.expected_vector(chunk), atol=1e-6)


def test_a_limit_announced_at_teis_info_is_taken_before_the_first_request(silent):
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    env = silent  # cuts silently at 256 tokens, as TEI with --auto-truncate does

    async def info(request):
        return JSONResponse({"model_id": MODEL, "max_input_length": LIMIT, "max_client_batch_size": 32})

    env.provider.app.router.routes.insert(0, Route("/info", info, methods=["GET"]))
    add_rows(env, 1, 5, [901, 902])
    env.create_job("notes", table="notes", template=None, text_columns=["body"], model=MODEL)
    summary = env.backfill("notes")
    assert summary.embedded == 7 and summary.truncated == 2 and summary.maybe_truncated == 0
    assert env.provider.refused == 0
    with env.connect() as conn:
        assert conn.execute("SELECT max_input_tokens, evidence FROM vectorfill.endpoint_caps").fetchone()[0] == LIMIT
    chunk, vector = stored(env)[901]
    assert Cl100k().count([chunk])[0] <= LIMIT  # the server had nothing left to cut
    assert np.allclose(vector, env.provider.expected_vector(chunk), atol=1e-6)


@pytest.mark.parametrize("shape", ["vllm", "tei"])
def test_the_servers_own_tokenize_cuts_long_inputs_exactly_at_the_limit(
    migrated_db, prefect_server, monkeypatch, shape
):
    """vLLM and TEI tokenize at /tokenize: with the model's tokenizer not on this machine, long
    inputs are counted and cut by the server's own tokenizer, to the limit itself, and none is
    refused (vLLM's /tokenize names the limit too; TEI's /info does)."""
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from fake_provider import FakeProvider

    monkeypatch.setenv("VECTORFILL_DATABASE_URL", migrated_db)
    monkeypatch.setenv("VF_TEST_API_KEY", API_KEY)
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    with FakeProvider(dimensions=32, api_key=API_KEY, model=MODEL, max_tokens=LIMIT) as fake:
        fake.behave_like("vllm", max_input_tokens=LIMIT)  # refuses an input over the limit
        fake.tokenize = shape
        if shape == "tei":

            async def info(request):
                return JSONResponse({"model_id": MODEL, "max_input_length": LIMIT})

            fake.app.router.routes.insert(0, Route("/info", info, methods=["GET"]))
        env = Env(migrated_db, fake)
        add_rows(env, 1, 20, [901, 902, 903])
        env.create_job("notes", table="notes", template=None, text_columns=["body"], model=MODEL)
        summary = env.backfill("notes")
        assert summary.embedded == 23 and summary.failed == 0 and summary.truncated == 3
        assert fake.refused == 0 and fake.tokenize_requests > 0
        rows = stored(env)
        for i in (901, 902, 903):
            chunk, vector = rows[i]
            assert long_text(i).startswith(chunk)
            assert Cl100k().count([chunk])[0] == LIMIT  # the server's count: exactly at the limit
            assert np.allclose(vector, fake.expected_vector(chunk), atol=1e-6)
        short = rows[5][0]
        assert short == "a short note number 5"  # short rows are sent as they are
