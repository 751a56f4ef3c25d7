"""Jobs: create (validate the source, install triggers, queue existing rows), load, drop, count.

Everything here runs in one transaction per operation, so a job is either fully installed
or not at all.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import ValidationError

from vectorfill.config import STORAGE_TYPES, ChunkSettings, JobSettings, validate_job_name
from vectorfill.errors import ConfigError, JobError, SourceError
from vectorfill.provider.budgets import endpoint_key
from vectorfill.provider.tokens import SMALLEST_COMMON_LIMIT, counter_for, max_input_tokens
from vectorfill.records import Job, Version
from vectorfill.storage import sql
from vectorfill.storage.db import one_row, scalar
from vectorfill.storage.jobs import job_names, read_job, upgrade_triggers

__all__ = [
    "DEFAULT_WATCH",
    "KNOWN_DIMENSIONS",
    "JobStatus",
    "WorkLeft",
    "absorb",
    "check_endpoint_options",
    "create_job",
    "drop_job",
    "job_status",
    "list_failures",
    "list_jobs",
    "load_job",
    "parse_table",
    "retry_failures",
    "upgrade_triggers",  # moved to vectorfill.storage.jobs (run by migrate); kept here for callers
    "use_base_url",
    "version_options",
    "work_left",
]

#: The columns of a document table whose change queues its row again (``--watch`` overrides):
#: those ``vectorfill documents sync`` keeps.
DEFAULT_WATCH = ("etag",)

#: Native sizes of well-known models, so their vector column is typed from the start.
KNOWN_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
    "all-MiniLM-L6-v2": 384,
}


def parse_table(table: str) -> tuple[str, str]:
    """``schema.table`` or ``table`` (schema public). Quotes are not needed: names are taken as written."""
    parts = table.split(".")
    if len(parts) == 1:
        return "public", parts[0]
    if len(parts) == 2 and all(parts):
        return parts[0], parts[1]
    raise ConfigError(f"--table {table!r} must be TABLE or SCHEMA.TABLE")


def check_endpoint_options(dimensions: int | None, api_key_env: str | None, *, job: str) -> None:
    """The checks a job's model options get, at ``job create`` and ``job set-model``."""
    if dimensions is not None and dimensions < 1:
        raise ConfigError(f"--dimensions must be a positive number, not {dimensions}", job=job)
    if api_key_env is not None and not api_key_env.replace("_", "").isalnum():
        raise ConfigError(
            "--api-key-env takes the NAME of an environment variable (like OPENAI_API_KEY), not the key itself",
            job=job,
        )


def _require_schema(conn: psycopg.Connection) -> None:
    if scalar(conn.execute(sql.SCHEMA_INSTALLED)) is None:
        raise JobError("vectorfill's schema is not installed in this database: run `vectorfill migrate` first")


def create_job(
    conn: psycopg.Connection,
    *,
    name: str,
    table: str,
    text_columns: list[str] | None,
    template: str | None,
    key_columns: list[str] | None,
    model: str,
    base_url: str,
    api_key_env: str | None,
    dimensions: int | None = None,
    settings: JobSettings | None = None,
    storage: str = "auto",
    chunking: ChunkSettings | None = None,
    watch: list[str] | None = None,
) -> Job:
    """Register a job, install its triggers and queue every existing row, atomically.

    A document job (``settings.documents``, ``--uri COLUMN``) embeds the document each row's
    URI names; a change of the URI or of a ``watch`` column (default: ``etag`` when the table
    has one, as tables kept by ``vectorfill documents sync`` do) queues the row again. Its
    chunker defaults to ``recursive``."""
    validate_job_name(name)
    settings = settings or JobSettings()
    docs = settings.documents
    if docs is not None:
        if text_columns or template is not None:
            raise ConfigError("a document job takes --uri COLUMN, not --text or --template", job=name)
        chunking = chunking or ChunkSettings(chunker="recursive")
    elif watch:
        raise ConfigError("--watch is for document jobs (--uri COLUMN)", job=name)
    check_endpoint_options(dimensions, api_key_env, job=name)
    _require_schema(conn)
    if conn.execute(sql.JOB_ROWS, {"name": name}).fetchone():
        raise JobError(
            f"exists already; choose another name, or `vectorfill job drop {name}` first (that deletes its vectors)",
            job=name,
        )
    schema, tname = parse_table(table)
    found = conn.execute(sql.LOOKUP_TABLE, {"schema": schema, "table": tname}).fetchone()
    if found is None:
        raise SourceError(
            f"source table {schema}.{tname} does not exist (names are case-sensitive; check --table and the database)",
            job=name,
        )
    oid, _, _, relkind = found
    if relkind not in ("r", "p"):
        raise SourceError(f"{schema}.{tname} is not a table (views cannot carry triggers)", job=name)
    columns = {c: (t, notnull) for c, t, notnull in conn.execute(sql.LOOKUP_COLUMNS, {"oid": oid})}

    if docs is not None:
        watched = list(watch) if watch is not None else [c for c in DEFAULT_WATCH if c in columns]
        text_columns = list(dict.fromkeys([docs.uri, *watched]))
    if template is not None:
        try:
            spec = sql.parse_template(template)
        except ValueError as exc:
            raise ConfigError(f"--template: {exc}", job=name) from None
        text_columns = list(spec.columns)
    if not text_columns:
        raise ConfigError("name the text to embed with --text COLUMN [COLUMN ...] or --template", job=name)
    missing = [c for c in text_columns if c not in columns]
    if missing:
        raise SourceError(
            f"{schema}.{tname} has no column {', '.join(map(repr, missing))}; its columns are: {', '.join(columns)}",
            job=name,
        )

    key_columns = _choose_key(conn, oid, key_columns, columns, f"{schema}.{tname}", name)
    key_types = [columns[c][0] for c in key_columns]
    options = version_options(storage, chunking or ChunkSettings(), text_columns=text_columns, job=name)

    settings_json = Jsonb(settings.model_dump())
    job_id = scalar(
        conn.execute(
            sql.INSERT_JOB,
            (name, schema, tname, key_columns, key_types, text_columns, template, settings_json),
        )
    )
    conn.execute(
        sql.INSERT_VERSION,
        {
            "job_id": job_id,
            "model": model,
            "base_url": base_url.rstrip("/"),
            "api_key_env": api_key_env,
            "dimensions": dimensions,
            "vector_dims": dimensions or KNOWN_DIMENSIONS.get(model),
            "state": "active",
            "options": options,
        },
    )
    job = load_job(conn, name)
    version = job.version(1)
    js = sql.JobSQL(job, version)
    conn.execute(js.create_tables())
    conn.execute(sql.create_log_table(job))
    conn.execute(sql.create_absorb_function(job))
    conn.execute(sql.create_trigger_function(job))
    conn.execute(sql.create_triggers(job))
    conn.execute(sql.create_view(job, version))
    conn.execute(js.enqueue_all())
    return job


def _choose_key(conn, oid, key_columns, columns, table, job) -> list[str]:
    unique = [list(r[0]) for r in conn.execute(sql.LOOKUP_UNIQUE_KEYS, {"oid": oid})]
    if not key_columns:
        pk = conn.execute(sql.LOOKUP_PRIMARY_KEY, {"oid": oid}).fetchone()
        if pk is None:
            raise SourceError(
                f"{table} has no primary key; pass --id naming a unique NOT NULL column "
                "(or columns) that identifies each row",
                job=job,
            )
        return list(pk[0])
    missing = [c for c in key_columns if c not in columns]
    if missing:
        raise SourceError(f"--id: {table} has no column {', '.join(map(repr, missing))}", job=job)
    if not any(set(u) <= set(key_columns) for u in unique):
        raise SourceError(
            f"--id {', '.join(key_columns)} is not unique in {table} (no primary key or unique "
            "index covers it); each row needs its own key",
            job=job,
        )
    nullable = [c for c in key_columns if not columns[c][1]]
    if nullable:
        raise SourceError(
            f"--id column {', '.join(nullable)} of {table} may be NULL; make it NOT NULL or choose another key",
            job=job,
        )
    return list(key_columns)


def load_job(conn: psycopg.Connection, name: str) -> Job:
    _require_schema(conn)
    job = read_job(conn, name)
    if job is None:
        names = job_names(conn)
        known = f" (jobs here: {', '.join(names)})" if names else " (no jobs yet: `vectorfill job create`)"
        raise JobError(f"no job named {name!r}{known}")
    return job


def version_options(
    storage: str, chunking: ChunkSettings, *, text_columns: list[str] | tuple[str, ...], job: str
) -> Jsonb:
    """Checked ``versions.options`` for a new version (``job create``, ``job set-model``)."""
    if storage not in STORAGE_TYPES:
        raise ConfigError(f"--storage must be one of {', '.join(STORAGE_TYPES)}, not {storage!r}", job=job)
    if chunking.template is not None:
        try:
            spec = sql.parse_template(chunking.template)
        except ValueError as exc:
            raise ConfigError(f"--chunk-template: {exc}", job=job) from None
        if "chunk" not in spec.columns:
            raise ConfigError("--chunk-template must contain {chunk}, where each chunk's text goes", job=job)
        other = [c for c in spec.columns if c != "chunk" and c not in text_columns]
        if other:
            raise ConfigError(
                f"--chunk-template may name the job's text columns ({', '.join(text_columns)}) and {{chunk}}; "
                f"not {', '.join(other)} (edits of it would not re-queue the row)",
                job=job,
            )
    if chunking.enabled and chunking.overlap >= chunking.size:
        raise ConfigError(
            f"--chunk-overlap ({chunking.overlap}) must be smaller than --chunk-size ({chunking.size})", job=job
        )
    return Jsonb({"storage": storage, "chunking": chunking.model_dump()})


#: The settings ``vectorfill job set`` may change on an existing job: how runs behave
#: (budgets, caps, concurrency, timeouts, prices), never what a vector means or how the
#: table is watched (a new model, size or chunking is ``job set-model``).
RUN_SETTINGS = frozenset(
    {
        "rpm",
        "tpm",
        "concurrency",
        "timeout_s",
        "retries",
        "max_usd_per_day",
        "endpoint_max_usd_per_day",
        "prices",
        "batch_prices",
        "batch",
        "prune_on_switch",
    }
)


def set_job_settings(conn: psycopg.Connection, name: str, changes: dict[str, Any]) -> JobSettings:
    """Change run settings (:data:`RUN_SETTINGS`) of job ``name`` and return its new
    settings, checked as ``job create`` checks them. A value of None removes a limit (an
    rpm, tpm or spend cap). The next run reads them; a run in flight keeps its own."""
    unknown = sorted(set(changes) - RUN_SETTINGS)
    if unknown:
        raise ConfigError(f"`job set` cannot change {', '.join(unknown)}", job=name)
    with conn.transaction():
        _require_schema(conn)
        conn.execute(sql.LOCK_JOB, {"name": name})
        job = load_job(conn, name)  # "no job named ..." with the jobs there are
        try:
            settings = JobSettings(**{**job.settings.model_dump(), **changes})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"invalid setting: {problems}", job=name) from None
        conn.execute(sql.UPDATE_JOB_SETTINGS, {"settings": Jsonb(settings.model_dump()), "job_id": job.id})
    return settings


def use_base_url(conn: psycopg.Connection, name: str, base_url: str) -> None:
    """Point job ``name``'s active version at ``base_url`` (``job create``, when its check
    found the endpoint at the other form of the URL given: with or without ``/v1``)."""
    job = load_job(conn, name)
    conn.execute(sql.SET_ACTIVE_BASE_URL, (base_url.rstrip("/"), job.id))


def list_jobs(conn: psycopg.Connection) -> list[str]:
    _require_schema(conn)
    return job_names(conn)


def drop_job(conn: psycopg.Connection, name: str) -> None:
    """Remove the job's triggers, view, queue and vectors. The source table keeps its rows."""
    job = load_job(conn, name)
    if conn.execute(sql.LOOKUP_TABLE, {"schema": job.source_schema, "table": job.source_table}).fetchone():
        conn.execute(sql.drop_triggers(job))
    else:
        conn.execute(pgsql.SQL("DROP FUNCTION IF EXISTS {}()").format(sql.trigger_function_name(job)))
    conn.execute(sql.absorb_lock(job))  # (after the source's lock) no absorber of the job runs, nor starts
    conn.execute(pgsql.SQL("DROP VIEW IF EXISTS {}").format(sql.view_name(job)))
    for version in job.versions:
        conn.execute(sql.JobSQL(job, version).drop_tables())
    conn.execute(sql.drop_log(job))
    conn.execute(sql.DELETE_JOB, (job.id,))


def list_failures(conn: psycopg.Connection, name: str, limit: int = 50) -> list[dict[str, Any]]:
    job = load_job(conn, name)
    return conn.cursor(row_factory=dict_row).execute(sql.FAILURE_ROWS, (job.id, limit)).fetchall()


def retry_failures(conn: psycopg.Connection, name: str, keys: list[str] | None = None) -> int:
    """Queue failed rows of every live version again, all of them or those whose key is in
    ``keys`` (a single key as written, or a composite one as a JSON array); returns how many."""
    job = load_job(conn, name)
    # the absorber inserts queue rows without ON CONFLICT: it must not run meanwhile (its lock
    # is held until this transaction ends); and a failed row deleted since is forgotten first
    absorb(conn, job)
    rows = [Jsonb(json.loads(k)) for k in keys or [] if k.startswith("[")]
    ids = [k for k in keys or [] if not k.startswith("[")]
    total = 0
    for version in job.live_versions:
        cur = conn.execute(
            sql.JobSQL(job, version).requeue_failures(),
            {"job_id": job.id, "version": version.version, "all": keys is None, "rows": rows, "ids": ids},
        )
        total += cur.rowcount
    return total


@dataclass(frozen=True)
class WorkLeft:
    """What a backfill of a job would find to do (:func:`work_left`)."""

    job: str
    queued: bool
    """Rows pending or leased in any version's queue, or changes not yet absorbed."""
    batches_open: bool
    """Batches still at the provider's Batch API (a run collects them)."""
    failed: int
    """Rows of the active version that failed in earlier runs (nothing retries them by itself)."""

    @property
    def nothing(self) -> bool:
        return not (self.queued or self.batches_open)


def work_left(conn: psycopg.Connection, name: str) -> WorkLeft | None:
    """Whether a backfill of job ``name`` has anything to do, from two small statements in
    one transaction (:data:`vectorfill.storage.sql.WORK_LEFT_JOB`, then
    :func:`vectorfill.storage.sql.work_left`), nothing else read or imported; None when it
    cannot be told this way (no such job, or no vectorfill schema): the full path then says
    what is wrong."""
    try:
        row = conn.execute(sql.WORK_LEFT_JOB, {"name": name}).fetchone()
        if row is None:
            return None
        job_id, versions, batches_open, failed = row
        queued = scalar(conn.execute(sql.work_left(job_id, list(versions))))
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        return None
    return WorkLeft(job=name, queued=bool(queued), batches_open=bool(batches_open), failed=int(failed))


@dataclass(frozen=True)
class JobStatus:
    job: str
    version: int
    model: str
    dimensions: int | None
    total: int
    embedded: int
    pending: int
    failed: int
    target: str
    source: str
    maybe_truncated: int = 0
    """Stored inputs that a server may have cut without a word (:func:`maybe_truncated`)."""

    def as_dict(self) -> dict:
        return asdict(self)


def job_status(conn: psycopg.Connection, name: str, version: int | None = None) -> JobStatus:
    job = load_job(conn, name)
    ver = job.version(version) if version else job.active
    if ver is None:
        raise JobError("has no active version", job=name)
    absorb(conn, job)  # exact: changes still in the change log are counted as absorbed
    js = sql.JobSQL(job, ver)
    total, embedded, pending, failed = one_row(conn.execute(js.counts(), {"job_id": job.id, "version": ver.version}))
    return JobStatus(
        job=job.name,
        version=ver.version,
        model=ver.model,
        dimensions=ver.vector_dims,
        total=total,
        embedded=embedded,
        pending=pending,
        failed=failed,
        target=f"vectorfill.{job.name}",
        source=job.source,
        maybe_truncated=_maybe_truncated(conn, job, ver),
    )


def maybe_truncated(conn: psycopg.Connection, name: str) -> int:
    """How many of JOB's stored inputs (rows, or chunks) the server may have truncated where
    vectorfill could not know: the model's input limit is unknown here (no tokenizer, none
    set on the job, announced or learnt from the server) and the input is longer than the
    smallest limit common among embedding models (256 tokens, by the bytes/3 estimate)."""
    job = load_job(conn, name)
    return _maybe_truncated(conn, job, job.active) if job.active is not None else 0


def _maybe_truncated(conn: psycopg.Connection, job: Job, ver: Version) -> int:
    model = ver.model
    if job.settings.max_input_tokens or max_input_tokens(model) or counter_for(model).exact:
        return 0
    caps = conn.execute(sql.ENDPOINT_CAPS, {"endpoint": endpoint_key(ver.base_url, model)}).fetchone()
    if caps is not None and caps[3]:
        return 0
    count = scalar(conn.execute(sql.JobSQL(job, ver).count_long_chunks(), {"bytes": 3 * SMALLEST_COMMON_LIMIT}))
    return int(count or 0)


def absorb(conn: psycopg.Connection, job: Job) -> int:
    """Fold the job's change log into every live version's queue (see
    :func:`vectorfill.storage.sql.create_absorb_function`); returns how many keys it held.
    In the caller's transaction, whose commit publishes it; the absorber's lock is held
    until then, so no other absorber and no change of the job's versions runs meanwhile."""
    return int(scalar(conn.execute(sql.absorb(job))) or 0)
