"""``vectorfill migrate`` and ``vectorfill job create/list/drop``: the schema and the jobs."""

from __future__ import annotations

import typer
from pydantic import ValidationError

from vectorfill.cli._common import DbOpt, chunk_options, conn, url
from vectorfill.cli._output import out
from vectorfill.cli._search import check_before
from vectorfill.config import ChunkSettings, DocumentSettings, JobSettings, unescape_template
from vectorfill.errors import ConfigError
from vectorfill.jobs.model_change import chunk_settings
from vectorfill.jobs.registry import create_job, drop_job, job_status, list_jobs, set_job_settings, use_base_url
from vectorfill.storage.db import migrate as migrate_schema

__all__ = ["job_create", "job_drop", "job_list", "job_set", "migrate"]


def migrate(
    db: str | None = DbOpt,
    downgrade: str | None = typer.Option(None, help="Downgrade to this revision ('base' removes everything)"),
) -> None:
    """Create or upgrade vectorfill's own schema (Alembic)."""
    rev = migrate_schema(url(db), downgrade or "head", downgrade=bool(downgrade), report=out.print)
    out.print(f"vectorfill schema at revision {rev or 'none (removed)'}")


def job_create(
    name: str = typer.Argument(..., help="Job name: lowercase letters, digits, underscores"),
    table: str = typer.Option(..., help="Source table, TABLE or SCHEMA.TABLE"),
    text: list[str] | None = typer.Option(None, help="Column(s) to embed; several are joined by a blank line"),
    uri: str | None = typer.Option(
        None, help="A document job: the column holding each row's document (a path, file:// or s3:// URI)"
    ),
    watch: list[str] | None = typer.Option(
        None, help="Document jobs: column(s) whose change re-reads the document (default: etag, if the table has it)"
    ),
    max_document_mb: float | None = typer.Option(
        None, help="Document jobs: a larger document fails as too large, unread (default 64)"
    ),
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
    max_usd_per_day: float | None = typer.Option(
        None, help="Most USD a UTC day at the job's prices; the run stops (rows queued) before passing it"
    ),
    endpoint_max_usd_per_day: float | None = typer.Option(
        None, help="The same, shared by every job on this endpoint and model"
    ),
    matryoshka: bool = typer.Option(
        False,
        help="The model's shorter vectors are its full ones cut and renormalised (text-embedding-3-* need not say)",
    ),
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
    if template and text:
        raise ConfigError("give --text or --template, not both", job=name)
    if uri is None and (watch or max_document_mb is not None):
        raise ConfigError("--watch and --max-document-mb are for document jobs (--uri COLUMN)", job=name)
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
            matryoshka=matryoshka,
            max_usd_per_day=max_usd_per_day,
            endpoint_max_usd_per_day=endpoint_max_usd_per_day,
            api_key_header=api_key_header,
            api_version=api_version,
            batch=batch,
            batch_prices=_prices(batch_price or [], name),
            update_trigger=update_trigger,
            documents=_document_settings(uri, max_document_mb),
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid setting: {problems}", job=name) from None
    db_url = url(db)
    with conn(db_url) as c:
        job = create_job(
            c,
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
            chunking=chunk_settings(
                chunk_options(chunker, chunk_size, chunk_overlap, chunk_template, max_chunks),
                base=ChunkSettings(chunker="recursive") if uri else None,  # documents: chunked by default
                job=name,
            ),
            watch=watch or None,
        )
        if not no_check:  # before the commit: a job that cannot work is not created
            answered = check_before(
                name,
                base_url=base_url,
                model=model,
                api_key_env=api_key_env,
                dimensions=dimensions,
                settings=settings,
                url=db_url,
                adopt_base_url=True,
            )
            if answered != base_url.rstrip("/"):  # the other form (with or without /v1) answered
                use_base_url(c, name, answered)
        st = job_status(c, name)
    out.print(
        f"job {job.name}: {st.pending:,} rows of {job.source} queued for {model}; "
        f"vectors will be readable in {st.target}. Next: `vectorfill backfill {job.name}`"
    )


def _document_settings(uri: str | None, max_document_mb: float | None) -> DocumentSettings | None:
    if uri is None:
        return None
    if max_document_mb is None:
        return DocumentSettings(uri=uri)
    return DocumentSettings(uri=uri, max_document_bytes=int(max_document_mb * 2**20))


def _prices(items: list[str], job: str) -> dict[str, float]:
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


def job_list(db: str | None = DbOpt) -> None:
    """List jobs."""
    with conn(db) as c:
        for name in list_jobs(c):
            out.print(name)


def job_drop(name: str, db: str | None = DbOpt) -> None:
    """Remove a job: its triggers, queue and vectors (the source rows stay)."""
    with conn(db) as c:
        drop_job(c, name)
    out.print(f"job {name} dropped")


def job_set(
    name: str = typer.Argument(..., help="The job"),
    rpm: int | None = typer.Option(None, help="Requests-per-minute budget of the endpoint (0: none)"),
    tpm: int | None = typer.Option(None, help="Tokens-per-minute budget of the endpoint (0: none)"),
    concurrency: int | None = typer.Option(None, help="Requests in flight per run"),
    timeout: float | None = typer.Option(None, help="Seconds to wait for one response"),
    retries: int | None = typer.Option(None, help="Retries of one request after a transient error"),
    max_usd_per_day: float | None = typer.Option(None, help="Most USD a UTC day at the job's prices (0: no cap)"),
    endpoint_max_usd_per_day: float | None = typer.Option(
        None, help="The same, shared by every job on this endpoint and model (0: no cap)"
    ),
    price: list[str] | None = typer.Option(None, help="MODEL=USD per million tokens (replaces the job's own table)"),
    db: str | None = DbOpt,
) -> None:
    """Change how a job's runs behave: budgets, spend caps, concurrency, timeouts, prices.

    The next run reads them. What a vector means (model, dimensions, chunking) is changed
    with `vectorfill job set-model`, which re-embeds beside the current vectors."""
    none_if_zero = {"rpm": rpm, "tpm": tpm, "max_usd_per_day": max_usd_per_day}
    none_if_zero["endpoint_max_usd_per_day"] = endpoint_max_usd_per_day
    changes: dict[str, object] = {k: (None if v == 0 else v) for k, v in none_if_zero.items() if v is not None}
    for key, value in (("concurrency", concurrency), ("timeout_s", timeout), ("retries", retries)):
        if value is not None:
            changes[key] = value
    if price:
        changes["prices"] = _prices(price, name)
    if not changes:
        raise ConfigError("nothing to change: give at least one option (`vectorfill job set --help`)", job=name)
    with conn(url(db)) as c:
        settings = set_job_settings(c, name, changes)
    shown = {k: getattr(settings, k) for k in changes}
    out.print(f"job {name!r}: " + ", ".join(f"{k}={'none' if v is None else v}" for k, v in shown.items()))
