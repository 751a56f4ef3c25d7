"""A model change is one transaction: a refused endpoint check undoes all of it (the same
through the `vectorfill` command: test_cli_model_change.py)."""

from __future__ import annotations

import json

import pytest

from cli_helpers import vf
from vectorfill.jobs.registry import load_job


def versions(env) -> list[tuple[int, str]]:
    return [(v["version"], v["state"]) for v in json.loads(vf("job", "versions", "docs", "--json", env=env).stdout)]


def test_change_model_checks_the_new_version_and_a_refusal_undoes_all_of_it(migrated_db, provider):
    from conftest import Env
    from vectorfill.jobs.model_change import change_model

    env = Env(migrated_db, provider)
    env.make_table(20)
    env.create_job()
    seen = []

    class Refused(Exception):
        pass

    def refuse(version, settings):
        seen.append((version.version, version.model, version.dimensions, settings.batch))
        raise Refused

    with env.connect() as conn:
        conn.execute("SELECT 1")  # the caller's transaction is open: the change is a savepoint of it
        with pytest.raises(Refused):
            change_model(conn, "docs", model="fake-embed", dimensions=16, batch=True, check=refuse)
        job = load_job(conn, "docs")
    assert seen == [(2, "fake-embed", 16, False)], "checked: the new version, before batch mode is set"
    assert [v.version for v in job.versions] == [1] and job.settings.batch is False

    with env.connect() as conn:
        change = change_model(conn, "docs", model="fake-embed", dimensions=16, batch=True, check=lambda v, s: None)
    assert (change.version.version, change.queued, change.batch) == (2, 20, True)
    with env.connect() as conn:
        job = load_job(conn, "docs")
    assert job.next is not None and job.next.version == 2 and job.settings.batch is True
