"""The fake provider runs as a process of its own and reports its counts (its behaviour in
this process: test_fake_provider.py, test_fake_provider_parts.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from fake_provider import wait_until_healthy

# ---------------------------------------------------------------- as a process


def test_runs_as_its_own_process_with_stats():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = Path(__file__).parents[1] / "fake_provider.py"
    env = {**os.environ, "FAKE_KEY": "sk-proc"}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(script),
            "--port",
            str(port),
            "--dimensions",
            "16",
            "--latency-ms",
            "1",
            "--rpm",
            "600",
            "--tpm",
            "100000",
            "--api-key-env",
            "FAKE_KEY",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, proc, timeout=20)
        headers = {"Authorization": "Bearer sk-proc"}
        response = httpx.post(
            url + "/v1/embeddings", json={"model": "fake-embed", "input": ["p", "q"]}, headers=headers
        )
        assert response.status_code == 200
        assert len(response.json()["data"][0]["embedding"]) == 16
        assert response.headers["x-ratelimit-limit-requests"] == "600"
        stats = httpx.get(url + "/_fake/stats").json()
        assert stats["requests"] == 1 and stats["embedded"] == 2 and stats["tokens_billed"] == 2
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
