"""The ``vectorfill`` command. Thin: parse options, call the library, print results.

Every :class:`vectorfill.errors.VectorfillError` is printed as one clear line (exit 1);
nothing here prints a secret. Exit codes: 0 all done, 1 could not proceed, 3 a backfill
finished with failed rows, 130/143 interrupted.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
import time

import typer
from rich.console import Console
from rich.table import Table

from vectorfill.config import DATABASE_URL_ENV, JobSettings, unescape_template
from vectorfill.errors import RowsFailed, VectorfillError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Keep pgvector embeddings in step with the text in Postgres (Prefect + any OpenAI-compatible endpoint).",
)
job_app = typer.Typer(
    no_args_is_help=True, help="Create, list and drop jobs; change their model (blue/green versions)."
)
db_app = typer.Typer(no_args_is_help=True, help="The embedded Postgres, for users without their own.")
app.add_typer(job_app, name="job")
app.add_typer(db_app, name="db")

out = Console()
err = Console(stderr=True)

DbOpt = typer.Option(None, "--db", help=f"Postgres URL (default: ${DATABASE_URL_ENV}, else the embedded Postgres)")


def _note(message: str) -> None:
    err.print(f"[dim]{message}[/]")


def _url(db: str | None) -> str:
    from vectorfill.database import resolve_database_url

    return resolve_database_url(db, announce=_note)


def _conn(db: str | None):
    from vectorfill.storage.db import connect

    return connect(_url(db))


# ------------------------------------------------------------------ schema
@app.command()
def migrate(
    db: str | None = DbOpt,
    downgrade: str | None = typer.Option(None, help="Downgrade to this revision ('base' removes everything)"),
) -> None:
    """Create or upgrade vectorfill's own schema (Alembic)."""
    from vectorfill.storage.db import migrate as run

    rev = run(_url(db), downgrade or "head", downgrade=bool(downgrade), report=out.print)
    out.print(f"vectorfill schema at revision {rev or 'none (removed)'}")


# ------------------------------------------------------------------ jobs
@job_app.command("create")
def job_create(
    name: str = typer.Argument(..., help="Job name: lowercase letters, digits, underscores"),
    table: str = typer.Option(..., help="Source table, TABLE or SCHEMA.TABLE"),
    text: list[str] | None = typer.Option(None, help="Column(s) to embed; several are joined by a blank line"),
    template: str | None = typer.Option(None, help='Text template, e.g. "{title}\\n\\n{body}"'),
    id: list[str] | None = typer.Option(None, "--id", help="Key column(s); default: the primary key"),
    model: str = typer.Option(..., help="Embedding model name"),
    base_url: str = typer.Option(..., help="Endpoint base URL, e.g. https://api.openai.com/v1"),
    api_key_env: str | None = typer.Option(None, help="NAME of the env variable holding the API key"),
    dimensions: int | None = typer.Option(None, help="Pass `dimensions` to models that support it"),
    max_inputs: int = typer.Option(2048, help="Most inputs per request"),
    max_request_tokens: int = typer.Option(300_000, help="Most tokens per request"),
    encoding_format: str = typer.Option("base64", help="base64 or float (for servers without base64)"),
    concurrency: int = typer.Option(4, help="Requests in flight per run"),
    timeout: float = typer.Option(60.0, help="Seconds to wait for one response"),
    max_input_tokens: int | None = typer.Option(None, help="Most tokens per input (default: the model's known limit)"),
    on_too_long: str = typer.Option("truncate", help="truncate (token-exact where known) or fail"),
    rpm: int | None = typer.Option(None, help="Requests-per-minute budget for this run's endpoint"),
    tpm: int | None = typer.Option(None, help="Tokens-per-minute budget (counted before sending)"),
    price: list[str] | None = typer.Option(
        None, help="MODEL=USD per million tokens, for estimates and summaries (over the built-in table)"
    ),
    prune_on_switch: bool = typer.Option(False, help="Drop a model's vectors as soon as a new model replaces them"),
    api_key_header: str = typer.Option("bearer", help="bearer (Authorization: Bearer KEY) or api-key (Azure OpenAI)"),
    api_version: str | None = typer.Option(None, help="api-version query parameter (Azure OpenAI, e.g. 2024-02-01)"),
    no_check: bool = typer.Option(False, "--no-check", help="Do not send the check request (offline setups)"),
    storage: str | None = typer.Option(
        None, help="auto (halfvec above 2,000 dims, so HNSW can index them), vector (float32) or halfvec (float16)"
    ),
    chunker: str | None = typer.Option(None, help="none (whole text, the default), tokens or recursive"),
    chunk_size: int | None = typer.Option(None, help="Most tokens per chunk, template included (default 400)"),
    chunk_overlap: int | None = typer.Option(None, help="Tokens a chunk repeats from the one before (default 0)"),
    chunk_template: str | None = typer.Option(None, help='Each chunk\'s input, e.g. "{title}: {chunk}"'),
    max_chunks: int | None = typer.Option(None, help="A row with more chunks fails (default 10,000)"),
    batch: bool = typer.Option(
        False, "--batch", help="Backfill through the provider's Batch API by default (half price, within 24 h)"
    ),
    batch_price: list[str] | None = typer.Option(
        None, help="MODEL=USD per million tokens through the Batch API (default: half OpenAI's online price)"
    ),
    update_trigger: str = typer.Option(
        "statement", help="statement (cheap bulk updates) or row (free updates of other columns)"
    ),
    db: str | None = DbOpt,
) -> None:
    """Register a job: install triggers on the source table and queue its rows.

    Unless --no-check, one small request checks the endpoint first (see `vectorfill check`);
    the job is created only if a backfill would work."""
    from pydantic import ValidationError

    from vectorfill.errors import ConfigError
    from vectorfill.jobs.registry import create_job

    if template and text:
        raise ConfigError("give --text or --template, not both", job=name)
    template = unescape_template(template) if template else template
    try:
        settings = JobSettings(
            max_inputs=max_inputs,
            max_request_tokens=max_request_tokens,
            encoding_format=encoding_format,
            concurrency=concurrency,
            timeout_s=timeout,
            max_input_tokens=max_input_tokens,
            on_too_long=on_too_long,
            rpm=rpm,
            tpm=tpm,
            prices=_prices(price or [], name),
            prune_on_switch=prune_on_switch,
            api_key_header=api_key_header,
            api_version=api_version,
            batch=batch,
            batch_prices=_prices(batch_price or [], name),
            update_trigger=update_trigger,
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid setting: {problems}", job=name) from None
    url = _url(db)
    with _conn(url) as conn:
        job = create_job(
            conn,
            name=name,
            table=table,
            text_columns=text,
            template=template,
            key_columns=id,
            model=model,
            base_url=base_url,
            api_key_env=api_key_env,
            dimensions=dimensions,
            settings=settings,
            storage=storage or "auto",
            chunking=_chunking(None, name, chunker, chunk_size, chunk_overlap, chunk_template, max_chunks),
        )
        if not no_check:  # before the commit: a job that cannot work is not created
            _check_before(
                name,
                base_url=base_url,
                model=model,
                api_key_env=api_key_env,
                dimensions=dimensions,
                settings=settings,
                url=url,
            )
        from vectorfill.jobs.registry import job_status

        st = job_status(conn, name)
    out.print(
        f"job [bold]{job.name}[/]: {st.pending:,} rows of {job.source} queued for {model}; "
        f"vectors will be readable in {st.target}. Next: `vectorfill backfill {job.name}`"
    )


def _chunking(base, job: str, chunker, size, overlap, template, max_chunks):
    """Chunk settings: ``base`` (the active version's, or the defaults) with the options given."""
    from pydantic import ValidationError

    from vectorfill.config import ChunkSettings
    from vectorfill.errors import ConfigError

    given = {
        k: v
        for k, v in dict(chunker=chunker, size=size, overlap=overlap, template=template, max_chunks=max_chunks).items()
        if v is not None
    }
    if "template" in given and "\\" in given["template"]:
        given["template"] = given["template"].encode().decode("unicode_escape")
    try:
        return ChunkSettings(**{**(base.model_dump() if base else {}), **given})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid chunk option: {problems}", job=job) from None


def _prices(items: list[str], job: str) -> dict[str, float]:
    from vectorfill.errors import ConfigError

    prices = {}
    for item in items:
        model, sep, usd = item.rpartition("=")
        try:
            prices[model] = float(usd)
        except ValueError:
            sep = ""
        if not sep or not model:
            raise ConfigError(
                f"--price {item!r}: write MODEL=USD_PER_MILLION_TOKENS, e.g. text-embedding-3-small=0.02", job=job
            )
    return prices


@job_app.command("list")
def job_list(db: str | None = DbOpt) -> None:
    """List jobs."""
    from vectorfill.jobs.registry import list_jobs

    with _conn(db) as conn:
        for name in list_jobs(conn):
            out.print(name)


@job_app.command("drop")
def job_drop(name: str, db: str | None = DbOpt) -> None:
    """Remove a job: its triggers, queue and vectors (the source rows stay)."""
    from vectorfill.jobs.registry import drop_job

    with _conn(db) as conn:
        drop_job(conn, name)
    out.print(f"job {name} dropped")


# ------------------------------------------------------------------ model changes
@job_app.command("set-model")
def job_set_model(
    name: str,
    model: str = typer.Option(..., help="The new embedding model"),
    dimensions: int | None = typer.Option(None, help="Pass `dimensions` to models that support it"),
    base_url: str | None = typer.Option(None, help="Endpoint base URL (default: the active version's)"),
    api_key_env: str | None = typer.Option(
        None, help="NAME of the env variable holding the key (default: the active version's; '' for none)"
    ),
    no_check: bool = typer.Option(False, "--no-check", help="Do not send the check request (offline setups)"),
    storage: str | None = typer.Option(
        None, help="auto (halfvec above 2,000 dims, so HNSW can index them), vector (float32) or halfvec (float16)"
    ),
    chunker: str | None = typer.Option(None, help="none (whole text, the default), tokens or recursive"),
    chunk_size: int | None = typer.Option(None, help="Most tokens per chunk, template included (default 400)"),
    chunk_overlap: int | None = typer.Option(None, help="Tokens a chunk repeats from the one before (default 0)"),
    chunk_template: str | None = typer.Option(None, help='Each chunk\'s input, e.g. "{title}: {chunk}"'),
    max_chunks: int | None = typer.Option(None, help="A row with more chunks fails (default 10,000)"),
    batch: bool = typer.Option(
        False, "--batch", help="Make the Batch API the job's default mode, so the re-embed runs at half price"
    ),
    db: str | None = DbOpt,
) -> None:
    """Start re-embedding JOB with another model (or the same model with other storage or
    chunking options), beside the vectors readers use now.

    Searches keep using the active version until the new one is complete; the backfill
    that completes it switches the job's view over in one transaction. Chunk options not
    given keep the active version's.
    """
    from vectorfill.jobs.registry import load_job
    from vectorfill.jobs.versions import _UNSET, set_model, version_status
    from vectorfill.orchestration.events import emit_model_changed

    url = _url(db)
    with _conn(url) as conn:
        if batch:  # before the version (and its event): the triggered re-embed reads the setting
            from vectorfill.jobs.batches import set_batch_mode

            set_batch_mode(conn, name, True)
            conn.commit()
        active = load_job(conn, name).active
        version = set_model(
            conn,
            name,
            model=model,
            dimensions=dimensions,
            base_url=base_url,
            api_key_env=_UNSET if api_key_env is None else api_key_env,
            storage=storage,
            chunking=_chunking(
                active.chunking if active else None,
                name,
                chunker,
                chunk_size,
                chunk_overlap,
                chunk_template,
                max_chunks,
            ),
        )
        loaded = load_job(conn, name)
        if not no_check:  # before the commit: a model that cannot work starts no version
            _check_before(
                name,
                base_url=version.base_url,
                model=version.model,
                api_key_env=version.api_key_env,
                dimensions=version.dimensions,
                settings=loaded.settings,
                url=url,
                version=version.version,
            )
        queued = version_status(conn, loaded, version).pending
    out.print(
        f"job [bold]{name}[/]: version {version.version} ({model}) is filling, {queued:,} rows queued; "
        f"vectorfill.{name} keeps showing the current version until it is complete."
    )
    sent = emit_model_changed(name, version)
    if sent:
        out.print(
            f"Event vectorfill.model.changed sent to {sent}: a served re-embed deployment (or `serve --sync`) starts it."
        )
    else:
        out.print(f"Next: `vectorfill estimate {name}` for its cost, then `vectorfill backfill {name}`.")


@job_app.command("versions")
def job_versions(name: str, json_out: bool = typer.Option(False, "--json"), db: str | None = DbOpt) -> None:
    """Show JOB's versions: model, dimensions, rows done / total, state."""
    from vectorfill.jobs.versions import list_versions

    with _conn(db) as conn:
        rows = list_versions(conn, name)
    if json_out:
        out.print_json(json.dumps([r.as_dict() for r in rows]))
        return
    table = Table("version", "model", "dims", "done / total", "pending", "failed", "state", "since")
    for r in rows:
        since = r.activated_at or r.created_at
        table.add_row(
            str(r.version),
            r.model,
            str(r.dimensions or "?"),
            f"{r.embedded:,} / {r.total:,}",
            f"{r.pending:,}",
            f"{r.failed:,}",
            r.state,
            since.isoformat(timespec="seconds") if since else "",
        )
    out.print(table)


@job_app.command("switch")
def job_switch(
    name: str,
    force: bool = typer.Option(False, "--force", help="Switch even with rows still missing"),
    db: str | None = DbOpt,
) -> None:
    """Make JOB's new version the one readers see now (normally a backfill does it when complete)."""
    from vectorfill.jobs.versions import switch

    with _conn(db) as conn:
        version = switch(conn, name, force=force)
    out.print(f"job {name}: vectorfill.{name} now shows version {version.version} ({version.model})")


@job_app.command("pause")
def job_pause(name: str, db: str | None = DbOpt) -> None:
    """Pause JOB's re-embed: backfills skip the new version (its queue stays in step)."""
    from vectorfill.jobs.versions import pause

    with _conn(db) as conn:
        version = pause(conn, name)
    out.print(f"job {name}: version {version.version} ({version.model}) paused; `vectorfill job resume {name}`")


@job_app.command("resume")
def job_resume(name: str, db: str | None = DbOpt) -> None:
    """Resume JOB's paused re-embed."""
    from vectorfill.jobs.versions import resume

    with _conn(db) as conn:
        version = resume(conn, name)
    out.print(f"job {name}: version {version.version} ({version.model}) filling again")


@job_app.command("abandon")
def job_abandon(name: str, db: str | None = DbOpt) -> None:
    """Drop JOB's new (filling or paused) version and its vectors; the active one stays."""
    from vectorfill.jobs.versions import abandon

    with _conn(db) as conn:
        version = abandon(conn, name)
    out.print(f"job {name}: version {version.version} ({version.model}) abandoned and dropped")


@job_app.command("prune")
def job_prune(name: str, db: str | None = DbOpt) -> None:
    """Drop JOB's retired versions (the vectors of models it no longer uses)."""
    from vectorfill.jobs.versions import prune

    with _conn(db) as conn:
        dropped = prune(conn, name)
    out.print(
        f"job {name}: dropped version {', '.join(map(str, dropped))}"
        if dropped
        else f"job {name} has no retired version"
    )


@app.command()
def estimate(
    job: str,
    model: str | None = typer.Option(None, help="Estimate re-embedding every row with this model"),
    price: float | None = typer.Option(None, help="USD per million tokens (default: the price table)"),
    batch_price: float | None = typer.Option(
        None, help="USD per million tokens through the Batch API (default: half the online price for OpenAI's)"
    ),
    json_out: bool = typer.Option(False, "--json"),
    db: str | None = DbOpt,
) -> None:
    """Count the tokens the next backfill (or a re-embed with --model) would send, and their cost
    online and through the Batch API.

    Nothing is claimed or sent: rows are read and counted with the run's own tokenizer.
    """
    from vectorfill.jobs.estimate import estimate as run

    with _conn(db) as conn:
        rows = run(conn, job, model=model, price=price, batch_price=batch_price)
    if json_out:
        out.print_json(json.dumps([r.as_dict() for r in rows]))
        return
    table = Table(
        "version",
        "model",
        "rows to send",
        "tokens",
        "USD / 1M",
        "cost USD",
        "batch USD / 1M",
        "batch cost USD",
        "skipped",
    )
    for r in rows:
        skipped = f"{r.unchanged:,} unchanged, {r.empty:,} empty" + (f", {r.too_long:,} too long" if r.too_long else "")
        skipped += f", {r.failing:,} too many chunks" if r.failing else ""
        table.add_row(
            str(r.version) if r.version is not None else "(new)",
            r.model,
            f"{r.rows:,}" + (f" ({r.chunks:,} chunks)" if r.chunks != r.rows else ""),
            f"{r.tokens:,}" + ("" if r.exact else " (est.)"),
            "?" if r.price_per_million is None else f"{r.price_per_million:g}",
            "unknown" if r.cost_usd is None else f"{r.cost_usd:,.4f}",
            "?" if r.batch_price_per_million is None else f"{r.batch_price_per_million:g}",
            "unknown" if r.batch_cost_usd is None else f"{r.batch_cost_usd:,.4f}",
            skipped,
        )
    out.print(table)
    if any(r.cost_usd is None for r in rows):
        out.print("No price known for a model here: pass --price USD_PER_1M_TOKENS.")
    if any(not r.exact for r in rows):
        out.print("(est.): this model's tokenizer is not known here; tokens are over-counted at 1 per 3 bytes.")


# ------------------------------------------------------------------ running
@app.command()
def backfill(
    job: str,
    max_rows: int | None = typer.Option(None, help="Stop after this many rows"),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's task logs"),
    workers: int = typer.Option(1, "--workers", help="Flow runs side by side, all claiming from the job's queue"),
    pool: str | None = typer.Option(
        None, "--pool", help="Run the --workers flow runs on this Prefect work pool (its workers), not here"
    ),
    batch: bool | None = typer.Option(
        None,
        "--batch/--online",
        help="Submit the rows to the provider's Batch API (half price, within 24 h), or embed them now "
        "(default: the job's setting, online unless set with `job create --batch`)",
    ),
    wait: bool | None = typer.Option(
        None,
        "--wait/--no-wait",
        help="With --pool: wait for the flow runs to end (the default); with --batch: wait for the batches "
        "and store their vectors (by default it returns once they are submitted)",
    ),
    poll: float = typer.Option(30.0, help="With --batch --wait: seconds between polls of the batches"),
    db: str | None = DbOpt,
) -> None:
    """Embed every pending row of JOB through the Prefect backfill flow (batches submitted
    earlier are collected first)."""
    from vectorfill.orchestration.api import use_api
    from vectorfill.orchestration.runtime import prefect_defaults, run_backfill

    url = _url(db)
    use_api(url, announce=_note)
    prefect_defaults(verbose=verbose)
    if pool is not None:
        pool_wait = True if wait is None else wait
        _backfill_on_pool(job, workers, pool, max_rows=max_rows, wait=pool_wait, json_out=json_out, db=db)
        return
    try:
        summary = run_backfill(
            url,
            job,
            max_rows=max_rows,
            progress=not json_out and not batch,
            console=err,
            workers=workers,
            batch=batch,
            wait=bool(wait),
            poll_s=poll,
        )
        failed = None
    except RowsFailed as exc:  # the run went through, but rows failed: summary, then exit 3
        summary, failed = exc.summary, exc
    if json_out:
        out.print_json(json.dumps(summary.as_dict()))
    else:
        _print_summary(summary)
    if failed is not None:
        raise failed
    if json_out:
        return
    from vectorfill.jobs.search import index_suggested

    with _conn(url) as conn:
        if index_suggested(conn, job):
            out.print(
                f"Tip: {job} has enough vectors for an HNSW index: `vectorfill index {job}` "
                "makes searches fast (it is built without blocking writes)."
            )


def _backfill_on_pool(job: str, workers: int, pool: str, *, max_rows, wait: bool, json_out: bool, db) -> None:
    from vectorfill.jobs.registry import job_status
    from vectorfill.orchestration.fanout import run_on_pool

    with _conn(db) as conn:
        job_status(conn, job)  # a clear error for a job that does not exist, before any flow run
    if not json_out:
        err.print(f"{workers} flow run(s) of {job} on work pool {pool}" + (", waiting for them" if wait else ""))
    runs = run_on_pool(job, workers, pool, max_rows=max_rows, wait=wait)
    with _conn(db) as conn:
        st = job_status(conn, job)
    if json_out:
        out.print_json(json.dumps({"flow_runs": [r.__dict__ for r in runs], "status": st.as_dict()}))
        return
    table = Table("flow run", "id", "state")
    for r in runs:
        table.add_row(r.name, r.flow_run_id, r.state)
    out.print(table)
    out.print(f"{job}: {st.embedded:,} embedded, {st.pending:,} pending, {st.failed:,} failed of {st.total:,} rows")


def _print_summary(s) -> None:
    table = Table(title=f"backfill {s.job}", show_header=False)
    for key, value in s.as_dict().items():
        if key != "job":
            table.add_row(key.replace("_", " "), f"{value:,}" if isinstance(value, int) else str(value))
    out.print(table)
    if s.failed_total:
        out.print(f"{s.failed_total} rows failed: `vectorfill failures {s.job}` lists them")
    if s.batches_open:
        out.print(
            f"{s.batches_open} batch(es) still running at the provider: `vectorfill batches {s.job}` shows them; "
            f"the next `vectorfill backfill {s.job}` collects them"
        )


@app.command()
def status(job: str, json_out: bool = typer.Option(False, "--json"), db: str | None = DbOpt) -> None:
    """Exact counts for JOB: total / embedded / pending / failed."""
    from vectorfill.jobs.registry import job_status, load_job
    from vectorfill.jobs.versions import version_status

    with _conn(db) as conn:
        st = job_status(conn, job)
        loaded = load_job(conn, job)  # a re-embed in progress gets counted too; no other version
        building = [version_status(conn, loaded, loaded.next)] if loaded.next else []
    if json_out:
        out.print_json(json.dumps({**st.as_dict(), "next": building[0].as_dict() if building else None}))
        return
    out.print(
        f"{st.job} (v{st.version}, {st.model}, {st.dimensions or '?'} dims) on {st.source}: "
        f"total {st.total:,}  embedded {st.embedded:,}  pending {st.pending:,}  failed {st.failed:,}  "
        f"-> {st.target}"
    )
    for v in building:
        out.print(
            f"  re-embed: v{v.version} ({v.model}) {v.state}, {v.embedded:,} of {v.total:,} done, "
            f"{v.pending:,} pending, {v.failed:,} failed; readers switch to it when complete"
        )


@app.command()
def failures(job: str, limit: int = typer.Option(50), db: str | None = DbOpt) -> None:
    """List JOB's failed rows with the reason."""
    from vectorfill.jobs.registry import list_failures

    with _conn(db) as conn:
        rows = list_failures(conn, job, limit)
    table = Table("row", "reason", "status", "attempts", "failed at", "message")
    for r in rows:
        table.add_row(
            json.dumps(r["row_key"]),
            r["reason"],
            str(r["status"] or ""),
            str(r["attempts"]),
            r["failed_at"].isoformat(timespec="seconds"),
            r["message"],
        )
    out.print(table if rows else f"no failed rows in {job}")


@app.command()
def retry(
    job: str,
    ids: list[str] | None = typer.Argument(None, help="Keys of the rows to retry ([1,2] for a composite key)"),
    all_rows: bool = typer.Option(False, "--all", help="Retry every failed row"),
    db: str | None = DbOpt,
) -> None:
    """Queue failed rows of JOB again (attempts reset): --all, or the rows named by key."""
    from vectorfill.errors import ConfigError
    from vectorfill.jobs.registry import retry_failures

    if bool(ids) == all_rows:
        raise ConfigError("name the rows to retry by key, or pass --all (not both)", job=job)
    with _conn(db) as conn:
        n = retry_failures(conn, job, None if all_rows else ids)
    out.print(f"{n} failed rows of {job} queued again; run `vectorfill backfill {job}`")


# ------------------------------------------------------------------ search
@app.command()
def search(
    job: str,
    query: str,
    k: int = typer.Option(10, "-k", help="How many hits"),
    per_row: bool = typer.Option(False, "--per-row", help="Chunked jobs: the best chunk of each row only"),
    db: str | None = DbOpt,
) -> None:
    """Embed QUERY with JOB's model and show the nearest rows (cosine distance); for a chunked
    job the nearest chunks, with their row ids."""
    from vectorfill.jobs.search import search as run

    with _conn(db) as conn:
        hits = run(conn, job, query, k, per_row=per_row)
    _print_hits(query, hits)


def _print_hits(query: str, hits) -> None:
    chunked = any(h.chunk_seq for h in hits) or any(h.chunk is not None and h.chunk != h.text for h in hits)
    table = Table("id", *(["chunk"] if chunked else []), "distance", "text", title=f"“{query}”")
    for h in hits:
        snippet = " ".join(((h.chunk if chunked else h.text) or h.text or "").split())[:100]
        table.add_row(str(h.id), *([str(h.chunk_seq)] if chunked else []), f"{h.distance:.4f}", snippet)
    out.print(table)


@app.command()
def index(
    job: str,
    memory: str | None = typer.Option(
        None, "--memory", help="maintenance_work_mem for the build, e.g. 2GB (default: the server's)"
    ),
    db: str | None = DbOpt,
) -> None:
    """Create an HNSW index (cosine) on JOB's vectors; search uses it."""
    from vectorfill.jobs.search import create_index

    started = time.monotonic()
    notices: list[str] = []
    name = create_index(_url(db), job, memory=memory, notices=notices)
    out.print(f"index {name} ready (built in {time.monotonic() - started:,.1f} s)")
    if any("maintenance_work_mem" in n for n in notices):
        out.print(
            "Tip: the graph outgrew maintenance_work_mem during the build (pgvector said so); "
            "a rebuild with --memory set higher (e.g. --memory 2GB) is much faster."
        )


# ------------------------------------------------------------------ checking the endpoint
@app.command()
def check(
    job: str,
    forget: bool = typer.Option(False, "--forget", help="Forget what was learnt about the endpoint first"),
    json_out: bool = typer.Option(False, "--json"),
    db: str | None = DbOpt,
) -> None:
    """Send one small request through JOB's real path (key, model, dimensions, encoding, two
    inputs) and say what works and what to change. Exit 0 only when a backfill would work.

    What the endpoint was found to accept (base64 or float, inputs and tokens per request)
    is remembered for every run; --forget starts over (after upgrading the server)."""
    from vectorfill.jobs.check import check_job

    reports = check_job(_url(db), job, forget=forget)
    if json_out:
        out.print_json(json.dumps([r.as_dict() for r in reports]))
    else:
        for report in reports:
            _print_check(report)
    if not all(r.ok for r in reports):
        raise typer.Exit(1)


def _print_check(report) -> None:
    version = f" v{report.version}" if report.version is not None else ""
    out.print(f"check {report.job}{version}: {report.model} at {report.base_url}")
    for line in report.lines:
        mark = "[green]ok[/]  " if line.ok else "[red]FAIL[/]"
        out.print(f"  {mark} {line.what}: {line.detail}", highlight=False, soft_wrap=True)
    if report.ok:
        out.print("  a backfill would work")
    else:
        out.print("  [red]a backfill would not work:[/] fix the setting above (`vectorfill check` again after)")


def _check_before(name: str, *, url: str, version: int | None = None, **endpoint) -> None:
    """The check that `job create` and `job set-model` run unless --no-check; exits 1 (the
    job or version is then not created) when it fails. A key variable not set in this shell
    (a job made on one machine for workers on another) skips it with a note."""
    import os

    from vectorfill.jobs.check import check_endpoint

    env_var = endpoint.get("api_key_env")
    if env_var and not os.environ.get(env_var):
        err.print(
            f"[yellow]not checked:[/] ${env_var} is not set in this shell; run `vectorfill check {name}` "
            "where it is, before a long backfill"
        )
        return
    report = asyncio.run(check_endpoint(job=name, version=version, db_url=url, **endpoint))
    if not report.ok:
        _print_check(report)
        err.print("nothing was created; fix the setting, or pass --no-check to create it anyway (offline setups)")
        raise typer.Exit(1)
    details = {line.what: line.detail for line in report.lines}
    out.print(f"endpoint check passed: {details.get('dimensions')}, {details.get('encoding')}", highlight=False)
    for line in report.lines:
        if line.what == "negotiated":
            out.print(f"endpoint check: {line.detail}", highlight=False)


# ------------------------------------------------------------------ local pieces
# ------------------------------------------------------------------ orchestration
@app.command()
def serve(
    jobs: list[str] | None = typer.Argument(None, help="Jobs to schedule (default: every job)"),
    cron: str = typer.Option("0 2 * * *", help="Schedule of each job's backfill (cron, UTC); '' for none"),
    port: int | None = typer.Option(
        None, help="Port of the local Prefect server (and its UI) if it must be started (default: 4200 if free)"
    ),
    sync: bool = typer.Option(
        False, "--sync", help="Also embed rows as they are written (a sync run per job and hour)"
    ),
    sync_window: float = typer.Option(3600.0, "--sync-window", help="Seconds each sync run covers", hidden=True),
    db: str | None = DbOpt,
) -> None:
    """Serve vectorfill's deployments from this machine: a scheduled backfill per job and a
    re-embed triggered by `job set-model`, on the local Prefect server (history in Postgres).
    With --sync, every job is also kept in step continuously (re-embeds included).
    """
    from vectorfill.jobs.registry import list_jobs
    from vectorfill.orchestration.prefect_server import serve as run
    from vectorfill.orchestration.runtime import prefect_defaults

    url = _url(db)
    with _conn(url) as conn:
        names = jobs or list_jobs(conn)
    prefect_defaults(use_served=False)
    run(url, jobs=names, cron=cron or None, port=port, announce=_note, sync=sync, sync_window_s=sync_window)


@app.command()
def runs(
    job: str | None = typer.Argument(None, help="Only this job's runs"),
    limit: int = typer.Option(20, help="How many runs"),
    json_out: bool = typer.Option(False, "--json"),
    db: str | None = DbOpt,
) -> None:
    """Recent backfill runs from Prefect: start, duration, state, rows, tokens, cost, failures."""
    import os

    from vectorfill.orchestration.api import use_api
    from vectorfill.orchestration.history import recent_runs
    from vectorfill.orchestration.runtime import prefect_defaults

    if not os.environ.get("PREFECT_API_URL"):
        from vectorfill.orchestration.local_server import running

        use_api(None if running() else _url(db), announce=_note)
    prefect_defaults()
    records = recent_runs(job, limit)
    if json_out:
        out.print_json(json.dumps([r.as_dict() for r in records]))
        return
    table = Table(
        "start", "job", "deployment", "state", "duration s", "rows", "tokens", "cost USD", "failed", "via batches"
    )
    for r in records:
        table.add_row(
            r.start.isoformat(timespec="seconds") if r.start else "",
            r.job or "",
            r.deployment or "",
            r.state,
            "" if r.duration_s is None else f"{r.duration_s:,.1f}",
            "" if r.rows is None else f"{r.rows:,}",
            "" if r.tokens is None else f"{r.tokens:,}",
            "" if r.cost_usd is None else f"{r.cost_usd:,.4f}",
            "" if r.failed is None else str(r.failed),
            _via_batches(r),
        )
    out.print(table if records else "no backfill runs recorded yet")


def _via_batches(r) -> str:
    """What a run did through the Batch API: rows stored from batches, batches submitted."""
    parts = []
    if r.batch_rows:
        parts.append(f"{r.batch_rows:,} rows")
    if r.batches_submitted:
        parts.append(f"{r.batches_submitted} submitted")
    return ", ".join(parts)


@app.command("serve-embeddings")
def serve_embeddings(
    model: str = typer.Option("all-MiniLM-L6-v2", help="all-MiniLM-L6-v2 (needs [local]) or fake-embed"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    api_key_env: str | None = typer.Option(None, help="Require this env variable's value as Bearer key"),
) -> None:
    """Serve an OpenAI-compatible /v1/embeddings endpoint from a local model."""
    from vectorfill.local.embeddings_server import run_server

    run_server(model=model, host=host, port=port, api_key_env=api_key_env)


@app.command()
def demo(
    rows: int = typer.Option(2000, help="How many standard-library docstrings to embed (0: all)"),
    model: str = typer.Option("all-MiniLM-L6-v2", help="all-MiniLM-L6-v2 (needs [local]) or fake-embed"),
    db: str | None = DbOpt,
) -> None:
    """The whole product, offline: embedded Postgres, a local model, a backfill, searches."""
    from vectorfill.local.demo import run_demo

    run_demo(db_url=db, rows=rows or None, model=model, out=out, err=err)


@app.command()
def batches(
    job: str,
    limit: int = typer.Option(50, help="How many submissions"),
    json_out: bool = typer.Option(False, "--json"),
    cancel: bool = typer.Option(
        False, "--cancel", help="Cancel the running batches (the next backfill stores what they finished)"
    ),
    db: str | None = DbOpt,
) -> None:
    """JOB's Batch API submissions, newest first: state, rows, tokens, submitted, finished."""
    from vectorfill.jobs.batches import cancel_batches, list_batches

    with _conn(db) as conn:
        if cancel:
            ids = cancel_batches(conn, job)
            err.print(f"cancelling {len(ids)} batch(es) of {job}; the next `vectorfill backfill {job}` collects them")
        rows = list_batches(conn, job, limit)
    if json_out:
        out.print_json(json.dumps([r.as_dict() for r in rows]))
        return
    table = Table(
        "submission",
        "v",
        "state",
        "provider",
        "rows",
        "tokens",
        "written",
        "failed",
        "retried",
        "submitted",
        "finished",
    )
    for r in rows:
        table.add_row(
            r.id[:8],
            str(r.version),
            r.state,
            f"{r.provider_batch_id or ''} {r.provider_status or ''}".strip(),
            f"{r.rows:,}",
            f"{r.billed_tokens if r.billed_tokens is not None else r.tokens:,}",
            "" if r.written is None else f"{r.written:,}",
            "" if r.failed is None else f"{r.failed:,}",
            "" if r.retried is None else f"{r.retried:,}",
            r.submitted_at.isoformat(timespec="seconds") if r.submitted_at else "",
            r.finished_at.isoformat(timespec="seconds") if r.finished_at else "",
        )
    out.print(table if rows else f"no batches submitted for {job}")


@db_app.command("start")
def db_start() -> None:
    """Start (or reuse) the embedded Postgres; it keeps running between commands."""
    from vectorfill.local import pgembedded

    url = pgembedded.start()
    out.print(f"embedded Postgres running: {url}")


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded Postgres (and the local Prefect server first, if its history is there)."""
    from vectorfill.local import pgembedded
    from vectorfill.orchestration import local_server

    server = local_server.recorded()
    if server is not None and server.embedded_pgdata == str(pgembedded.status().data_dir) and local_server.stop():
        out.print(f"local Prefect server stopped (its database {server.database} is in the embedded Postgres)")
    out.print("stopped" if pgembedded.stop() else "was not running")


@db_app.command("status")
def db_status() -> None:
    """Is the embedded Postgres running, and where is its data."""
    from vectorfill.local import pgembedded

    st = pgembedded.status()
    out.print(f"{'running' if st.running else 'stopped'}; data in {st.data_dir}" + (f"; {st.url}" if st.url else ""))


@db_app.command("url")
def db_url() -> None:
    """Print the embedded Postgres URL (for --db or VECTORFILL_DATABASE_URL)."""
    from vectorfill.local import pgembedded

    url = pgembedded.url()
    if not url:
        err.print("the embedded Postgres is not running: `vectorfill db start`")
        raise typer.Exit(1)
    print(url)


@app.command()
def stop() -> None:
    """Stop what vectorfill runs in the background on this machine: the local Prefect server
    and the embedded Postgres (both start again when a command needs them)."""
    from vectorfill.local import pgembedded
    from vectorfill.orchestration import local_server

    server = local_server.stop()
    out.print(
        f"local Prefect server (pid {server.pid}, {server.ui_url}) stopped"
        if server
        else "local Prefect server was not running"
    )
    out.print("embedded Postgres stopped" if pgembedded.stop() else "embedded Postgres was not running")


def _stop_on_sigterm() -> threading.Event:
    """Make SIGTERM stop the process as Ctrl-C does; the event says whether it came.

    SIGTERM is how Prefect's runners and workers, systemd, Docker and Kubernetes stop a
    process; by default it kills Python on the spot, so a run could not give its claims
    back (they waited for their lease to expire) and Prefect's temporary server was left
    running. Here it goes to the Ctrl-C handler that ``asyncio.run`` installs, which
    cancels the run so that it gives its claims back; outside a run, it raises
    KeyboardInterrupt. When SIGINT is ignored (a process started in the background),
    there is no such handler: the running loop's tasks are cancelled instead.
    """
    terminated = threading.Event()

    def on_sigterm(signum, frame) -> None:
        terminated.set()
        on_sigint = signal.getsignal(signal.SIGINT)
        if callable(on_sigint):  # asyncio.run's Ctrl-C handler, or Python's default one
            on_sigint(signal.SIGINT, frame)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise KeyboardInterrupt from None
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.call_soon_threadsafe(lambda: None)  # wake the loop up to see it

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)
    return terminated


def _interrupted(terminated: threading.Event, released: str) -> None:
    if terminated.is_set():
        err.print(f"terminated (SIGTERM); claimed rows {released} or expire with their lease")
        sys.exit(128 + signal.SIGTERM)
    err.print(f"interrupted; claimed rows {released} or expire with their lease")
    sys.exit(130)


#: Exit codes (the README's table): 0 done; 1 the command could not proceed (a setting, the
#: database, the provider: the message says which and what to do); 2 a usage mistake;
#: 3 a run went through but rows failed; 130/143 stopped by Ctrl-C/SIGTERM.
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_ROWS_FAILED = 0, 1, 2, 3


def _usage_error_types() -> tuple[type[BaseException], ...]:
    """Click's usage exceptions, as typer ships them (its own copy of click in typer >= 0.16
    or so, click itself before)."""
    types: list[type[BaseException]] = []
    try:
        from typer._click.exceptions import ClickException as vendored

        types.append(vendored)
    except ImportError:
        pass
    import click

    types.append(click.ClickException)
    return tuple(types)


def main(argv: list[str] | None = None) -> None:
    """The ``vectorfill`` command: run it, then exit at once (see :func:`_exit_now`)."""
    try:
        _main(argv)
    except SystemExit as exc:
        _exit_now(exc.code)
    _exit_now(0)


def _exit_now(code: object) -> None:
    """Run the exit handlers (Prefect's drain its log and event queues to the server there),
    flush the output and end the process without tearing the interpreter down.

    After a run the heap holds Prefect, pydantic, SQLAlchemy and their modules; freeing it
    object by object at exit took 0.5-1 s of wall time per command on these machines, for
    nothing. Threads still running are daemons by then (Prefect's workers, drained above).
    """
    import atexit
    import os

    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)


def _main(argv: list[str] | None) -> None:
    terminated = _stop_on_sigterm()
    try:
        code = app(args=argv, prog_name="vectorfill", standalone_mode=False)  # the exit code of Exit/Ctrl-C
    except RowsFailed as exc:
        err.print(f"[yellow]warning:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_ROWS_FAILED)
    except VectorfillError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)  # one line, greppable
        sys.exit(EXIT_ERROR)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        if terminated.is_set():
            _interrupted(terminated, "were given back")
        err.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        _interrupted(terminated, "are released")
    except asyncio.CancelledError:
        if not terminated.is_set():
            raise
        _interrupted(terminated, "were given back")
    except Exception as exc:  # usage mistakes: the usage line, one sentence, exit 2, no traceback
        if isinstance(exc, _usage_error_types()):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(getattr(exc, "exit_code", EXIT_USAGE))
        raise
    if code == 130 or terminated.is_set():
        _interrupted(terminated, "were given back")
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
