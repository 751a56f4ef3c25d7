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
# Prefect server and fake providers, so no test shares state with a test on another worker
# (see "State and the session's servers" below).
# Modules whose module-scoped fixture is dear (the MiniLM model, a Postgres data directory) are
# kept on one worker each (`xdist_group`, honoured by `--dist loadgroup`).

MAX_WORKERS = 4  # beyond this, workers' session start-up (Postgres, Prefect) outweighs the gain


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """A worker a core. One more made the whole suite faster (its slow tests mostly wait), but
    the load it adds made a test that bounds a stop in seconds fail one run in three.

    None for the unit tier alone (`pytest tests/unit`, `pytest -m unit`): its tests take
    about as long as starting one worker does, so they run in this process."""
    if _unit_tier_only(config):
        return 0
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


def _unit_tier_only(config: pytest.Config) -> bool:
    if config.option.markexpr.strip() == "unit":
        return True
    where = config.invocation_params.dir
    paths = [where / arg.split("::")[0] for arg in config.args]
    return bool(paths) and all(tier_of(path) == "unit" for path in paths)


PREFECT_FIXTURES = frozenset({"prefect_server", "local_prefect_home"})


def _needs_prefect(item: pytest.Item) -> bool:
    return not PREFECT_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))


# --- Tiers ------------------------------------------------------------------------------------
# A test's tier is the directory it lives in, and each tier is one command (see the README's
# "Development"): `pytest tests/unit`, `pytest tests/integration`, `pytest tests/e2e`, or the
# marker of the same name (`pytest -m "not e2e"`), which is added here to every test of the
# directory.
#   unit         no Postgres, no Prefect server, no subprocess, no socket: pure functions, the
#                client on httpx's MockTransport, the rate limiter on a fake clock, `task.fn()`
#   integration  a real Postgres and the session's Prefect server, flows run in this process,
#                fake providers on loopback
#   e2e          `vectorfill` commands as subprocesses, servers, workers
#   realservers  the same, against real servers installed from PyPI (tests/realservers/real_servers.py)
# A test in tests/unit that asks for a fixture of the session's servers is refused at
# collection, and one that starts a subprocess or opens a socket fails, naming the call: the
# unit tier stays seconds long. Test modules are found by their base name (pytest's
# "prepend" import mode; no __init__.py), so two modules of the tree cannot share one.

TESTS_DIR = Path(__file__).resolve().parent
TIERS = ("unit", "integration", "e2e", "realservers")

# what a unit test may not ask for: fixtures that start (or wait for) the session's embedded
# Postgres or Prefect server, and the fake provider's HTTP server
SERVER_FIXTURES = frozenset({"pg_url", "session_home", "provider"}) | PREFECT_FIXTURES


def tier_of(path: Path) -> str | None:
    """The tier of ``path`` (a test module or a directory): its first directory under tests/,
    if that is a tier's."""
    try:
        parts = path.resolve().relative_to(TESTS_DIR).parts
    except ValueError:
        return None
    return parts[0] if parts and parts[0] in TIERS else None


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> Iterator[None]:
    """Around the other hooks: mark each test with its directory's tier first, so that `-m`
    selects by it. Then, once `-m`, `-k` and `--deselect` have deselected, refuse unit tests
    that ask for a server, sort the tests and start the session's servers if a selected
    test needs them (`pytest tests/unit`, `pytest -m unit` start none)."""
    for item in items:
        tier = tier_of(item.path)
        if tier is not None:
            item.add_marker(tier)
    yield
    _refuse_servers_in_unit_tests(items)
    _order_and_start_servers(config, items)


def _refuse_servers_in_unit_tests(items: list[pytest.Item]) -> None:
    refused = []
    for item in items:
        servers = SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if servers and item.get_closest_marker("unit") is not None:
            refused.append(f"{item.nodeid} uses {', '.join(sorted(servers))}")
    if refused:
        raise pytest.UsageError(
            "unit tests need no server; move these to tests/integration or tests/e2e:\n  " + "\n  ".join(refused)
        )


def _order_and_start_servers(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow tests first (a stable sort): the long ones start early and overlap with the many
    short ones, instead of one of them starting last and keeping a worker busy alone. Among
    the short ones, those that need no Prefect server come first, while it starts.

    Then, when a selected test needs the session's servers, start them in the background."""
    items.sort(key=lambda item: (item.get_closest_marker("slow") is None, _needs_prefect(item)))
    if not config.option.collectonly and any(_needs_prefect(item) for item in items):
        _start_session_servers(config)


class _NotInUnitTests(RuntimeError):
    pass


@pytest.fixture(autouse=True)
def _unit_tier_isolation(request: pytest.FixtureRequest) -> None:
    """In tests/unit, starting a subprocess or connecting a socket fails the test."""
    if request.node.get_closest_marker("unit") is None:
        return
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    import socket
    import subprocess

    def refuse(what: str):
        def call(*args: object, **kwargs: object):
            raise _NotInUnitTests(f"a unit test may not {what}: move it to tests/integration or tests/e2e")

        return call

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("start a subprocess"))
    monkeypatch.setattr(socket.socket, "connect", refuse("connect a socket (use httpx.MockTransport)"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect a socket (use httpx.MockTransport)"))
    monkeypatch.setattr(socket, "create_connection", refuse("connect a socket (use httpx.MockTransport)"))


# --- State and the session's servers -----------------------------------------------------------
# Nothing a test runs writes to the developer's VECTORFILL_HOME: each worker (or the one process
# without xdist) has a home of its own, made when it starts. There, as a user's first command
# does, one background `vectorfill runs` starts the embedded Postgres and the local Prefect
# server (its history in Postgres) while collection ends and the first tests, which need neither,
# run. Every test of the worker then uses that one Prefect server: flows run in-process
# (`prefect_server`) and `vectorfill` commands run as subprocesses (`local_prefect_home`) alike.
# At the end, `vectorfill stop` there stops both.

_HOME_KEY = pytest.StashKey[Path]()
_HOME_BEFORE_KEY = pytest.StashKey["str | None"]()
_STARTER_KEY = pytest.StashKey["subprocess.Popen[bytes]"]()
_HISTORY_DB_KEY = pytest.StashKey[str]()


def _runs_tests(config: pytest.Config) -> bool:
    """False in xdist's controller, which only hands tests to its workers."""
    return hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None)


def pytest_configure(config: pytest.Config) -> None:
    if not _runs_tests(config):
        return
    home = Path(tempfile.mkdtemp(prefix="vf-test-session-"))  # in /tmp: a short socket path
    config.stash[_HOME_KEY] = home
    config.stash[_HOME_BEFORE_KEY] = os.environ.get("VECTORFILL_HOME")
    os.environ["VECTORFILL_HOME"] = str(home)


def _home_env(home: Path) -> dict[str, str]:
    """A `vectorfill` command's environment with ``home`` as its VECTORFILL_HOME."""
    env = dict(os.environ, VECTORFILL_HOME=str(home), PREFECT_HOME=str(home / "prefect"))
    env.pop("PREFECT_API_URL", None)
    url = os.environ.get(TEST_DATABASE_URL_ENV)
    if url:
        env["VECTORFILL_DATABASE_URL"] = url
    else:
        env.pop("VECTORFILL_DATABASE_URL", None)  # the embedded Postgres in ``home``
    return env


def _start_session_servers(config: pytest.Config) -> None:
    home = config.stash.get(_HOME_KEY, None)
    if home is None or _STARTER_KEY in config.stash or os.environ.get(TEST_DATABASE_URL_ENV):
        return  # with a server of the developer's, `prefect_server` starts Prefect's on first need
    import subprocess
    import sys

    log = open(home / "session-servers.log", "wb")  # noqa: SIM115 -- the starter writes it until it exits
    config.stash[_STARTER_KEY] = subprocess.Popen(
        [sys.executable, "-m", "vectorfill.cli", "runs"],
        env=_home_env(home),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the session's servers (here, not at unconfigure: xdist's controller may end a
    worker as soon as it reports its session finished)."""
    config = session.config
    home = config.stash.get(_HOME_KEY, None)
    if home is None:
        return
    starter = config.stash.get(_STARTER_KEY, None)
    if starter is not None and starter.poll() is None:
        starter.wait(timeout=300)
    if (home / "prefect-local.json").exists() or (home / "pgdata").exists():
        stop_local_prefect(home, config.stash.get(_HISTORY_DB_KEY, None))
    before = config.stash[_HOME_BEFORE_KEY]
    if before is None:
        os.environ.pop("VECTORFILL_HOME", None)
    else:
        os.environ["VECTORFILL_HOME"] = before
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def session_home(pytestconfig: pytest.Config) -> Path:
    """This worker's VECTORFILL_HOME, where its embedded Postgres and Prefect server run."""
    return pytestconfig.stash[_HOME_KEY]


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
def pg_url(session_home: Path) -> Iterator[str]:
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

    # the session home's (started by the background `vectorfill runs`, or now: starts are
    # safe from several processes at once); stopped with the Prefect server at the end
    yield pgembedded.start(session_home / "pgdata")


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
# The worker's local Prefect server (see "State and the session's servers"); flows run through
# it for real.

from vectorfill.orchestration.runtime import prefect_defaults  # noqa: E402

prefect_defaults(use_served=False)  # never a developer's running `vectorfill serve`


@pytest.fixture(scope="session")
def prefect_server(pg_url: str, pytestconfig: pytest.Config) -> Iterator[str]:
    """The session's Prefect server; its API URL, in force for this process's flows as
    Prefect's test harness does it. Subprocesses that run flows get it as ``PREFECT_API_URL``
    (as a user's runs reuse a running server), so that none of them pays for starting a
    temporary server of its own."""
    import prefect.context
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from vectorfill.orchestration import local_server

    history_beside = pg_url
    if os.environ.get(TEST_DATABASE_URL_ENV):  # a server the workers share: a history database each
        history_beside = _create_database(pg_url, f"vf_session_{uuid.uuid4().hex[:12]}")
        pytestconfig.stash[_HISTORY_DB_KEY] = history_beside
    # waits for the background start (it holds the server's lock), or starts it if that failed
    api_url = local_server.ensure(history_beside, announce=lambda _: None).api_url
    with (
        temporary_settings(updates={PREFECT_API_URL: api_url}),
        prefect.context._temporary_global_settings_context(prefect.context.get_settings_context()),
    ):
        yield api_url
        APILogWorker.drain_all(timeout=10)  # what runs logged, before the server stops


@pytest.fixture(scope="session")
def local_prefect_home(prefect_server: str, session_home: Path) -> Path:
    """The VECTORFILL_HOME of the session's CLI tests: a `vectorfill` command run there with no
    PREFECT_API_URL finds the local Prefect server running, as a user's second command does."""
    return session_home


@pytest.fixture
def served_on_session_server(prefect_server: str) -> Iterator[str]:
    """The session's Prefect server, for a test that serves deployments there (`vectorfill
    serve`, a work pool's): afterwards every deployment and automation on it is deleted, so
    that a later test's event (a CLI `set-model`) cannot start a run of them, nor a later
    `serve` on this server pick up a run left scheduled."""
    yield prefect_server
    import httpx

    # the REST API itself: Prefect 3.8.8's sync client sends a filter its own server refuses
    with httpx.Client(base_url=prefect_server, timeout=30) as api:
        for kind in ("automations", "deployments"):
            for item in api.post(f"/{kind}/filter", json={"limit": 200}).raise_for_status().json():
                api.delete(f"/{kind}/{item['id']}").raise_for_status()


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


@pytest.fixture
def home(fresh_db: str, tmp_path: Path) -> Iterator[Path]:
    """A new VECTORFILL_HOME; whatever a test starts there is stopped afterwards."""
    path = tmp_path / "home"
    yield path
    stop_local_prefect(path, fresh_db)


def stop_local_prefect(home: Path, db_url: str | None = None) -> None:
    """`vectorfill stop` in ``home`` (the local Prefect server, and an embedded Postgres if one
    runs there), then drop the Prefect database the server kept beside ``db_url``, and, if it
    is one of the session's, ``db_url``'s own."""
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-m", "vectorfill.cli", "stop"], env=_home_env(home), capture_output=True, timeout=120
    )
    if db_url:
        own = urlsplit(db_url).path.lstrip("/") or "postgres"
        maintenance = database_url(db_url, "postgres")
        _drop_database(maintenance, own + "_prefect")
        if own.startswith("vf_session_"):
            _drop_database(maintenance, own)
