"""`vectorfill job set-model`: the endpoint check decides whether the job changes at all.

A model change is one transaction: the new version, its queue and, with ``--batch``, the
job's batch mode are committed together, after the endpoint check; a refused check leaves
the job exactly as it was.
"""

from __future__ import annotations

import json

import pytest

from cli_helpers import user_env, vf
from vectorfill.jobs.registry import load_job
from vectorfill.storage.db import connect


@pytest.fixture
def job_env(fresh_db, provider, tmp_path, local_prefect_home):
    """A user's shell with job ``docs`` (300 rows, fake-embed, online by default) created
    through the command, its endpoint checked."""
    env = user_env(fresh_db, tmp_path, local_prefect_home)
    with connect(fresh_db) as conn:
        conn.execute("CREATE TABLE articles (id int PRIMARY KEY, title text, body text)")
        conn.execute("INSERT INTO articles SELECT g, 'T' || g, 'B' || g FROM generate_series(1, 300) g")
    vf("migrate", env=env)
    vf(
        *("job", "create", "docs", "--table", "articles", "--text", "body", "--model", "fake-embed"),
        *("--base-url", provider.base_url, "--api-key-env", "VF_KEY"),
        env=env,
    )
    return env


def versions(env) -> list[tuple[int, str]]:
    return [(v["version"], v["state"]) for v in json.loads(vf("job", "versions", "docs", "--json", env=env).stdout)]


def batch_mode(db_url: str) -> bool:
    with connect(db_url) as conn:
        return load_job(conn, "docs").settings.batch


@pytest.mark.slow
def test_a_refused_set_model_batch_leaves_the_job_as_it_was(job_env, fresh_db, provider):
    # the fake serves fake-embed only: the check of text-embedding-3-large is refused (404)
    proc = vf("job", "set-model", "docs", "--model", "text-embedding-3-large", "--batch", env=job_env, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "a backfill would not work" in proc.stdout and "nothing was created" in proc.stderr
    assert versions(job_env) == [(1, "active")], "no new version"
    assert batch_mode(fresh_db) is False, "the job's batch mode is unchanged"

    summary = json.loads(vf("backfill", "docs", "--json", env=job_env).stdout)
    assert summary["embedded"] == 300 and summary["batches_submitted"] == 0, "the next backfill runs online"
    assert provider.batch_api.submitted_inputs == 0


@pytest.mark.slow
def test_a_checked_set_model_batch_commits_the_version_and_the_batch_mode_together(job_env, fresh_db, provider):
    checked = provider.requests
    out = vf("job", "set-model", "docs", "--model", "fake-embed", "--dimensions", "16", "--batch", env=job_env).stdout
    assert "endpoint check passed" in out and "version 2 (fake-embed) is filling, 300 rows queued" in out
    assert provider.requests == checked + 1, "one check request"
    assert versions(job_env) == [(1, "active"), (2, "filling")]
    assert batch_mode(fresh_db) is True, "the re-embed runs through the Batch API by default"


@pytest.mark.slow
def test_chunk_options_of_set_model_are_checked_and_those_not_given_kept(job_env, fresh_db):
    proc = vf("job", "set-model", "docs", "--model", "fake-embed", "--chunk-size", "4", env=job_env, check=False)
    assert proc.returncode == 1 and "invalid chunk option: size" in proc.stderr
    assert versions(job_env) == [(1, "active")]
    vf(
        *("job", "set-model", "docs", "--model", "fake-embed", "--chunker", "tokens", "--chunk-size", "64"),
        *("--chunk-template", "{body}\\n{chunk}", "--no-check"),
        env=job_env,
    )
    with connect(fresh_db) as conn:
        chunking = load_job(conn, "docs").next.chunking
    assert (chunking.chunker, chunking.size, chunking.template) == ("tokens", 64, "{body}\n{chunk}")
    assert (chunking.overlap, chunking.max_chunks) == (0, 10_000), "the active version's (the defaults)"
