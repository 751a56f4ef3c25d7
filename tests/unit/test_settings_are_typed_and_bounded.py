"""Job settings, job names, the API key and prices: typed, bounded, and refused with a
sentence that names what to fix."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from vectorfill.config import (
    RESERVED_JOB_NAMES,
    ChunkSettings,
    JobSettings,
    database_url_from_env,
    read_api_key,
    unescape_template,
    validate_job_name,
)
from vectorfill.errors import ConfigError, SecretMissing
from vectorfill.provider.prices import (
    BATCH_DISCOUNT,
    PRICES_PER_MILLION_TOKENS,
    batch_price_per_million,
    cost_usd,
    price_per_million,
)


def test_defaults_are_openais_limits():
    s = JobSettings()
    assert (s.max_inputs, s.max_request_tokens, s.encoding_format) == (2048, 300_000, "base64")
    assert s.rpm is None and s.tpm is None and not s.batch


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_inputs", 0),
        ("max_inputs", 100_001),
        ("concurrency", 0),
        ("concurrency", 257),
        ("timeout_s", 0),
        ("lease_s", 9),
        ("retries", -1),
        ("encoding_format", "binary"),
        ("on_too_long", "skip"),
        ("api_version", "2024 02 01"),
        ("api_version", ""),
        ("prices", {"m": -0.01}),
        ("batch_max_inputs", 50_001),
    ],
)
def test_out_of_bounds_settings_are_refused_naming_the_field(field, value):
    with pytest.raises(ValidationError) as info:
        JobSettings(**{field: value})
    assert info.value.errors()[0]["loc"][0] == field


def test_a_misspelt_setting_is_refused_not_ignored():
    with pytest.raises(ValidationError, match="max_input\n  Extra inputs are not permitted"):
        JobSettings(max_input=16)


def test_settings_are_frozen_and_survive_their_json_round_trip():
    s = JobSettings(max_inputs=32, rpm=3000, prices={"m": 0.5}, api_version="2024-02-01")
    with pytest.raises(ValidationError):
        s.max_inputs = 64
    assert JobSettings.model_validate_json(s.model_dump_json()) == s


def test_chunk_settings_are_bounded_and_none_means_one_input_per_row():
    assert not ChunkSettings().enabled and ChunkSettings(chunker="recursive").enabled
    with pytest.raises(ValidationError):
        ChunkSettings(size=7)
    with pytest.raises(ValidationError):
        ChunkSettings(chunker="sentences")


@pytest.mark.parametrize("name", ["docs", "a", "docs_2026", "x" * 40])
def test_job_names_that_make_a_good_view_name_are_accepted(name):
    assert validate_job_name(name) == name


@pytest.mark.parametrize("name", ["", "Docs", "2docs", "_docs", "docs-v2", "docs v2", "x" * 41, "a;drop"])
def test_job_names_that_would_not_be_a_plain_view_name_are_refused(name):
    with pytest.raises(ConfigError, match="1-40 lowercase letters"):
        validate_job_name(name)


@pytest.mark.parametrize("name", sorted(RESERVED_JOB_NAMES))
def test_job_names_that_would_shadow_vectorfills_own_tables_are_refused(name):
    with pytest.raises(ConfigError, match="reserved"):
        validate_job_name(name)


def test_the_api_key_is_read_from_the_named_variable_and_never_printed(monkeypatch):
    monkeypatch.setenv("VF_UNIT_KEY", "sk-secret-value")
    key = read_api_key("VF_UNIT_KEY")
    assert isinstance(key, SecretStr) and key.get_secret_value() == "sk-secret-value"
    assert "sk-secret-value" not in repr(key) and "sk-secret-value" not in str(key)
    assert read_api_key(None) is None and read_api_key("") is None


def test_a_missing_key_variable_is_named_with_what_to_export(monkeypatch):
    monkeypatch.delenv("VF_UNIT_MISSING", raising=False)
    with pytest.raises(
        SecretMissing, match=r"job 'docs': the API key variable VF_UNIT_MISSING is not set.*export VF_UNIT_MISSING="
    ):
        read_api_key("VF_UNIT_MISSING", job="docs")
    monkeypatch.setenv("VF_UNIT_MISSING", "")
    with pytest.raises(SecretMissing):
        read_api_key("VF_UNIT_MISSING")


def test_an_empty_database_url_variable_is_no_url(monkeypatch):
    monkeypatch.setenv("VECTORFILL_DATABASE_URL", "")
    assert database_url_from_env() is None
    monkeypatch.setenv("VECTORFILL_DATABASE_URL", "postgresql://h/db")
    assert database_url_from_env() == "postgresql://h/db"


def test_template_escapes_typed_on_a_command_line_become_characters_and_the_rest_is_kept():
    assert unescape_template(r"Über {title} — {body}\n\nEnde\t\\n") == "Über {title} — {body}\n\nEnde\t\\n"


# ------------------------------------------------------------------ prices


def test_a_price_is_the_override_else_the_jobs_else_the_table():
    settings = JobSettings(prices={"text-embedding-3-small": 0.05})
    assert price_per_million("text-embedding-3-small") == 0.02
    assert price_per_million("text-embedding-3-small", settings) == 0.05
    assert price_per_million("text-embedding-3-small", settings, override=0.0) == 0.0


def test_an_unknown_models_cost_is_unknown_never_zero():
    assert price_per_million("someones-model") is None
    assert cost_usd(1_000_000, None) is None
    assert cost_usd(2_500_000, 0.02) == pytest.approx(0.05)
    assert cost_usd(1_000_000, 0.0) == 0.0


def test_the_batch_api_costs_half_for_openais_models_and_is_unknown_elsewhere():
    for model, price in PRICES_PER_MILLION_TOKENS.items():
        if model.startswith("text-embedding-"):
            assert batch_price_per_million(model) == pytest.approx(price * BATCH_DISCOUNT)
    assert batch_price_per_million("someones-model") is None
    settings = JobSettings(batch_prices={"someones-model": 0.01})
    assert batch_price_per_million("someones-model", settings) == 0.01
    assert batch_price_per_million("someones-model", settings, override=0.2) == 0.2
