"""The local Prefect server: one per machine (per ``VECTORFILL_HOME``), started in the
background on first need and kept across commands.

Every command that needs the Prefect API (``backfill``, ``runs``, ``serve``, ``demo``) calls
:func:`ensure` when ``PREFECT_API_URL`` is not set. The first starts Prefect's own server
(``prefect server start``, in a session of its own, so the end of the command or Ctrl-C in
its terminal does not reach it); every later one finds it through its state file and uses
it, so that each run costs no server start-up and every run, from the CLI or from
``vectorfill serve``, lands in one history. ``vectorfill stop`` calls :func:`stop`; the
server also stops by itself after hours unused (:mod:`vectorfill.orchestration.prefect_server`),
and runs only the Prefect services vectorfill uses (:data:`~vectorfill.orchestration.settings.LOCAL_SERVER_SERVICES`).

Its database
------------
Postgres ``<database>_prefect`` beside vectorfill's own (the embedded cluster by default),
created on first use, as ``vectorfill serve`` always did. When the user's role may not
create it (``CREATEDB`` not granted) and nobody created it, the server keeps its history in
Prefect's SQLite file ``$VECTORFILL_HOME/prefect.db`` instead, and says so once, with how to
move to Postgres (create the database, or point ``PREFECT_API_URL`` at a server). Refusing
to run would turn a missing grant, unrelated to embedding, into a failed backfill, where
before this server existed every backfill ran on SQLite anyway. Any other database error
(the server down, a wrong password) is raised: the backfill would fail on it just after.

State and locking
-----------------
``$VECTORFILL_HOME/prefect-local.json`` holds the server's pid, its start time, port, API URL
and database name (never a password). A server counts as running when that pid is alive,
started at that time (a reused pid is not mistaken for it), and ``/api/health`` answers.
:func:`ensure` checks that first without a lock (the common case costs a file read and one
local HTTP request); otherwise it takes the exclusive lock ``prefect-local.lock`` (fasteners,
plus a thread lock, as :mod:`vectorfill.local.pgembedded` does), checks again and starts the
server, so that commands racing to start it get one server. The lock is the kernel's and
dies with its holder. A state file whose process is gone (killed, a reboot) is stale and
ignored; a process that no longer answers is stopped and replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from vectorfill.errors import INSUFFICIENT_PRIVILEGE, ConfigError, DatabaseError
from vectorfill.local import pgembedded
from vectorfill.local.pgembedded import default_data_dir
from vectorfill.orchestration.prefect_database import ensure_prefect_database, prefect_database_url
from vectorfill.orchestration.settings import LOCAL_SERVER_SERVICES, PREFECT_DEFAULTS

__all__ = ["DEFAULT_PORT", "LocalServer", "ensure", "recorded", "running", "state_path", "stop", "used_path"]

DEFAULT_PORT = 4200
"""Prefect's usual port: taken when free, so that the UI's address stays the same."""

STATE_FILE = "prefect-local.json"
LOCK_FILE = "prefect-local.lock"
LOG_FILE = "prefect-server.log"
USED_FILE = "prefect-local.used"
"""Touched by every command that uses the server: the idle stop's clock
(:mod:`vectorfill.orchestration.prefect_server`)."""
SQLITE_FILE = "prefect.db"
CA_FILE = "prefect-local-ca.pem"

_START_TIMEOUT_S = 300.0  # the first start migrates Prefect's database (~20 s on Postgres)
_LOCK_TIMEOUT_S = _START_TIMEOUT_S + 60
_UNHEALTHY_GRACE_S = 60.0  # a live server that does not answer for this long is replaced (a loaded machine is slow)
_STOP_TIMEOUT_S = 20.0

_thread_lock = threading.Lock()


@dataclass(frozen=True)
class LocalServer:
    """A running local Prefect server, as its state file describes it."""

    pid: int
    create_time: float
    """The process's start time (psutil): with the pid, tells it from a later process."""
    port: int
    api_url: str
    database: str
    """``postgres:<name>`` or ``sqlite:<path>``: where its history is kept."""
    embedded_pgdata: str | None = None
    """The embedded Postgres data directory holding that database, if it is there."""

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")


def home() -> Path:
    return default_data_dir().parent


def state_path() -> Path:
    return home() / STATE_FILE


def log_path() -> Path:
    return home() / LOG_FILE


def used_path() -> Path:
    return home() / USED_FILE


def healthy(api_url: str, timeout: float = 5.0) -> bool:
    import httpx

    try:
        return httpx.get(f"{api_url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def use(server: LocalServer) -> str:
    return use_address(server.api_url)


def use_address(api_url: str) -> str:
    """Point this process's Prefect client at ``server``: ``PREFECT_API_URL``, and a
    one-certificate CA file as ``PREFECT_API_SSL_CERT_FILE`` unless one is set.

    The local API is plain HTTP on the loopback: no TLS handshake ever happens, yet each
    Prefect client loads certifi's whole CA bundle into an SSL context when it is made, and
    a run makes about six of them (0.2-0.3 s of CPU per command, measured). A file of one
    certificate makes that free; it is never used to verify anything.
    """
    os.environ["PREFECT_API_URL"] = api_url
    with contextlib.suppress(OSError):
        used_path().touch()  # the idle stop counts from here
    if not os.environ.get("PREFECT_API_SSL_CERT_FILE"):
        path = home() / CA_FILE
        if not path.exists():
            _write_ca_file(path)
        os.environ["PREFECT_API_SSL_CERT_FILE"] = str(path)
    return api_url


def _write_ca_file(path: Path) -> None:
    import certifi

    end = "-----END CERTIFICATE-----"
    bundle = Path(certifi.where()).read_text()
    first = bundle[bundle.index("-----BEGIN CERTIFICATE-----") : bundle.index(end) + len(end)]
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(first + "\n")
    tmp.replace(path)


def running() -> LocalServer | None:
    """The local server if it is running and answers; never starts anything, takes no lock."""
    server = _recorded()
    if server is None or not _alive(server):
        return None
    return server if healthy(server.api_url) else None


def ensure(
    db_url: str | None,
    *,
    port: int | None = None,
    announce: Callable[[str], object] = print,
    on_address: Callable[[str], object] | None = None,
) -> LocalServer:
    """The running local server, started now if none is (its database beside ``db_url``).

    ``port`` is used only when the server is started here (default: 4200 if free, else any
    free port). Safe to call from several processes at once: one server is started.
    ``on_address`` is told the API URL of a server started here as soon as it is chosen,
    before the server answers (the caller can prepare meanwhile).
    """
    server = running()
    if server is not None:
        return server
    with _exclusive():
        server = _recorded()
        if server is not None and _alive(server):
            if _wait_healthy(server.api_url, _UNHEALTHY_GRACE_S):
                return server
            announce(f"The local Prefect server (pid {server.pid}) stopped answering: restarting it")
            _terminate(server.pid)
        if db_url is None:
            raise ConfigError(
                "the local Prefect server is not running and no database was given to keep its history: "
                "pass --db, set VECTORFILL_DATABASE_URL, or set PREFECT_API_URL"
            )
        return _start(db_url, port, announce, on_address)


def stop() -> LocalServer | None:
    """Stop the local server (and any process it started); returns it, or None if none ran."""
    path = state_path()
    if not path.parent.is_dir():
        return None
    with _exclusive():
        server = _recorded()
        if server is None:
            return None
        stopped = server if _alive(server) else None
        if stopped is not None:
            _terminate(server.pid)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return stopped


# --- internals -------------------------------------------------------------------------------


def recorded() -> LocalServer | None:
    """The server the state file describes, running or not (None without a state file)."""
    return _recorded()


def _recorded() -> LocalServer | None:
    try:
        data = json.loads(state_path().read_text())
        return LocalServer(**data)
    except (OSError, ValueError, TypeError):
        return None


def _alive(server: LocalServer) -> bool:
    """The recorded process still runs (same pid *and* start time: pids are reused)."""
    import psutil

    try:
        proc = psutil.Process(server.pid)
        return proc.status() != psutil.STATUS_ZOMBIE and abs(proc.create_time() - server.create_time) < 1.0
    except psutil.Error:
        return False


def _wait_healthy(api_url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not healthy(api_url):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


@contextlib.contextmanager
def _exclusive() -> Iterator[None]:
    """Hold ``prefect-local.lock`` (and the thread lock): one start or stop at a time."""
    import fasteners

    where = home()
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create {where}: {exc.strerror}; set VECTORFILL_HOME to a writable directory"
        ) from None
    lock = fasteners.InterProcessLock(str(where / LOCK_FILE))
    message = (
        f"another vectorfill process has been starting or stopping the local Prefect server for over "
        f"{_LOCK_TIMEOUT_S:.0f} s; see {log_path()}"
    )
    if not _thread_lock.acquire(timeout=_LOCK_TIMEOUT_S):
        raise ConfigError(message)
    try:
        if not lock.acquire(blocking=True, timeout=_LOCK_TIMEOUT_S):
            raise ConfigError(message)
        try:
            yield
        finally:
            lock.release()
    finally:
        _thread_lock.release()


def _free(port: int) -> bool:
    """Nothing listens on ``port`` (connections of a stopped server in TIME_WAIT do not count:
    the server binds with SO_REUSEADDR too)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_port(port: int | None) -> int:
    if port is not None:
        if not _free(port):
            raise _port_taken(port)
        return port
    return DEFAULT_PORT if _free(DEFAULT_PORT) else _any_free_port()


def _port_taken(port: int) -> ConfigError:
    return ConfigError(f"port {port} is taken: choose another for the local Prefect server (--port)")


def _any_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _process_tree(pid: int) -> list:
    """Process ``pid`` and all its descendants (psutil processes); [] when it is gone."""
    import psutil

    try:
        leader = psutil.Process(pid)
        return [leader, *leader.children(recursive=True)]
    except psutil.Error:
        return []


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` or one of its children listens on ``port`` (True when the
    system will not say: then an answer on the port is all there is to go by)."""
    import psutil

    for p in _process_tree(pid):
        try:
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in p.net_connections("tcp")):
                return True
        except psutil.AccessDenied:
            return True
        except psutil.Error:
            continue
    return False


def _database(db_url: str, announce: Callable[[str], object]) -> tuple[str, str, str | None]:
    """(SQLAlchemy URL, description, embedded data dir) of the server's database."""
    prefect_url, name = prefect_database_url(db_url)
    try:
        ensure_prefect_database(db_url, name)
    except DatabaseError as exc:
        if exc.sqlstate != INSUFFICIENT_PRIVILEGE:
            raise
        path = home() / SQLITE_FILE
        announce(
            f"Your database role may not create {name!r}: the local Prefect server keeps its run history in "
            f"{path} (SQLite) instead. To keep it in Postgres, create {name!r} (or grant CREATEDB), "
            "run `vectorfill stop`, and run again; or set PREFECT_API_URL to a Prefect server you run."
        )
        return f"sqlite+aiosqlite:///{path}", f"sqlite:{path}", None
    return prefect_url, f"postgres:{name}", _embedded_pgdata(db_url)


def _embedded_pgdata(db_url: str) -> str | None:
    """The embedded Postgres data directory if ``db_url`` is a database of that cluster."""
    from urllib.parse import parse_qs, urlsplit

    st = pgembedded.status()
    if st.url is None:
        return None

    def socket_of(url: str) -> list[str]:
        return parse_qs(urlsplit(url).query).get("host", [])

    return str(st.data_dir) if socket_of(db_url) and socket_of(db_url) == socket_of(st.url) else None


class _PortTaken(Exception):
    """Another process took the port between our check and the server's bind."""


def _start(
    db_url: str, port: int | None, announce: Callable[[str], object], on_address: Callable[[str], object] | None
) -> LocalServer:
    database_url, database, pgdata = _database(db_url, announce)
    try:
        return _launch(database_url, database, pgdata, _pick_port(port), announce, on_address)
    except _PortTaken:
        if port is not None:
            raise _port_taken(port) from None
        # another home's server (or anything else) took the default port meanwhile: any free one
        return _launch(database_url, database, pgdata, _any_free_port(), announce, on_address)


def _launch(
    database_url: str,
    database: str,
    pgdata: str | None,
    port: int,
    announce: Callable[[str], object],
    on_address: Callable[[str], object] | None = None,
) -> LocalServer:
    import psutil

    api_url = f"http://127.0.0.1:{port}/api"
    log = log_path()
    env = dict(os.environ)
    for key, value in PREFECT_DEFAULTS.items():  # the task-run recorder's batch sizes, no analytics
        if key.startswith("PREFECT_SERVER_") and "EPHEMERAL" not in key:
            env.setdefault(key, value)
    for key, value in LOCAL_SERVER_SERVICES.items():  # only the services vectorfill uses
        env.setdefault(key, value)
    env.update(
        # on for the server that keeps history (off only for Prefect's temporary servers:
        # see runtime.prefect_defaults): the UI's event pages and automations read them
        PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED="true",
        PREFECT_API_DATABASE_CONNECTION_URL=database_url,
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_UI_API_URL=api_url,
    )
    env.pop("PREFECT_API_URL", None)
    started = time.monotonic()
    with open(log, "ab") as out:
        out.write(f"\n--- vectorfill: starting Prefect's server on port {port}, database {database}\n".encode())
        out.flush()
        process = subprocess.Popen(
            # Prefect's `prefect server start`, with vectorfill's idle stop beside it
            [sys.executable, "-m", "vectorfill.orchestration.prefect_server", "prefect", "server", "start"]
            + ["--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session: Ctrl-C in this terminal does not reach it
            close_fds=True,
        )
    if on_address is not None:
        on_address(api_url)
    deadline = started + _START_TIMEOUT_S
    # healthy, and ours: a server of another VECTORFILL_HOME that took the port first answers too
    while not (healthy(api_url, timeout=1.0) and _listens(process.pid, port)):
        if process.poll() is not None:
            if not _free(port):
                raise _PortTaken(port)
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-5:])
            raise DatabaseError(f"the local Prefect server exited with status {process.returncode}: {tail}")
        if time.monotonic() > deadline:
            _terminate(process.pid)
            raise ConfigError(f"the local Prefect server did not answer within {_START_TIMEOUT_S:.0f} s; see {log}")
        time.sleep(0.25)
    server = LocalServer(
        pid=process.pid,
        create_time=psutil.Process(process.pid).create_time(),
        port=port,
        api_url=api_url,
        database=database,
        embedded_pgdata=pgdata,
    )
    tmp = state_path().with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(server)))
    tmp.replace(state_path())
    announce(
        f"Started the local Prefect server in {time.monotonic() - started:.0f} s; Prefect UI: {server.ui_url} "
        f"(it keeps running for later commands; `vectorfill stop` stops it)"
    )
    return server


def _terminate(pid: int) -> None:
    """Stop the process ``pid`` (a session leader) and everything in its session: SIGTERM,
    then SIGKILL after :data:`_STOP_TIMEOUT_S`. Leaves no process behind."""
    import psutil

    procs = _process_tree(pid)
    if not procs:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)  # anything else left in its process group
        _, alive = psutil.wait_procs(procs, timeout=_STOP_TIMEOUT_S if sig == signal.SIGTERM else 5)
        if not alive:
            break
    # reap our own child, if we started it in this process
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
