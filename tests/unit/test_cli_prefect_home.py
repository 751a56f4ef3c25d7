"""Without a usable home, the `vectorfill` command keeps Prefect's state in VECTORFILL_HOME
(the commands as a user runs them: test_cli.py)."""

from __future__ import annotations

import os


def test_without_a_usable_home_prefect_state_goes_to_vectorfill_home(tmp_path, monkeypatch):
    from vectorfill.orchestration.runtime import _ensure_prefect_home

    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("HOME", str(tmp_path / "a-file" / "home"))
    monkeypatch.delenv("PREFECT_HOME", raising=False)
    monkeypatch.setenv("VECTORFILL_HOME", str(tmp_path / "state"))
    _ensure_prefect_home()
    assert os.environ["PREFECT_HOME"] == str(tmp_path / "state" / "prefect")
    assert (tmp_path / "state" / "prefect").is_dir()
