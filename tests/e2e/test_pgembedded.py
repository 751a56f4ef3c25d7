"""The embedded Postgres: lifecycle, persistence, cross-process use.

A cold start (initdb) takes ~1 s, so tests that only read share one module-wide server;
tests that start, stop or race get their own data directory and stop their server afterwards.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy

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


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_start_status_url_stop_round_trip(data_dir: Path):
    before = pgembedded.status(data_dir)
    assert (before.running, before.url, before.pid) == (False, None, None)
    assert pgembedded.url(data_dir) is None

    url = pgembedded.start(data_dir)

    now = pgembedded.status(data_dir)
    assert now.running and now.pid and now.data_dir == data_dir.resolve()
    assert now.url == url == pgembedded.url(data_dir)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("vectorfill",)

    assert pgembedded.stop(data_dir) is True
    assert pgembedded.stop(data_dir) is False
    after = pgembedded.status(data_dir)
    assert (after.running, after.url, after.pid) == (False, None, None)
    assert pgembedded.url(data_dir) is None


@pytest.mark.slow
def test_restart_keeps_the_data(data_dir: Path):
    url = pgembedded.start(data_dir)
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE kept (id int primary key)")
        conn.execute("INSERT INTO kept VALUES (42)")
    pgembedded.stop(data_dir)

    url = pgembedded.start(data_dir)  # same process: no stale handle from before the stop

    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT id FROM kept").fetchall() == [(42,)]


@pytest.mark.slow
def test_starting_a_running_server_returns_the_same_url(shared_data_dir: Path):
    first = pgembedded.start(shared_data_dir)
    pid = pgembedded.status(shared_data_dir).pid
    assert pgembedded.start(shared_data_dir) == first
    assert pgembedded.status(shared_data_dir).pid == pid


def test_vector_extension_is_usable_via_psycopg_and_sqlalchemy(shared_data_dir: Path):
    url = pgembedded.start(shared_data_dir)
    query = "SELECT '[1,2,3]'::vector <=> '[1,2,4]'::vector"
    with psycopg.connect(url) as conn:
        distance = conn.execute(query).fetchone()[0]
    assert 0 < distance < 0.01

    engine = sqlalchemy.create_engine(pgembedded.sqlalchemy_url(url), poolclass=sqlalchemy.NullPool)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql(query).scalar() == pytest.approx(distance)
    finally:
        engine.dispose()


def test_server_started_by_a_process_outlives_it_and_is_seen_by_others(data_dir: Path):
    started = _run(
        """
        import sys
        from vectorfill.local import pgembedded
        print(pgembedded.start(sys.argv[1]))
        """,
        str(data_dir),
    )
    assert started.returncode == 0, started.stderr
    url = started.stdout.strip().splitlines()[-1]

    # the starting process has exited (atexit hooks ran); the server is still up
    assert pgembedded.url(data_dir) == url
    seen = _run(
        """
        import sys
        from vectorfill.local import pgembedded
        print(pgembedded.status(sys.argv[1]).running, pgembedded.url(sys.argv[1]))
        """,
        str(data_dir),
    )
    assert seen.stdout.split() == ["True", url], seen.stderr
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT extname FROM pg_extension WHERE extname = 'vector'").fetchone()


@pytest.mark.slow
def test_concurrent_starts_make_one_server(data_dir: Path):
    code = """
        import sys
        from vectorfill.local import pgembedded
        print(pgembedded.start(sys.argv[1]))
        """
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = [(*p.communicate(timeout=120), p.returncode) for p in procs]
    assert [rc for _, _, rc in results] == [0, 0, 0], [err for _, err, _ in results]
    urls = {out.strip().splitlines()[-1] for out, _, _ in results}
    assert len(urls) == 1
    with psycopg.connect(urls.pop()) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = 'vectorfill'").fetchone() == (1,)


@pytest.mark.slow
def test_stale_pid_file_whose_pid_was_reused_does_not_block_start(data_dir: Path):
    pgembedded.start(data_dir)
    pid_file = data_dir / "postmaster.pid"
    lines = pid_file.read_text()
    pgembedded.stop(data_dir)
    with subprocess.Popen(["sleep", "60"]) as other:  # as after a reboot: the pid is taken
        try:
            pid_file.write_text(lines.replace(lines.split("\n", 1)[0], str(other.pid), 1))
            assert not pgembedded.status(data_dir).running

            url = pgembedded.start(data_dir)

            with psycopg.connect(url) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        finally:
            other.kill()


def test_non_postgres_directory_is_refused_with_a_config_error(data_dir: Path):
    data_dir.mkdir()
    (data_dir / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a Postgres data directory"):
        pgembedded.start(data_dir)
