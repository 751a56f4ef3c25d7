"""Every error a vectorfill user can see, in one place.

The tree::

    VectorfillError                  base; .transient says whether a retry can help
    ├── ConfigError                  a setting is wrong (job options, URLs, env vars)
    │   └── SecretMissing            the API key's environment variable is not set
    ├── JobError                     a job is missing, exists already, or is in the wrong state
    ├── SourceError                  the source table, a column or the key is unusable
    ├── DatabaseError                Postgres is unreachable or refused a statement (has .sqlstate)
    │   ├── DatabaseUnavailable      transient: cannot connect, connection lost, server shutting
    │   │   │                        down, serialization failure or deadlock, a lock timeout
    │   │   └── BudgetUnavailable    the endpoint's shared rate budget could not be leased
    │   └── DatabaseRefused          terminal: Postgres refused the statement (permissions, an
    │                                undefined table, a constraint, syntax)
    ├── ProviderError                the embeddings endpoint failed (has .status, .code)
    │   ├── TransientProviderError   429 rate limit, 408/409, 5xx, timeouts, resets, proxy pages
    │   └── TerminalProviderError    400/422 bad input, bad response shape
    │       ├── AuthenticationError  401/403: wrong or missing key; stops the run at once
    │       ├── ModelNotFound        404: unknown model or wrong base URL; stops the run
    │       ├── QuotaExceeded        429 insufficient_quota: billing, not a rate limit; stops the run
    │       └── RequestRejected      a 4xx that belongs to the request (a setting), not to an input;
    │                                stops the run with every row still queued
    ├── SpendCapReached              the next request would pass max_usd_per_day; stops the run
    │                                with every row still queued (.resets_at: when it resets)
    ├── InputError                   one row's text cannot be embedded (NULL, empty, too long)
    ├── DocumentError                one row's document cannot be read or parsed (.reason, .uri);
    │   │                            the row is recorded as failed, the run goes on
    │   ├── DocumentMissing          no object or file at the URI
    │   ├── DocumentDenied           the store refused access (403, file permissions)
    │   ├── DocumentTooLarge         larger than the job's max_document_bytes
    │   ├── DocumentFormatError      unknown format, or bytes that do not parse as their format
    │   ├── DocumentEncrypted        a password-protected PDF
    │   ├── DocumentNoText           a PDF with no text layer (scanned); OCR is not supported
    │   └── DocumentEmpty            parsed to no text at all
    ├── DocumentStoreUnavailable     transient: S3 503/throttling, a timeout, a dropped connection
    └── RowsFailed                   a run finished, but some of its rows failed (.summary)

Each message names the job, the row or setting at fault, and what to do next. Foreign
exceptions are translated at one edge each and never leak to the user unwrapped: httpx's in
:mod:`vectorfill.provider.client`, psycopg's in :mod:`vectorfill.storage.errors` (which
keeps Postgres's SQLSTATE as ``.sqlstate``; :func:`sqlstate_is_transient` is the one rule
for which of them a retry can help). Code that needs one case asks the error, never psycopg::

    except DatabaseError as exc:
        if exc.sqlstate == UNDEFINED_TABLE:  # a version's tables were dropped
            ...
"""

from __future__ import annotations

__all__ = [
    "DUPLICATE_DATABASE",
    "INSUFFICIENT_PRIVILEGE",
    "SCHEMA_GONE",
    "UNDEFINED_TABLE",
    "AuthenticationError",
    "BudgetUnavailable",
    "ConfigError",
    "DatabaseError",
    "DatabaseRefused",
    "DatabaseUnavailable",
    "DocumentDenied",
    "DocumentEmpty",
    "DocumentEncrypted",
    "DocumentError",
    "DocumentFormatError",
    "DocumentMissing",
    "DocumentNoText",
    "DocumentStoreUnavailable",
    "DocumentTooLarge",
    "InputError",
    "JobError",
    "ModelNotFound",
    "ProviderError",
    "QuotaExceeded",
    "RequestRejected",
    "RowsFailed",
    "SecretMissing",
    "SourceError",
    "SpendCapReached",
    "TerminalProviderError",
    "TransientProviderError",
    "VectorfillError",
    "first_error",
    "first_line",
    "is_transient",
    "sqlstate_is_transient",
    "stop_reason",
    "stops_run",
]

# ------------------------------------------------------------------ Postgres's SQLSTATEs
# (https://www.postgresql.org/docs/current/errcodes-appendix.html) that callers ask about
UNDEFINED_TABLE = "42P01"
"""A table is gone: a job version's tables dropped (abandon, prune), or a migration missing."""
INSUFFICIENT_PRIVILEGE = "42501"
DUPLICATE_DATABASE = "42P04"
SCHEMA_GONE = frozenset({UNDEFINED_TABLE, "42703", "42883", "3F000"})
"""Undefined table, column, function, schema: the job's tables or the source's columns
changed under a run (a job dropped, a column removed). Retrying cannot help."""

#: SQLSTATE classes (the first two characters) where a retry, on a new connection, can help:
#: 08 connection exception, 40 transaction rollback (serialization failure, deadlock),
#: 53 insufficient resources (too many connections, out of memory, disk full),
#: 57 operator intervention (admin/crash shutdown, cannot connect now, query cancelled).
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57"})
#: Codes decided apart from their class: 55P03 lock_not_available (a lock timeout) is
#: transient; 57P04 database_dropped is not.
_TRANSIENT_SQLSTATES = frozenset({"55P03"})
_TERMINAL_SQLSTATES = frozenset({"57P04"})


def sqlstate_is_transient(sqlstate: str | None) -> bool | None:
    """Whether a retry can help a statement Postgres failed with ``sqlstate``; None when
    there is no SQLSTATE (the client failed before, or without, an answer from the server:
    the caller decides from what failed)."""
    if not sqlstate:
        return None
    if sqlstate in _TRANSIENT_SQLSTATES:
        return True
    if sqlstate in _TERMINAL_SQLSTATES:
        return False
    return sqlstate[:2] in TRANSIENT_SQLSTATE_CLASSES


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (Postgres adds DETAIL/HINT lines), or its type's
    name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class VectorfillError(Exception):
    """Base of all vectorfill errors. ``transient`` is True when retrying can help.

    What the command line prints as one error block (``vectorfill.cli._output.print_error``),
    for this class and every subclass, including ones added later: the message (naming
    ``job``), ``setting`` (the job setting or option at fault, when known)
    and ``fix`` (what to do, when the message does not already say it; a class may set a
    default)."""

    transient: bool = False
    setting: str | None = None
    fix: str | None = None

    def __init__(
        self, message: str, *, job: str | None = None, setting: str | None = None, fix: str | None = None
    ) -> None:
        self.job = job
        if setting is not None:
            self.setting = setting
        if fix is not None:
            self.fix = fix
        prefix = f"job {job!r}: " if job else ""
        super().__init__(prefix + message)


class ConfigError(VectorfillError):
    """A setting is wrong; fix the named option and run again."""


class SecretMissing(ConfigError):
    """The environment variable that should hold the API key is not set."""

    setting = "api_key_env"


class JobError(VectorfillError):
    """A job does not exist, exists already, or is in a state that forbids the operation."""


class SourceError(VectorfillError):
    """The source table, a text column or the key column cannot be used."""


class DatabaseError(VectorfillError):
    """Postgres could not be reached or refused a statement. ``sqlstate`` is Postgres's code
    for it (None when the client failed without an answer from the server). Raised as one of
    its two kinds by :mod:`vectorfill.storage.errors`; a plain one is transient."""

    transient = True

    def __init__(self, message: str, *, job: str | None = None, sqlstate: str | None = None, **kw) -> None:
        self.sqlstate = sqlstate
        super().__init__(message, job=job, **kw)


class DatabaseUnavailable(DatabaseError):
    """Transient: the database cannot be used right now (cannot connect, the connection was
    lost, the server is shutting down, a serialization failure or deadlock, a lock timeout).
    The same work on a new connection can succeed."""

    transient = True
    fix = (
        "check that Postgres is running and that the URL (--db, else $VECTORFILL_DATABASE_URL, else the "
        "embedded Postgres) is right, then run the command again"
    )


class DatabaseRefused(DatabaseError):
    """Terminal: Postgres refused the statement (permissions, an undefined table or column,
    a constraint, syntax). Sending it again gets the same answer."""

    transient = False


class BudgetUnavailable(DatabaseUnavailable):
    """The endpoint's shared rate budget (``vectorfill.budgets``) could not be leased, because
    Postgres could not be reached or refused the statement. Transient: the request waits
    (its task retries); budget already leased is still spent meanwhile."""


class ProviderError(VectorfillError):
    """The embeddings endpoint answered with an error or an unusable response."""

    def __init__(
        self,
        message: str,
        *,
        job: str | None = None,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        param: str | None = None,
        setting: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.retry_after = retry_after
        self.param = param
        """The request field the server blamed (OpenAI's ``param``, FastAPI's ``loc``), if any."""
        super().__init__(message, job=job, setting=setting, fix=fix)


class TransientProviderError(ProviderError):
    """A failure that may pass: rate limits, server errors, timeouts, dropped connections."""

    transient = True


class TerminalProviderError(ProviderError):
    """A failure that repeats if the same request is sent again."""


class AuthenticationError(TerminalProviderError):
    """401/403: the API key is wrong, missing, or lacks access. The run stops at once."""

    setting = "api_key_env"


class ModelNotFound(TerminalProviderError):
    """404: the model is unknown to the endpoint, or the base URL is wrong. The run stops."""

    setting = "model"


class QuotaExceeded(TerminalProviderError):
    """429 with code insufficient_quota: the account is out of credit. The run stops."""


class RequestRejected(TerminalProviderError):
    """The endpoint refuses the request itself, whatever its inputs: a setting (``dimensions``,
    ``encoding_format``, the model, the request's shape) it does not accept. Decided from
    evidence (the error's code, param and message; a one-input probe with a known-good text
    refused the same way), never from one input's refusal. The run stops at once and every
    row stays queued: no row is marked failed for what is not its fault. ``setting`` names
    the job setting at fault, when known."""

    def __init__(self, message: str, *, setting: str | None = None, **kw) -> None:
        super().__init__(message, setting=setting, **kw)


class SpendCapReached(VectorfillError):
    """The next request would pass a daily spend cap (the job's ``max_usd_per_day``, or the
    endpoint's ``endpoint_max_usd_per_day``). Terminal for this run, which stops cleanly:
    the rows stay queued and its claims are given back. The CLI exits 4; ``serve`` waits for
    ``resets_at`` (midnight UTC) and goes on."""

    def __init__(
        self, *, job: str, setting: str, cap: float, spent: float, cost: float, resets_at, fix: str | None = None
    ) -> None:
        self.cap = cap
        self.spent = spent
        self.resets_at = resets_at
        super().__init__(
            f"the spend cap {setting}={cap:g} USD is reached: {spent:,.4f} USD spent today (UTC) and the next "
            f"request would cost {cost:,.4f} USD; nothing more is sent and the rows stay queued. The cap resets "
            f"at {resets_at:%Y-%m-%d %H:%M} UTC: run again then (`serve` waits for it), or raise it: "
            f"`vectorfill job set {job} --{setting.replace('_', '-')} USD`",
            job=job,
            setting=setting,
            fix=fix,
        )


class InputError(VectorfillError):
    """One row's text cannot be embedded; the row is recorded as failed, the run goes on."""

    def __init__(self, message: str, *, job: str | None = None, row: object = None, **kw) -> None:
        self.row = row
        super().__init__(message, job=job, **kw)


class DocumentError(VectorfillError):
    """One row's document cannot be used: the row is recorded as failed with ``reason`` (the
    ``vectorfill failures`` column) and the message naming ``uri``; the run goes on. A
    change of the row (a new object, a sync that sees a new ETag) queues it again."""

    reason = "document"
    fix = "fix the document, then `vectorfill retry JOB`"

    def __init__(self, uri: str, problem: str, *, job: str | None = None, **kw) -> None:
        self.uri = uri
        self.problem = problem
        super().__init__(f"{uri}: {problem}", job=job, **kw)


class DocumentMissing(DocumentError):
    """No object or file at the URI (S3 NoSuchKey/NoSuchBucket, a missing path)."""

    reason = "not_found"


class DocumentDenied(DocumentError):
    """The store refused to hand the object over (S3 AccessDenied/403, file permissions)."""

    reason = "access_denied"


class DocumentTooLarge(DocumentError):
    """Larger than the job's ``max_document_bytes``: never read whole (a batch's memory stays bounded)."""

    reason = "too_large"


class DocumentFormatError(DocumentError):
    """The format is unknown, or the bytes do not parse as their format (corrupt)."""

    reason = "unknown_format"

    def __init__(self, uri: str, problem: str, *, reason: str = "unknown_format", job: str | None = None, **kw) -> None:
        self.reason = reason
        super().__init__(uri, problem, job=job, **kw)


class DocumentEncrypted(DocumentError):
    """A password-protected PDF (or an encrypted office file): its text cannot be read."""

    reason = "encrypted"


class DocumentNoText(DocumentError):
    """A PDF whose pages have no text layer: a scan. OCR is not supported."""

    reason = "no_text_layer"


class DocumentEmpty(DocumentError):
    """The document parsed to no text at all (an empty file, a workbook of empty sheets)."""

    reason = "empty_document"


class DocumentStoreUnavailable(VectorfillError):
    """Transient: the document store failed for a reason that may pass (S3 503 SlowDown or
    InternalError, a timeout, a dropped connection). Retried like a provider's transient
    error; never recorded as the row's failure."""

    transient = True


class RowsFailed(VectorfillError):
    """A run went through its queue, but some rows failed (each recorded with its reason in
    ``vectorfill failures``). The flow run ends Failed with this error, the CLI exits 3, and
    ``.summary`` holds the run's :class:`~vectorfill.engine.counts.RunSummary`."""

    def __init__(self, summary: object, failed: int, job: str) -> None:
        self.summary = summary
        super().__init__(
            f"{failed:,} rows failed in this run; `vectorfill failures {job}` lists them with the reason, "
            f"`vectorfill retry {job}` queues them again",
            job=job,
        )


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same work may succeed."""
    return isinstance(exc, VectorfillError) and exc.transient


def stops_run(exc: BaseException) -> bool:
    """True for errors that make every further request pointless (auth, model, quota, a refused setting)."""
    return isinstance(
        exc, (AuthenticationError, ModelNotFound, QuotaExceeded, RequestRejected, ConfigError, SpendCapReached)
    )


def first_error(group: BaseExceptionGroup) -> BaseException:
    """The error to report from a group of concurrent failures (the lanes of a run): one
    that stopped the run, else the first."""
    leaves: list[BaseException] = []

    def walk(g: BaseExceptionGroup) -> None:
        for e in g.exceptions:
            if isinstance(e, BaseExceptionGroup):
                walk(e)
            else:
                leaves.append(e)

    walk(group)
    return next((e for e in leaves if stops_run(e)), leaves[0])


def stop_reason(exc: BaseException) -> str:
    """One line saying why a run stopped early, for the rows it gives back."""
    import asyncio

    if isinstance(exc, BaseExceptionGroup):
        exc = first_error(exc)
    if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
        return "run interrupted"
    return str(exc) or type(exc).__name__
