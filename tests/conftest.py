"""Shared fixtures, one section per concern."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

# --- Running the suite in parallel -------------------------------------------------------------
# `pytest` runs on every core (pytest-xdist, `-n auto` in pyproject.toml; `-n 0` runs in this
# process). Each worker has a session of its own: its own embedded Postgres, template databases,
# Prefect server and fake providers, so no test shares state with a test on another worker.
# Modules whose module-scoped fixture is dear (the MiniLM model, a Postgres data directory) are
# kept on one worker each (`xdist_group`, honoured by `--dist loadgroup`).

MAX_WORKERS = 4  # beyond this, workers' session start-up (Postgres, Prefect) outweighs the gain


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """A worker a core. One more made the whole suite faster (its slow tests mostly wait), but
    the load it adds made a test that bounds a stop in seconds fail one run in three."""
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow tests first (a stable sort): the long ones start early and overlap with the many
    short ones, instead of one of them starting last and keeping a worker busy alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# --- State ------------------------------------------------------------------------------------
# Nothing a test runs writes to the developer's VECTORFILL_HOME: the session has one of its own
# (per worker), and a local Prefect server something started there is stopped at the end.


@pytest.fixture(scope="session", autouse=True)
def session_home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="vf-test-session-"))
    before = os.environ.get("VECTORFILL_HOME")
    os.environ["VECTORFILL_HOME"] = str(home)
    try:
        yield home
    finally:
        if (home / "prefect-local.json").exists():
            stop_local_prefect(home)
        if before is None:
            os.environ.pop("VECTORFILL_HOME", None)
        else:
            os.environ["VECTORFILL_HOME"] = before
        shutil.rmtree(home, ignore_errors=True)


# --- Postgres ---------------------------------------------------------------------------------
# Tests run against a real Postgres with pgvector: a throwaway embedded server for the session,
# or the server named by VECTORFILL_TEST_DATABASE_URL (a postgresql:// URL; its role needs
# CREATEDB for `fresh_db`, and the vector extension must be installable or installed).

TEST_DATABASE_URL_ENV = "VECTORFILL_TEST_DATABASE_URL"


def database_url(url: str, dbname: str) -> str:
    """``url`` pointing at database ``dbname`` instead (path replaced, query kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a database with the vector extension, for the whole test session."""
    url = os.environ.get(TEST_DATABASE_URL_ENV)
    if url:
        if not url.startswith(("postgresql://", "postgres://")):
            pytest.exit(f"{TEST_DATABASE_URL_ENV} must be a postgresql:// URL", returncode=4)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        yield url
        return

    from vectorfill.local import pgembedded

    # mkdtemp in /tmp keeps the socket path short; pytest's tmp dirs are removed only later
    root = Path(tempfile.mkdtemp(prefix="vectorfill-test-pg-"))
    data_dir = root / "pgdata"
    try:
        yield pgembedded.start(data_dir)
    finally:
        pgembedded.stop(data_dir)
        shutil.rmtree(root, ignore_errors=True)


# Templates, made once per session (as psycopg's tests do): a database is cloned from one in
# milliseconds, where creating the extension and running every migration per test cost about
# a second each. The "empty" template has the vector extension; the "migrated" one also
# vectorfill's schema at head. Each test still gets its own database, dropped after it.


def _create_database(pg_url: str, name: str, template: str | None = None) -> str:
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        create = sql.SQL("{} TEMPLATE {}").format(create, sql.Identifier(template))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(create)
    return database_url(pg_url, name)


def _drop_database(pg_url: str, name: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def db_templates(pg_url: str) -> Iterator[dict[str, str]]:
    """Names of the session's template databases: "empty" and "migrated"."""
    suffix = uuid.uuid4().hex[:8]
    empty, migrated = f"vf_template_empty_{suffix}", f"vf_template_migrated_{suffix}"
    with psycopg.connect(_create_database(pg_url, empty), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    from vectorfill.storage.db import migrate

    migrate(_create_database(pg_url, migrated, template=empty))
    try:
        yield {"empty": empty, "migrated": migrated}
    finally:
        _drop_database(pg_url, empty)
        _drop_database(pg_url, migrated)


def _database_from(pg_url: str, template: str) -> Iterator[str]:
    name = f"vf_test_{uuid.uuid4().hex[:12]}"
    url = _create_database(pg_url, name, template=template)
    try:
        yield url
    finally:
        _drop_database(pg_url, name)


@pytest.fixture
def fresh_db(pg_url: str, db_templates: dict[str, str]) -> Iterator[str]:
    """URL of a new, empty database (with the vector extension), dropped after the test."""
    yield from _database_from(pg_url, db_templates["empty"])


@pytest.fixture
def migrated_db(pg_url: str, db_templates: dict[str, str]) -> Iterator[str]:
    """URL of a new database with vectorfill's schema at head, as after `vectorfill migrate`."""
    yield from _database_from(pg_url, db_templates["migrated"])


# --- Prefect ----------------------------------------------------------------------------------
# One temporary Prefect server for the whole session; flows run through it for real.

from vectorfill.orchestration.runtime import prefect_defaults  # noqa: E402

prefect_defaults(use_served=False)  # never a developer's running `vectorfill serve`


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """The session's Prefect server; its API URL. Subprocesses that run flows get it as
    ``PREFECT_API_URL`` (as a user's runs reuse a running server), so that none of them
    pays for starting a temporary server of its own."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


def expire_leases(url: str, queue: str = "vectorfill._q_1_1") -> int:
    """End every lease on ``queue`` now, as if its time had passed (instead of sleeping
    through it): a dead worker's rows become free for the next claim."""
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(f"UPDATE {queue} SET lease_until = now() WHERE lease_until > now()").rowcount


# --- Fake provider ----------------------------------------------------------------------------

API_KEY = "sk-test-" + "k3y" * 8  # looks like a real key, so that leak checks can grep for it


@pytest.fixture
def provider():
    """A fake provider server of its own for each test: one shared by the session leaked
    state from test to test (a variant, learnt limits, Batch API files), which cost more
    than the quarter of a second a start saves."""
    from fake_provider import FakeProvider

    with FakeProvider(dimensions=32, api_key=API_KEY) as fake:
        yield fake


# --- vectorfill on a fresh database -----------------------------------------------------------


class Env:
    """A migrated database, the fake provider and the API key in the environment."""

    def __init__(self, url: str, provider) -> None:
        self.url = url
        self.provider = provider

    def connect(self):
        from vectorfill.storage.db import connect

        return connect(self.url)

    def make_table(self, n: int, *, table: str = "articles", start: int = 1) -> None:
        with self.connect() as conn:
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (id bigint PRIMARY KEY, title text, body text, views int DEFAULT 0)"
                ).format(sql.Identifier(table))
            )
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (id, title, body) SELECT g, 'Title ' || g, 'Body of row ' || g || ' about ' || md5(g::text) "
                    "FROM generate_series(%s::int, %s::int) g"
                ).format(sql.Identifier(table)),
                (start, start + n - 1),
            )

    def create_job(self, name: str = "docs", *, table: str = "articles", **kw):
        from vectorfill.config import JobSettings
        from vectorfill.jobs.registry import create_job

        settings = kw.pop("settings", None) or JobSettings(**kw.pop("settings_kw", {"retries": 1}))
        args = dict(
            name=name,
            table=table,
            text_columns=None,
            template="{title}\n\n{body}",
            key_columns=None,
            model="fake-embed",
            base_url=self.provider.base_url,
            api_key_env="VF_TEST_API_KEY",
            settings=settings,
        )
        args.update(kw)
        with self.connect() as conn:
            return create_job(conn, **args)

    def backfill(self, job: str = "docs", **kw):
        """The run's summary, whether or not rows failed (a run with failed rows ends Failed
        and raises RowsFailed, which carries it)."""
        import asyncio

        from vectorfill.errors import RowsFailed
        from vectorfill.flows.backfill import backfill

        try:
            return asyncio.run(backfill(job, **kw))
        except RowsFailed as exc:
            return exc.summary

    def status(self, job: str = "docs"):
        from vectorfill.jobs.registry import job_status

        with self.connect() as conn:
            return job_status(conn, job)

    def vectors(self, job: str = "docs") -> dict:
        import numpy as np

        with self.connect() as conn:
            rows = conn.execute(
                sql.SQL("SELECT id, embedding FROM {}").format(sql.Identifier("vectorfill", job))
            ).fetchall()
        return {r[0]: np.asarray(r[1].to_numpy()) for r in rows}

    def texts(self, table: str = "articles") -> dict:
        with self.connect() as conn:
            rows = conn.execute(
                sql.SQL("SELECT id, concat(title, E'\\n\\n', body) FROM {}").format(sql.Identifier(table))
            ).fetchall()
        return dict(rows)


@pytest.fixture
def env(migrated_db, provider, prefect_server, monkeypatch) -> Env:
    monkeypatch.setenv("VECTORFILL_DATABASE_URL", migrated_db)
    monkeypatch.setenv("VF_TEST_API_KEY", API_KEY)
    # a command invoked in this process (typer's CliRunner) uses the session's server too,
    # instead of starting the local server (and setting PREFECT_API_URL for later tests)
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    return Env(migrated_db, provider)


# --- The local Prefect server of CLI runs -----------------------------------------------------
# A `vectorfill` command run as a subprocess with no PREFECT_API_URL starts the local Prefect
# server of its VECTORFILL_HOME (and leaves it running). Tests that start one stop it.


def stop_local_prefect(home: Path, db_url: str | None = None) -> None:
    """`vectorfill stop` in ``home`` (the local Prefect server, and an embedded Postgres if one
    runs there), then drop the Prefect database the server kept beside ``db_url``."""
    import subprocess
    import sys

    env = dict(os.environ, VECTORFILL_HOME=str(home), PREFECT_HOME=str(home / "prefect"))
    env.pop("PREFECT_API_URL", None)
    subprocess.run([sys.executable, "-m", "vectorfill.cli", "stop"], env=env, capture_output=True, timeout=120)
    if db_url:
        name = (urlsplit(db_url).path.lstrip("/") or "postgres") + "_prefect"
        with psycopg.connect(database_url(db_url, "postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def local_prefect_home(pg_url: str) -> Iterator[Path]:
    """A VECTORFILL_HOME shared by the session's CLI tests, its local Prefect server started
    once (history in ``<test database>_prefect``) and stopped at the end of the session."""
    import subprocess
    import sys

    home = Path(tempfile.mkdtemp(prefix="vf-test-home-"))
    env = dict(
        os.environ, VECTORFILL_HOME=str(home), PREFECT_HOME=str(home / "prefect"), VECTORFILL_DATABASE_URL=pg_url
    )
    env.pop("PREFECT_API_URL", None)
    try:
        subprocess.run(
            [sys.executable, "-m", "vectorfill.cli", "runs"], env=env, capture_output=True, timeout=400, check=True
        )
        yield home
    finally:
        stop_local_prefect(home, pg_url)
        shutil.rmtree(home, ignore_errors=True)
