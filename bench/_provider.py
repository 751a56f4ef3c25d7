"""The fake provider (``tests/fake_provider.py``) as a process of its own, for the benches.

One class for every bench that needs it: started on a free port (or a given one, so that
a restart keeps its URL), waited for until ``/health`` answers, stopped with SIGTERM (then
SIGKILL), and restartable, so that each phase of a bench meets full rate-limit buckets::

    with FakeProvider(args, log_dir) as provider:   # args: dimensions, latency_ms, rpm, tpm
        url = provider.base_url                      # http://127.0.0.1:<port>/v1
        provider.restart()
        provider.stats()                             # its /_fake/stats

Each process's peak resident set (``VmHWM``) is kept in :attr:`peak_rss_kib` when it stops:
the provider keeps every text it was sent, so it grows with the rows of a run.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from pathlib import Path

__all__ = ["FakeProvider", "free_port", "read_vm_hwm"]

REPO = Path(__file__).resolve().parents[1]
FAKE_PROVIDER = REPO / "tests" / "fake_provider.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_vm_hwm(pid: int) -> int | None:
    """Peak resident set of a live process, in KiB (Linux ``/proc``), or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class FakeProvider:
    """The fake provider as its own process, on a fixed port (restartable).

    ``args`` needs ``dimensions`` and ``latency_ms``; ``rpm``, ``tpm`` and ``model`` are passed
    on when it has them and they are set (the provider's budgets, none otherwise).
    """

    def __init__(self, args: argparse.Namespace, log_dir: Path, *, port: int | None = None) -> None:
        self.args = args
        self.port = port or free_port()
        self.log_path = Path(log_dir) / "fake_provider.log"
        self.proc: subprocess.Popen | None = None
        self.peak_rss_kib: list[int] = []  # VmHWM of each process, at its stop

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (``.../v1``)."""
        return f"{self.url}/v1"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        a = self.args
        cmd = [
            sys.executable,
            str(FAKE_PROVIDER),
            "--port",
            str(self.port),
            "--dimensions",
            str(a.dimensions),
            "--latency-ms",
            str(a.latency_ms),
        ]
        for name in ("rpm", "tpm", "model"):
            if getattr(a, name, None):
                cmd += [f"--{name}", str(getattr(a, name))]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=REPO)
        if str(REPO / "tests") not in sys.path:
            sys.path.insert(0, str(REPO / "tests"))
        from fake_provider import wait_until_healthy

        try:
            wait_until_healthy(self.url, self.proc)
        except RuntimeError as exc:
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise SystemExit(f"the fake provider did not start ({exc}):\n{tail}") from exc

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        hwm = read_vm_hwm(proc.pid)
        if hwm:
            self.peak_rss_kib.append(hwm)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def stats(self) -> dict:
        """The provider's own counts (``GET /_fake/stats``)."""
        import httpx

        return httpx.get(f"{self.url}/_fake/stats", timeout=5).json()

    def __enter__(self) -> FakeProvider:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
