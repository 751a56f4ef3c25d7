"""The OpenAI Batch API for embeddings: upload a JSONL file, create a batch, poll it,
download its output and error files, cancel it, list batches (paged).

The protocol (OpenAI's, and Azure OpenAI's)::

    POST /v1/files            multipart, purpose=batch, one request a line:
                              {"custom_id", "method": "POST", "url": "/v1/embeddings", "body": {...}}
    POST /v1/batches          {"input_file_id", "endpoint": "/v1/embeddings",
                               "completion_window": "24h", "metadata": {...}}
    GET  /v1/batches/{id}     validating -> in_progress -> finalizing -> completed,
                              or failed, expired, cancelling -> cancelled
    GET  /v1/files/{id}/content   output / error JSONL: {"id", "custom_id",
                              "response": {"status_code", "body"} | null, "error": {...} | null}
    POST /v1/batches/{id}/cancel, GET /v1/batches?after=&limit=

Limits (:data:`MAX_REQUESTS`, :data:`MAX_FILE_BYTES`, :data:`MAX_EMBEDDING_INPUTS`) are
checked before upload; the provider's per-model cap on enqueued tokens shows up later, as a
batch that fails validation with code ``token_limit_exceeded`` (:func:`failure_code`).
Every httpx error is translated into :mod:`vectorfill.errors`; the API key is never in a
message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import orjson
from pydantic import SecretStr

from vectorfill.config import read_api_key
from vectorfill.errors import (
    AuthenticationError,
    ConfigError,
    QuotaExceeded,
    TerminalProviderError,
    TransientProviderError,
)
from vectorfill.provider.client import _error_fields, _ErrorDetails, _tls_for, parse_retry_after

if TYPE_CHECKING:
    from vectorfill.records import Version

__all__ = [
    "ACTIVE",
    "COMPLETION_WINDOW",
    "ENDPOINT",
    "FINISHED",
    "MAX_EMBEDDING_INPUTS",
    "MAX_FILE_BYTES",
    "MAX_REQUESTS",
    "BatchInfo",
    "BatchLine",
    "BatchesClient",
    "failure_code",
    "parse_lines",
    "request_line",
]

ENDPOINT = "/v1/embeddings"
COMPLETION_WINDOW = "24h"
#: Requests in one input file.
MAX_REQUESTS = 50_000
#: Bytes of one input file.
MAX_FILE_BYTES = 200 * 1024 * 1024
#: Embedding inputs across all the requests of one batch.
MAX_EMBEDDING_INPUTS = 50_000

#: Statuses of a batch still running; the others are final.
ACTIVE = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
FINISHED = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass(frozen=True)
class BatchInfo:
    """The fields of a batch object that vectorfill uses."""

    id: str
    status: str
    input_file_id: str | None
    output_file_id: str | None
    error_file_id: str | None
    metadata: dict[str, str]
    request_counts: dict[str, int]
    errors: list[dict[str, Any]]
    created_at: int | None

    @classmethod
    def of(cls, payload: dict[str, Any]) -> BatchInfo:
        errors = payload.get("errors") or {}
        return cls(
            id=str(payload["id"]),
            status=str(payload.get("status")),
            input_file_id=payload.get("input_file_id") or None,
            output_file_id=payload.get("output_file_id") or None,  # "" on some servers: none
            error_file_id=payload.get("error_file_id") or None,
            metadata=dict(payload.get("metadata") or {}),
            request_counts=dict(payload.get("request_counts") or {}),
            errors=list(errors.get("data") or []) if isinstance(errors, dict) else [],
            created_at=payload.get("created_at"),
        )


def failure_code(batch: BatchInfo) -> str | None:
    """The code of a failed batch's first error (``token_limit_exceeded``, ``too_many_tasks``...)."""
    return str(batch.errors[0].get("code")) if batch.errors and batch.errors[0].get("code") else None


def request_line(custom_id: str, body: dict[str, Any]) -> bytes:
    """One line of an input file (with its newline)."""
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}) + b"\n"


@dataclass(frozen=True)
class BatchLine:
    """One line of an output or error file."""

    custom_id: str
    status: int | None
    """The request's HTTP status; None when it never ran (``error`` says why)."""
    body: Any
    error_code: str | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and isinstance(self.body, dict)


def parse_lines(content: bytes) -> list[BatchLine]:
    """The lines of an output or error file, in file order (which is no order: match them by
    ``custom_id``). A line that is not JSON or has no ``custom_id`` is skipped: its rows are
    then missing from the results and given back for a retry."""
    lines: list[BatchLine] = []
    for raw in content.splitlines():
        if not raw.strip():
            continue
        try:
            entry = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("custom_id"), str):
            continue
        response = entry.get("response") if isinstance(entry.get("response"), dict) else None
        error = entry.get("error") if isinstance(entry.get("error"), dict) else None
        status = response.get("status_code") if response else None
        body = response.get("body") if response else None
        code = message = None
        if error:
            code, message = error.get("code"), error.get("message")
        elif isinstance(body, dict) and isinstance(body.get("error"), dict):
            code, message = body["error"].get("code"), body["error"].get("message")
        lines.append(
            BatchLine(
                custom_id=entry["custom_id"],
                status=int(status) if isinstance(status, int) else None,
                body=body,
                error_code=str(code) if code else None,
                message=str(message or ""),
            )
        )
    return lines


@dataclass
class BatchesClient:
    """Files and Batches endpoints of one OpenAI-compatible base URL (``.../v1``)."""

    base_url: str
    api_key: SecretStr | None = None
    job: str | None = None
    key_hint: str | None = None
    timeout_s: float = 300.0
    transport: httpx.AsyncBaseTransport | None = None
    _http: httpx.AsyncClient = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base URL {self.base_url!r} must start with http:// or https://", job=self.job)
        self.base_url = self.base_url.rstrip("/")
        headers = {"User-Agent": "vectorfill"}
        if self.api_key is not None:
            headers["Authorization"] = f"Bearer {self.api_key.get_secret_value()}"
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(self.timeout_s, connect=10.0),
            transport=self.transport,
            verify=_tls_for(self.base_url),
        )

    @classmethod
    def for_version(cls, version: Version, *, job: str, **kw: Any) -> BatchesClient:
        return cls(
            base_url=version.base_url,
            api_key=read_api_key(version.api_key_env, job=job),
            job=job,
            key_hint=version.api_key_env,
            **kw,
        )

    async def __aenter__(self) -> BatchesClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------------ calls
    async def upload(self, content: bytes, filename: str = "vectorfill-batch.jsonl") -> str:
        """Upload an input file (``purpose=batch``); returns its file id."""
        if len(content) > MAX_FILE_BYTES:
            raise ConfigError(
                f"a batch input file of {len(content):,} bytes is over the limit of {MAX_FILE_BYTES:,}", job=self.job
            )
        payload = await self._call(
            "POST",
            "/files",
            data={"purpose": "batch"},
            files={"file": (filename, content, "application/jsonl")},
        )
        return str(payload["id"])

    async def create(self, input_file_id: str, metadata: dict[str, str]) -> BatchInfo:
        payload = await self._call(
            "POST",
            "/batches",
            json={
                "input_file_id": input_file_id,
                "endpoint": ENDPOINT,
                "completion_window": COMPLETION_WINDOW,
                "metadata": metadata,
            },
        )
        return BatchInfo.of(payload)

    async def retrieve(self, batch_id: str) -> BatchInfo:
        return BatchInfo.of(await self._call("GET", f"/batches/{batch_id}"))

    async def cancel(self, batch_id: str) -> BatchInfo:
        return BatchInfo.of(await self._call("POST", f"/batches/{batch_id}/cancel"))

    async def content(self, file_id: str) -> bytes:
        """The bytes of a file (an output or error file)."""
        response = await self._send("GET", f"/files/{file_id}/content")
        return response.content

    async def list(self, page_size: int = 100) -> AsyncIterator[BatchInfo]:
        """Every batch of the account, newest first, page by page (``after`` = last id)."""
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if after:
                params["after"] = after
            payload = await self._call("GET", "/batches", params=params)
            data = payload.get("data") or []
            for item in data:
                yield BatchInfo.of(item)
            if not payload.get("has_more") or not data:
                return
            after = payload.get("last_id") or data[-1]["id"]

    # ------------------------------------------------------------------ transport
    async def _call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        response = await self._send(method, path, **kw)
        try:
            payload = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise TransientProviderError(
                f"{self.base_url}{path} answered {response.status_code} with a body that is not JSON",
                job=self.job,
                status=response.status_code,
            ) from None
        if not isinstance(payload, dict):
            raise TransientProviderError(f"{self.base_url}{path} answered with no JSON object", job=self.job)
        return payload

    async def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        url = f"{self.base_url}{path}"
        try:
            response = await self._http.request(method, url, **kw)
        except httpx.TimeoutException as exc:
            raise TransientProviderError(
                f"no answer from {url} within {self.timeout_s:g} s ({type(exc).__name__})", job=self.job
            ) from None
        except httpx.TransportError as exc:
            raise TransientProviderError(
                f"cannot reach {url}: {self._scrub(str(exc)) or type(exc).__name__}", job=self.job
            ) from None
        if response.status_code >= 300:
            raise self._error(response, url)
        return response

    def _error(self, response: httpx.Response, where: str) -> Exception:
        status = response.status_code
        message, code, err_type, param = _error_fields(response)
        message = self._scrub(message)
        kw: _ErrorDetails = {
            "job": self.job,
            "status": status,
            "code": code,
            "retry_after": parse_retry_after(response.headers),
            "param": param,
        }
        if status in (401, 403):
            hint = f" in ${self.key_hint}" if self.key_hint else " (set --api-key-env)"
            return AuthenticationError(
                f"{where} refused the request ({status}): {message}. Check the API key{hint}", **kw
            )
        if status == 429 and (code == "insufficient_quota" or err_type == "insufficient_quota"):
            return QuotaExceeded(f"{where}: the account is out of quota (429 insufficient_quota): {message}", **kw)
        if status in (408, 409, 429) or status >= 500:
            return TransientProviderError(f"{where} answered {status}: {message}", **kw)
        if status == 404:
            return TerminalProviderError(
                f"{where} answered 404: {message}. Does this endpoint offer the Batch API (OpenAI and Azure "
                "OpenAI do; most self-hosted servers do not)?",
                **kw,
            )
        return TerminalProviderError(f"{where} refused the request ({status}): {message}", **kw)

    def _scrub(self, text: str) -> str:
        if self.api_key is not None and self.api_key.get_secret_value():
            text = text.replace(self.api_key.get_secret_value(), "***")
        return text
