"""The embedded Postgres without starting one: its public API, its default data directory,
its SQLAlchemy URL (the lifecycle: tests/e2e/test_pgembedded.py)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from vectorfill.errors import ConfigError
from vectorfill.local import pgembedded

pytestmark = pytest.mark.xdist_group("pgembedded")  # its module-scoped fixture is made once, on one worker


def _scratch_data_dir() -> Iterator[Path]:
    # /tmp/<short> keeps the socket inside the data directory (pytest's tmp_path can be too long)
    root = Path(tempfile.mkdtemp(prefix="vf-pgemb-"))
    try:
        yield root / "pgdata"
    finally:
        pgembedded.stop(root / "pgdata")
        shutil.rmtree(root, ignore_errors=True)


data_dir = pytest.fixture(_scratch_data_dir)
shared_data_dir = pytest.fixture(_scratch_data_dir, scope="module", name="shared_data_dir")


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
