"""`python -m vectorfill.local.embeddings_server` serves in a process of its own, with its key
from the environment (the OpenAI contract itself: test_embeddings_server.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import httpx
import numpy as np
import openai

from fake_provider import wait_until_healthy
from vectorfill.local.embeddings_server import expected_vector

KEY = "sk-test-server"


# ---------------------------------------------------------------- encoders and wiring


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_python_m_vectorfill_server_serves_fake_embed_with_a_key_from_the_environment():
    port = _free_port()
    env = {**os.environ, "VF_TEST_KEY": "sk-from-env"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vectorfill.local.embeddings_server",
            "--model",
            "fake-embed",
            "--port",
            str(port),
            "--api-key-env",
            "VF_TEST_KEY",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, proc, timeout=20)
        with openai.OpenAI(base_url=url + "/v1", api_key="sk-from-env", max_retries=0) as c:
            result = c.embeddings.create(model="fake-embed", input="from a process")
        np.testing.assert_array_equal(
            np.asarray(result.data[0].embedding, np.float32), expected_vector("from a process", 1536)
        )
        assert httpx.post(url + "/v1/embeddings", json={"model": "fake-embed", "input": "x"}).status_code == 401
    finally:
        proc.terminate()
        output = proc.communicate(timeout=10)[0].decode()
    assert "sk-from-env" not in output
    assert "fake-embed" in output
