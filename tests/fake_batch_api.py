"""The Files and Batches endpoints of the fake provider (OpenAI's Batch API for embeddings).

Mounted by :class:`fake_provider.FakeProvider` (as ``provider.batch_api``); the shapes are
OpenAI's, close enough that the real ``openai`` client works against it unchanged:

* ``POST /v1/files`` (multipart, ``purpose=batch``), ``GET /v1/files/{id}``,
  ``GET /v1/files/{id}/content``;
* ``POST /v1/batches``, ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``,
  ``GET /v1/batches`` (newest first, ``limit`` and ``after``; ``has_more``, ``last_id``).

A batch moves through its statuses with time (``stage_s`` seconds per stage, measured
from its creation): ``validating`` -> ``in_progress`` -> ``finalizing`` -> ``completed``.
Validation is as strict as OpenAI's: it fails the batch (status ``failed``, ``errors.data[]``
with ``code``, ``line``, ``message``, ``param``, OpenAI's codes and messages) for a line
that is not a JSON object (``invalid_json_line``), a missing ``custom_id``, ``method``,
``url`` or ``body`` (``missing_required_parameter``), one of another type, a method other
than ``POST`` or a body without ``model`` or ``input`` (``invalid_request``), a
``custom_id`` seen before in the file (``duplicate_custom_id``), a url other than the
batch's endpoint (``invalid_url``), a model other than the first line's
(``mismatched_model``) or not served (``model_not_found``); and for more than
``max_requests`` requests, more than ``max_inputs`` embedding inputs, and enqueued
tokens over ``token_limit`` (``token_limit_exceeded``, counting the batches still running).
Each line's request is answered as ``POST /v1/embeddings`` would be (the same vectors);
successful lines go to the output file, failed ones (an empty input, an input over the
model's context) to the error file; both files are shuffled.

Scripted behaviour, for the next batches created:

* ``expire_next(done_fraction)``: the batch expires with that share of its lines done and
  the rest in the error file with code ``batch_expired``;
* ``hold_next()``: the batch stays ``in_progress`` until ``release()``;
* ``fail_lines_when(predicate, status)``: lines with a matching input fail (a 400 is an
  input-level refusal; a 500 a server error);
* ``cancel`` (the endpoint) moves a running batch to ``cancelling`` then ``cancelled``, with
  half its lines done when it was in progress.

Counters: ``submitted_inputs`` (inputs in batches created), ``billed_inputs`` and
``billed_tokens`` (inputs answered with a 200: what the account pays), ``embedded`` (those
texts, in order of processing).
"""

from __future__ import annotations

import email.parser
import email.policy
import hmac
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vectorfill.local.embeddings_server.app import EmbeddingCall, EmbeddingResult, openai_error, render_embeddings
from vectorfill.local.embeddings_server.encoders import truncate_vectors

__all__ = ["FakeBatches"]

DAY = 86_400


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    metadata: dict[str, str]
    created: float  # clock time
    created_at: int
    script: dict[str, Any]
    status: str = "validating"
    lines: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0
    inputs: int = 0
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})
    stamps: dict[str, int] = field(default_factory=dict)
    cancel_requested: float | None = None
    processed: bool = False


class FakeBatches:
    """State and routes of the fake Files and Batches endpoints (thread-safe counters)."""

    def __init__(
        self,
        encoder,
        *,
        api_key: str | None = None,
        stage_s: float = 0.05,
        max_requests: int = 50_000,
        max_inputs: int = 50_000,
        max_file_bytes: int = 200 * 1024 * 1024,
        token_limit: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        seed: int = 0,
    ) -> None:
        self.encoder = encoder
        self.api_key = api_key
        self._settings = dict(
            stage_s=stage_s,
            max_requests=max_requests,
            max_inputs=max_inputs,
            max_file_bytes=max_file_bytes,
            token_limit=token_limit,
            clock=clock,
        )
        self._seed = seed
        self.stage_s = stage_s
        self.max_requests = max_requests
        self.max_inputs = max_inputs
        self.max_file_bytes = max_file_bytes
        self.token_limit = token_limit
        self.clock = clock
        self._random = random.Random(seed)
        self._lock = threading.RLock()
        self.files: dict[str, _File] = {}
        self.batches: dict[str, _Batch] = {}
        self._order: list[str] = []  # batch ids, oldest first
        self._scripts: list[dict[str, Any]] = []
        self._line_rules: list[tuple[Callable[[str], bool], int]] = []
        self.held: set[str] = set()
        self.submitted_inputs = 0
        self.billed_inputs = 0
        self.billed_tokens = 0
        self.embedded: list[str] = []
        self.created = 0
        self.cancelled = 0

    def reset(self) -> None:
        """Forget every file and batch, zero the counters, drop the scripts and go back to
        the settings it was made with (a provider shared by several tests)."""
        with self._lock:
            for key, value in self._settings.items():
                setattr(self, key, value)
            self._random = random.Random(self._seed)
            self.files = {}
            self.batches = {}
            self._order = []
            self._scripts = []
            self._line_rules = []
            self.held = set()
            self.submitted_inputs = 0
            self.billed_inputs = 0
            self.billed_tokens = 0
            self.embedded = []
            self.created = 0
            self.cancelled = 0

    # ------------------------------------------------------------------ scripting
    def expire_next(self, done_fraction: float = 0.5) -> None:
        with self._lock:
            self._scripts.append({"expire": done_fraction})

    def hold_next(self) -> None:
        with self._lock:
            self._scripts.append({"hold": True})

    def release(self) -> None:
        """Let held batches finish."""
        with self._lock:
            self.held.clear()

    def fail_lines_when(self, predicate: Callable[[str], bool], status: int = 400) -> None:
        with self._lock:
            self._line_rules.append((predicate, status))

    def routes(self) -> list[Route]:
        return [
            Route("/v1/files", self._upload, methods=["POST"]),
            Route("/v1/files/{file_id}", self._file, methods=["GET"]),
            Route("/v1/files/{file_id}/content", self._content, methods=["GET"]),
            Route("/v1/batches", self._create, methods=["POST"]),
            Route("/v1/batches", self._list, methods=["GET"]),
            Route("/v1/batches/{batch_id}", self._retrieve, methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", self._cancel, methods=["POST"]),
        ]

    # ------------------------------------------------------------------ files
    def _denied(self, request: Request) -> Response | None:
        if self.api_key is None:
            return None
        auth = request.headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            return openai_error(401, "Incorrect API key provided.", code="invalid_api_key")
        return None

    async def _upload(self, request: Request) -> Response:
        if (denied := self._denied(request)) is not None:
            return denied
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            return openai_error(400, "Expected a multipart/form-data body with 'file' and 'purpose'.")
        raw = await request.body()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + raw
        )
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
        purpose = fields.get("purpose", (None, b""))[1].decode()
        if "file" not in fields:
            return openai_error(400, "Missing required parameter: 'file'.", param="file")
        if purpose != "batch":
            return openai_error(400, f"This fake only accepts purpose 'batch', not {purpose!r}.", param="purpose")
        filename, content = fields["file"]
        if len(content) > self.max_file_bytes:
            return openai_error(
                400,
                f"File is too large ({len(content)} bytes); batch input files may be up to {self.max_file_bytes} bytes.",
                param="file",
            )
        f = self._add_file(filename or "upload.jsonl", "batch", content)
        return Response(orjson.dumps(f.as_dict()), media_type="application/json")

    def _add_file(self, filename: str, purpose: str, content: bytes) -> _File:
        with self._lock:
            f = _File(f"file-{uuid.uuid4().hex[:24]}", filename, purpose, content, int(time.time()))
            self.files[f.id] = f
            return f

    def _found_file(self, request: Request) -> _File | Response:
        """The file the request names; or the refusal (key, 404) to answer."""
        if (denied := self._denied(request)) is not None:
            return denied
        f = self.files.get(request.path_params["file_id"])
        if f is None:
            return openai_error(404, "No such File object.", code="file_not_found")
        return f

    async def _file(self, request: Request) -> Response:
        f = self._found_file(request)
        return f if isinstance(f, Response) else Response(orjson.dumps(f.as_dict()), media_type="application/json")

    async def _content(self, request: Request) -> Response:
        f = self._found_file(request)
        return f if isinstance(f, Response) else Response(f.content, media_type="application/octet-stream")

    # ------------------------------------------------------------------ batches
    async def _create(self, request: Request) -> Response:
        if (denied := self._denied(request)) is not None:
            return denied
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return openai_error(400, "We could not parse the JSON body of your request.")
        file_id = body.get("input_file_id")
        if body.get("endpoint") not in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"):
            return openai_error(
                400,
                f"Invalid value: '{body.get('endpoint')}'. Supported values are: '/v1/chat/completions', "
                "'/v1/completions', '/v1/embeddings', and '/v1/responses'.",
                param="endpoint",
                code="invalid_value",
            )
        if body.get("endpoint") != "/v1/embeddings":
            return openai_error(400, "This fake serves embeddings batches only.", param="endpoint")
        if body.get("completion_window") != "24h":
            return openai_error(400, "Invalid value for 'completion_window': only '24h' is supported.")
        metadata = body.get("metadata") or {}
        if (
            not isinstance(metadata, dict)
            or len(metadata) > 16
            or any(not isinstance(v, str) or len(v) > 512 or len(k) > 64 for k, v in metadata.items())
        ):
            return openai_error(400, "Invalid 'metadata': up to 16 string pairs.", param="metadata")
        if file_id not in self.files:
            return openai_error(404, f"No such File object: {file_id}", param="input_file_id")
        with self._lock:
            script = self._scripts.pop(0) if self._scripts else {}
            batch = _Batch(
                id=f"batch_{uuid.uuid4().hex[:24]}",
                input_file_id=file_id,
                endpoint=body["endpoint"],
                metadata=metadata,
                created=self.clock(),
                created_at=int(time.time()),
                script=script,
            )
            if script.get("hold"):
                self.held.add(batch.id)
            self.batches[batch.id] = batch
            self._order.append(batch.id)
            self.created += 1
        return self._render(batch)

    def _batch(self, request: Request) -> _Batch | Response:
        """The batch the request names, moved on to now; or the refusal (key, 404) to answer."""
        if (denied := self._denied(request)) is not None:
            return denied
        batch = self.batches.get(request.path_params["batch_id"])
        if batch is None:
            return openai_error(404, "No batch found.", code="batch_not_found")
        self._advance(batch)
        return batch

    async def _retrieve(self, request: Request) -> Response:
        batch = self._batch(request)
        return batch if isinstance(batch, Response) else self._render(batch)

    async def _cancel(self, request: Request) -> Response:
        batch = self._batch(request)
        if isinstance(batch, Response):
            return batch
        with self._lock:
            if batch.status in ("validating", "in_progress"):
                batch.status = "cancelling"
                batch.cancel_requested = self.clock()
                batch.stamps["cancelling_at"] = int(time.time())
                self.cancelled += 1
            elif batch.status not in ("cancelling",):
                return openai_error(400, f"Cannot cancel a batch with status {batch.status}.")
        return self._render(batch)

    async def _list(self, request: Request) -> Response:
        if (denied := self._denied(request)) is not None:
            return denied
        limit = int(request.query_params.get("limit", 20))
        after = request.query_params.get("after")
        with self._lock:
            ids = list(reversed(self._order))
        if after:
            ids = ids[ids.index(after) + 1 :] if after in ids else []
        page = ids[:limit]
        for i in page:
            self._advance(self.batches[i])
        data = [self._object(self.batches[i]) for i in page]
        body = {
            "object": "list",
            "data": data,
            "first_id": page[0] if page else None,
            "last_id": page[-1] if page else None,
            "has_more": len(ids) > limit,
        }
        return Response(orjson.dumps(body), media_type="application/json")

    # ------------------------------------------------------------------ the work
    def _advance(self, batch: _Batch) -> None:
        """Move ``batch`` on by the time elapsed since it was created."""
        with self._lock:
            now = self.clock()
            elapsed = now - batch.created
            if batch.status == "validating" and elapsed >= self.stage_s:
                self._validate(batch)
            if batch.status == "cancelling":
                assert batch.cancel_requested is not None
                if now - batch.cancel_requested >= self.stage_s:
                    done = 0.5 if batch.stamps.get("in_progress_at") else 0.0
                    self._finish(batch, "cancelled", done_fraction=done)
                return
            if batch.status == "in_progress" and elapsed >= 2 * self.stage_s and batch.id not in self.held:
                if "expire" in batch.script:
                    self._finish(batch, "expired", done_fraction=float(batch.script["expire"]))
                    return
                batch.status = "finalizing"
                batch.stamps["finalizing_at"] = int(time.time())
            if batch.status == "finalizing" and elapsed >= 3 * self.stage_s:
                self._finish(batch, "completed", done_fraction=1.0)

    def _validate(self, batch: _Batch) -> None:
        content = self.files[batch.input_file_id].content
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()
        lines: list[dict[str, Any]] = []
        models: set[str] = set()
        inputs = tokens = 0
        for n, raw in enumerate(content.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                line = None
            if not isinstance(line, dict):
                errors.append(_line_error("invalid_json_line", n, "This line is not parseable as valid JSON."))
                continue
            found = _line_errors(line, n, batch.endpoint, seen)
            errors.extend(found)
            if found:
                continue
            body = line["body"]
            models.add(body["model"])
            if len(models) > 1:
                errors.append(
                    _line_error(
                        "mismatched_model",
                        n,
                        f"The provided model '{body['model']}' for this request does not match the rest of the "
                        "batch. Each batch must contain requests for a single model.",
                        "body.model",
                    )
                )
                continue
            if body["model"] != self.encoder.name:
                errors.append(
                    _line_error(
                        "model_not_found",
                        n,
                        f"The provided model '{body['model']}' is not supported by the Batch API.",
                        "body.model",
                    )
                )
                continue
            texts = body["input"]
            texts = [texts] if isinstance(texts, str) else texts if isinstance(texts, list) else []
            inputs += len(texts)
            tokens += sum(self.encoder.count_tokens([t for t in texts if isinstance(t, str)]))
            lines.append(line)
        if not lines and not errors:
            errors.append(
                {"code": "empty_file", "line": None, "message": "The batch input file is empty.", "param": None}
            )
        if len(lines) > self.max_requests:
            errors.append(
                {
                    "code": "too_many_tasks",
                    "line": None,
                    "message": f"The batch input file has {len(lines)} requests; the limit is {self.max_requests}.",
                    "param": None,
                }
            )
        if inputs > self.max_inputs:
            errors.append(
                {
                    "code": "too_many_tasks",
                    "line": None,
                    "message": f"The batch has {inputs} embedding inputs; /v1/embeddings batches are limited to {self.max_inputs}.",
                    "param": None,
                }
            )
        if self.token_limit is not None:
            enqueued = sum(
                b.tokens
                for b in self.batches.values()
                if b.status in ("in_progress", "finalizing") and b.id != batch.id
            )
            if enqueued + tokens > self.token_limit:
                errors.append(
                    {
                        "code": "token_limit_exceeded",
                        "line": None,
                        "message": f"Enqueued token limit reached for {self.encoder.name} in organization org-fake. "
                        f"Limit: {self.token_limit:,} enqueued tokens. Please try again once some in_progress batches have been completed.",
                        "param": None,
                    }
                )
        batch.counts["total"] = len(lines)
        if errors:
            batch.status = "failed"
            batch.errors = errors
            batch.stamps["failed_at"] = int(time.time())
            return
        batch.lines, batch.tokens, batch.inputs = lines, tokens, inputs
        self.submitted_inputs += inputs
        batch.status = "in_progress"
        batch.stamps["in_progress_at"] = int(time.time())

    def _answer(self, line: dict[str, Any]) -> tuple[int, dict[str, Any], list[str], int]:
        """The response to one line's request: (status, body, texts billed, tokens billed)."""
        body = line["body"]  # validated: an object with this encoder's model and an input
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            return 400, _err("'input' must be a non-empty string or array of non-empty strings.", None), [], 0
        for predicate, status in self._line_rules:
            for i, t in enumerate(texts):
                if predicate(t):
                    return status, _err(f"input[{i}] was refused by the fake provider's rule.", None), [], 0
        counts = self.encoder.count_tokens(texts)
        for i, n in enumerate(counts):
            if n > self.encoder.max_tokens:
                return (
                    400,
                    _err(
                        f"This model's maximum context length is {self.encoder.max_tokens} tokens, however input[{i}] has {n} tokens.",
                        "context_length_exceeded",
                    ),
                    [],
                    0,
                )
        dims = body.get("dimensions")
        vectors = self.encoder.encode(texts)
        if dims is not None and dims < vectors.shape[1]:
            vectors = truncate_vectors(vectors, dims)
        call = EmbeddingCall(self.encoder, texts, counts, body.get("encoding_format") or "float", dims)
        rendered = render_embeddings(EmbeddingResult(call, vectors))
        return 200, rendered, texts, sum(counts)

    def _finish(self, batch: _Batch, status: str, *, done_fraction: float) -> None:
        order = list(range(len(batch.lines)))
        done = set(order[: round(len(order) * done_fraction)])
        outputs: list[bytes] = []
        failures: list[bytes] = []
        for i, line in enumerate(batch.lines):
            rid = f"batch_req_{uuid.uuid4().hex[:24]}"
            cid = line.get("custom_id")
            if i not in done:
                if status == "expired":
                    failures.append(
                        orjson.dumps(
                            {
                                "id": rid,
                                "custom_id": cid,
                                "response": None,
                                "error": {
                                    "code": "batch_expired",
                                    "message": "This request could not be executed before the completion window expired.",
                                },
                            }
                        )
                    )
                elif status == "cancelled":
                    failures.append(
                        orjson.dumps(
                            {
                                "id": rid,
                                "custom_id": cid,
                                "response": None,
                                "error": {
                                    "code": "batch_cancelled",
                                    "message": "This request was cancelled before it was executed.",
                                },
                            }
                        )
                    )
                continue
            code, body, texts, tokens = self._answer(line)
            entry = {
                "id": rid,
                "custom_id": cid,
                "response": {"status_code": code, "request_id": uuid.uuid4().hex, "body": body},
                "error": None,
            }
            (outputs if code == 200 else failures).append(orjson.dumps(entry, option=orjson.OPT_SERIALIZE_NUMPY))
            if code == 200:
                self.billed_inputs += len(texts)
                self.billed_tokens += tokens
                self.embedded.extend(texts)
                batch.counts["completed"] += 1
            else:
                batch.counts["failed"] += 1
        if status == "expired":
            batch.counts["failed"] += len(batch.lines) - len(done)
        self._random.shuffle(outputs)
        self._random.shuffle(failures)
        if outputs:
            batch.output_file_id = self._add_file(
                f"{batch.id}_output.jsonl", "batch_output", b"\n".join(outputs) + b"\n"
            ).id
        if failures:
            batch.error_file_id = self._add_file(
                f"{batch.id}_error.jsonl", "batch_output", b"\n".join(failures) + b"\n"
            ).id
        batch.status = status
        batch.processed = True
        batch.stamps[f"{status}_at"] = int(time.time())

    # ------------------------------------------------------------------ rendering
    def _object(self, batch: _Batch) -> dict[str, Any]:
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": batch.status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": batch.created_at,
            "in_progress_at": batch.stamps.get("in_progress_at"),
            "expires_at": batch.created_at + DAY,
            "finalizing_at": batch.stamps.get("finalizing_at"),
            "completed_at": batch.stamps.get("completed_at"),
            "failed_at": batch.stamps.get("failed_at"),
            "expired_at": batch.stamps.get("expired_at"),
            "cancelling_at": batch.stamps.get("cancelling_at"),
            "cancelled_at": batch.stamps.get("cancelled_at"),
            "request_counts": dict(batch.counts),
            "metadata": batch.metadata,
            "model": self.encoder.name,
        }

    def _render(self, batch: _Batch) -> Response:
        with self._lock:
            return Response(orjson.dumps(self._object(batch)), media_type="application/json")


def _err(message: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


def _line_error(code: str, line: int | None, message: str, param: str | None = None) -> dict[str, Any]:
    """One entry of a failed batch's ``errors.data``, in OpenAI's shape."""
    return {"code": code, "line": line, "message": message, "param": param}


_TYPES = {
    "custom_id": (str, "a string"),
    "method": (str, "a string"),
    "url": (str, "a string"),
    "body": (dict, "an object"),
}


def _line_errors(line: dict[str, Any], n: int, endpoint: str, seen: set[str]) -> list[dict[str, Any]]:
    """What OpenAI's validation says of one request line of a batch for ``endpoint`` (the
    codes, messages and params its Batch API answers with): every field present and of its
    type, ``custom_id`` unique in the file, ``method`` POST, ``url`` the batch's endpoint,
    a ``body`` with ``model`` and ``input``."""
    errors: list[dict[str, Any]] = []
    for name, (kind, spelled) in _TYPES.items():
        if name not in line:
            errors.append(_line_error("missing_required_parameter", n, f"Missing required parameter: '{name}'.", name))
        elif not isinstance(line[name], kind):
            errors.append(
                _line_error(
                    "invalid_request",
                    n,
                    f"Invalid type for '{name}': expected {spelled}, but got {type(line[name]).__name__} instead.",
                    name,
                )
            )
    if errors:
        return errors
    if line["custom_id"] in seen:
        errors.append(
            _line_error(
                "duplicate_custom_id",
                n,
                "The custom_id for this request is a duplicate of another request. The custom_id parameter must "
                "be unique for each request in a batch.",
                "custom_id",
            )
        )
    seen.add(line["custom_id"])
    if line["method"] != "POST":
        errors.append(
            _line_error(
                "invalid_request", n, f"Invalid value: '{line['method']}'. Supported values are: 'POST'.", "method"
            )
        )
    if line["url"] != endpoint:
        errors.append(
            _line_error("invalid_url", n, "The URL provided for this request does not match the batch endpoint.", "url")
        )
    for name in ("model", "input"):
        if name not in line["body"]:
            errors.append(
                _line_error("invalid_request", n, f"{name.capitalize()} parameter is required.", f"body.{name}")
            )
    if not isinstance(line["body"].get("model", ""), str):
        errors.append(_line_error("invalid_request", n, "Model must be a string.", "body.model"))
    return errors
