"""The embedded Postgres without starting one: its public API, its default data directory,
its SQLAlchemy URL (the lifecycle: tests/e2e/test_pgembedded.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vectorfill.errors import ConfigError
from vectorfill.local import pgembedded


def test_public_api_is_what_all_says():
    assert sorted(pgembedded.__all__) == sorted(
        [
            "DATABASE",
            "HOME_ENV",
            "EmbeddedStatus",
            "default_data_dir",
            "start",
            "stop",
            "status",
            "url",
            "sqlalchemy_url",
        ]
    )


def test_default_data_dir_follows_vectorfill_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv(pgembedded.HOME_ENV, str(tmp_path))
    assert pgembedded.default_data_dir() == tmp_path / "pgdata"
    assert pgembedded.status().data_dir == (tmp_path / "pgdata").resolve()


def test_sqlalchemy_url_swaps_only_the_scheme():
    url = "postgresql://postgres@/vectorfill?host=/tmp/x/pgdata"
    assert pgembedded.sqlalchemy_url(url) == "postgresql+psycopg://postgres@/vectorfill?host=/tmp/x/pgdata"
    with pytest.raises(ConfigError):
        pgembedded.sqlalchemy_url("mysql://x/y")
