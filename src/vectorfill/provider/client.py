"""The embeddings client: one ``POST {base_url}/embeddings`` per request, checked strictly.

It speaks the OpenAI contract and tolerates what servers vary in (TEI, vLLM, Ollama,
Infinity, LiteLLM, gateways): a missing ``object`` or ``usage``, float lists where base64
was asked for, items without ``index`` (taken in order only when *every* item lacks it).
It is strict in what decides correctness: exactly one finite vector per input, each at
its ``index``, all of one dimension, and the expected one when that is known.

Usage::

    async with EmbeddingsClient(base_url="http://127.0.0.1:8000/v1", model="m") as c:
        result = await c.embed(["a text", "another"])
        result.vectors.shape   # (2, d), float32

The HTTP transport is injectable (``transport=httpx.MockTransport(handler)``) and every
httpx exception is translated here into :mod:`vectorfill.errors`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import logging
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

import httpx
import numpy as np
import orjson
from pydantic import SecretStr

from vectorfill.config import read_api_key
from vectorfill.errors import (
    AuthenticationError,
    ConfigError,
    InputError,
    ModelNotFound,
    ProviderError,
    QuotaExceeded,
    TerminalProviderError,
    TransientProviderError,
)
from vectorfill.provider.negotiate import Negotiator
from vectorfill.provider.tokens import usage_plausible

if TYPE_CHECKING:
    from vectorfill.config import JobSettings
    from vectorfill.records import Version

__all__ = ["Embeddings", "EmbeddingsClient", "ServerTokenizer", "parse_retry_after"]

log = logging.getLogger("vectorfill")


class _B64Decode(Protocol):
    """What is used of ``b64decode``, which pybase64 and the standard library both offer."""

    def __call__(self, s: str, /, *, validate: bool) -> bytes: ...


_b64decode: _B64Decode
try:  # SIMD base64: ~15x the standard library on a response of 1,024 x 1,536 floats
    from pybase64 import b64decode as _b64decode
except ImportError:  # declared as a dependency; the standard library keeps a bare install working
    from base64 import b64decode as _b64decode


class _ErrorDetails(TypedDict):
    """The keyword arguments every :class:`vectorfill.errors.ProviderError` made here takes."""

    job: str | None
    status: int | None
    code: str | None
    retry_after: float | None
    param: str | None


# httpx 0.28: a response's stream refers back to the response, a cycle only the cyclic GC
# frees (encode/httpx#3733); with ~8 MiB bodies, hundreds of MiB of read responses piled up
# between full collections and peak memory grew with the number of rows. Once a response
# is read its stream is not needed, so it is replaced by this empty one.
_EMPTY_STREAM = httpx.ByteStream(b"")


@dataclass(frozen=True)
class Embeddings:
    """One response: ``vectors[i]`` belongs to input ``i``."""

    vectors: np.ndarray
    model: str
    prompt_tokens: int | None
    headers: dict[str, str] = field(default_factory=dict)
    encoding: str = "float"
    """How the vectors came back: ``base64`` strings or ``float`` lists (servers that ignore
    ``encoding_format`` answer floats whatever was asked)."""


class EmbeddingsClient:
    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: SecretStr | None = None,
        dimensions: int | None = None,
        expected_dims: int | None = None,
        encoding_format: str = "base64",
        timeout_s: float = 60.0,
        key_hint: str | None = None,
        job: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 64,
        api_key_header: str = "bearer",
        api_version: str | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"base URL {base_url!r} must start with http:// or https:// (for OpenAI: https://api.openai.com/v1)",
                job=job,
            )
        if encoding_format not in ("base64", "float"):
            raise ConfigError(f"encoding_format must be base64 or float, not {encoding_format!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.dimensions = dimensions
        self.expected_dims = expected_dims or dimensions
        self.encoding_format = encoding_format
        self.job = job
        self._key = api_key
        self._key_hint = key_hint
        self._negotiator: Negotiator | None = None
        self.tokens_estimated = 0
        """Tokens counted locally because the endpoint's answers carried no ``usage``, or one
        that cannot be tokens (:meth:`usage_believed`)."""
        self.maybe_truncated = 0
        """Inputs sent that may be over the model's limit, unknown here (counted by the engine)."""
        self.tokenizer: ServerTokenizer | None = None
        """The server's own ``/tokenize`` (vLLM, TEI), when it has one and the model's
        tokenizer is not on this machine (found by :meth:`find_tokenizer`)."""
        self.usage_doubted: str | None = None
        """Why the endpoint's ``usage`` is not believed (said once, in the log), if it is not."""
        headers = {"Content-Type": "application/json", "User-Agent": "vectorfill"}
        if api_key is not None and api_key_header == "api-key":  # Azure OpenAI
            headers["api-key"] = api_key.get_secret_value()
        elif api_key is not None:
            headers["Authorization"] = f"Bearer {api_key.get_secret_value()}"
        self._params = {"api-version": api_version} if api_version else None
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            transport=transport,
            verify=_tls_for(self.base_url),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    @classmethod
    def for_version(
        cls, version: Version, *, job: str, settings: JobSettings | None = None, **kw: Any
    ) -> EmbeddingsClient:
        """The client for a job version (a :class:`vectorfill.records.Version`): its endpoint,
        model, dimensions, and the API key read now from the version's ``api_key_env``."""
        if settings is not None:
            kw.setdefault("encoding_format", settings.encoding_format)
            kw.setdefault("timeout_s", settings.timeout_s)
            kw.setdefault("max_connections", max(8, settings.concurrency * 2))
            kw.setdefault("api_key_header", settings.api_key_header)
            kw.setdefault("api_version", settings.api_version)
        return cls(
            base_url=version.base_url,
            model=version.model,
            api_key=read_api_key(version.api_key_env, job=job),
            key_hint=version.api_key_env,
            dimensions=version.dimensions,
            expected_dims=version.vector_dims,
            job=job,
            **kw,
        )

    @property
    def negotiator(self) -> Negotiator:
        """What this endpoint was found to accept (:class:`vectorfill.provider.negotiate.Negotiator`),
        shared by the run's lanes; a fresh one that remembers nothing unless one was set."""
        if self._negotiator is None:
            self._negotiator = Negotiator(self)
        return self._negotiator

    @negotiator.setter
    def negotiator(self, value: Negotiator) -> None:
        self._negotiator = value

    async def __aenter__(self) -> EmbeddingsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------------ request
    async def embed(self, texts: list[str]) -> Embeddings:
        """Embed ``texts`` in one request; raises a :mod:`vectorfill.errors` ProviderError."""
        body: dict[str, Any] = {"model": self.model, "input": texts, "encoding_format": self.encoding_format}
        if self.dimensions:
            body["dimensions"] = self.dimensions
        url = f"{self.base_url}/embeddings"
        try:
            content = orjson.dumps(body)
        except TypeError:  # a lone surrogate (U+D800-U+DFFF): not text, cannot be sent as UTF-8
            bad = next((i for i, t in enumerate(texts) if not _is_utf8(t)), None)
            raise InputError(
                f"input #{bad} contains a lone UTF-16 surrogate, which is not valid Unicode text and "
                "cannot be sent; fix the text (Postgres itself never stores one)",
                job=self.job,
                row=bad,
            ) from None
        try:
            response = await self._http.post(url, content=content, params=self._params)
        except httpx.TimeoutException as exc:
            raise TransientProviderError(
                f"no answer from {url} within the timeout ({type(exc).__name__}); "
                "the request will be retried. Raise the job's timeout_s if requests are large",
                job=self.job,
            ) from None
        except httpx.TransportError as exc:
            raise TransientProviderError(
                f"cannot reach {url}: {self._scrub(str(exc)) or type(exc).__name__}. "
                "Check --base-url and that the server is running",
                job=self.job,
            ) from None
        try:
            if response.status_code != 200:
                raise self._error(response)
            return self._parse(response, len(texts))
        finally:
            response.stream = _EMPTY_STREAM  # break the cycle: the body is freed at once

    def usage_believed(self, reported: int, texts: list[str], counted: int) -> bool:
        """Whether an answer's ``usage.prompt_tokens`` (``reported``) can be the tokens of
        ``texts`` (``counted`` here); once it was found implausible, it is not believed for
        the rest of the client's life, and the log says so once."""
        if self.usage_doubted is None and not usage_plausible(reported, texts, counted):
            self.usage_doubted = (
                f"{self.base_url}/embeddings reports usage.prompt_tokens={reported:,} for {len(texts):,} inputs "
                f"of {sum(map(len, texts)):,} characters (about {counted:,} tokens counted here): that is not "
                "tokens (characters, most likely), so tokens are counted here and marked estimated"
            )
            log.warning("job %s: %s", self.job, self.usage_doubted)
        return self.usage_doubted is None

    async def announced_input_limit(self) -> tuple[int, str] | None:
        """The model's limit on one input where the server announces it, and where: vLLM's
        ``GET /v1/models`` (``max_model_len`` of the model's card), TEI's ``GET /info``
        (``max_input_length``, at the server's root). None when neither says (Infinity's
        ``/models``, OpenAI's, LiteLLM's cards name no length); errors are ignored."""
        root = self.base_url.removesuffix("/v1")
        for url, pick in (
            (f"{self.base_url}/models", _card_limit(self.model)),
            (f"{root}/info", _info_limit),
        ):
            try:
                response = await self._http.get(url, params=self._params, timeout=10.0)
                if response.status_code != 200:
                    continue
                limit = pick(orjson.loads(response.content))
            except (httpx.HTTPError, orjson.JSONDecodeError, AttributeError, TypeError):
                continue
            if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
                return limit, url
        return None

    async def find_tokenizer(self) -> ServerTokenizer | None:
        """The server's ``POST /tokenize`` at its root, when it has one that answers for this
        model: vLLM's (``{"model", "prompt"}`` -> ``{"count", "max_model_len", "tokens"}``),
        else TEI's (``{"inputs": [...]}`` -> one list of tokens per input). None otherwise
        (a 404 from OpenAI, LiteLLM's proxy, Infinity); errors are ignored."""
        url = f"{self.base_url.removesuffix('/v1')}/tokenize"
        for shape, body in (
            ("vllm", {"model": self.model, "prompt": "hello"}),
            ("tei", {"inputs": ["hello"], "add_special_tokens": True}),
        ):
            try:
                response = await self._http.post(url, content=orjson.dumps(body), params=self._params, timeout=10.0)
                if response.status_code != 200:
                    continue
                answer = orjson.loads(response.content)
            except (httpx.HTTPError, orjson.JSONDecodeError):
                continue
            if _tokenized_count(shape, answer, 1) is not None:
                limit = answer.get("max_model_len") if isinstance(answer, dict) else None
                limit = limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None
                return ServerTokenizer(self, url, shape, limit)
        return None

    # ------------------------------------------------------------------ parsing
    def _parse(self, response: httpx.Response, n: int) -> Embeddings:
        try:
            payload = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise TransientProviderError(
                f"the endpoint answered 200 with a body that is not JSON "
                f"({_snippet(response)}); a proxy or gateway may be in the way",
                job=self.job,
                status=response.status_code,
            ) from None
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
            raise TransientProviderError(
                f"the response has no 'data' list ({_snippet(response)})",
                job=self.job,
                status=200,
                code="bad_response",
            )
        data = payload["data"]
        if len(data) != n:
            raise TransientProviderError(
                f"sent {n} inputs but the response holds {len(data)} embeddings; no vector of this request is stored",
                job=self.job,
                status=200,
                code="count_mismatch",
            )
        order = self._order(data, n)
        first = data[0].get("embedding") if data and isinstance(data[0], dict) else None
        vectors = self._vectors([data[j].get("embedding") if isinstance(data[j], dict) else None for j in order], order)
        d = vectors.shape[1]
        if self.expected_dims and d != self.expected_dims:
            # transient once (a flaky replica); if it repeats, the retries run out and the run
            # stops with this message, the rows still queued
            raise TransientProviderError(
                f"model {self.model!r} returned {d}-dimensional vectors but {self.expected_dims} "
                "were expected (the job's stored vectors or its --dimensions). Start a new model "
                "version with `vectorfill job set-model` to change dimensions",
                job=self.job,
                status=200,
                code="dimension_mismatch",
            )
        if not np.isfinite(vectors).all():
            bad = int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])
            raise TransientProviderError(
                f"the vector for input {bad} holds NaN or infinity; no vector of this request is stored",
                job=self.job,
                status=200,
                code="non_finite",
            )
        usage = payload.get("usage")
        if not isinstance(usage, dict):
            usage = {}
        tokens = usage.get("prompt_tokens", usage.get("total_tokens"))
        return Embeddings(
            vectors=vectors,
            model=str(payload.get("model") or self.model),
            prompt_tokens=int(tokens) if isinstance(tokens, (int, float)) else None,
            headers={k: v for k, v in response.headers.items() if k.startswith(("x-ratelimit", "retry-after"))},
            encoding="base64" if isinstance(first, str) else "float",
        )

    def _order(self, data: list[object], n: int) -> list[int]:
        """Positions of the items sorted by their ``index``; in order only if none has one."""
        indices = [item.get("index") if isinstance(item, dict) else None for item in data]
        if all(i is None for i in indices):
            return list(range(n))
        ints = [i for i in indices if isinstance(i, int) and not isinstance(i, bool)]
        if len(ints) != len(indices) or sorted(ints) != list(range(n)):
            raise TransientProviderError(
                f"the response's index fields are not exactly 0..{n - 1}; no vector of this request is stored",
                job=self.job,
                status=200,
                code="bad_index",
            )
        position = [0] * n
        for pos, i in enumerate(ints):
            position[i] = pos
        return position

    def _vectors(self, embeddings: list[object], positions: list[int]) -> np.ndarray:
        """The ``(n, d)`` float32 array of ``embeddings`` (in input order; ``positions`` are
        their places in ``data``, for messages).

        Base64 strings of one length are decoded (SIMD, when pybase64 is installed) and
        joined into one array in one copy; anything else (floats, odd lengths, bad base64)
        goes item by item, which also names the item at fault.
        """
        texts = [e for e in embeddings if isinstance(e, str)]
        if embeddings and len(texts) == len(embeddings):
            try:
                raws = [_b64decode(e, validate=True) for e in texts]
            except (binascii.Error, ValueError):
                raws = None
            if raws is not None:
                size = len(raws[0])
                if size and size % 4 == 0 and all(len(r) == size for r in raws):
                    return np.frombuffer(bytearray().join(raws), dtype="<f4").reshape(len(raws), size // 4)
        rows = [self._decode(e, j) for e, j in zip(embeddings, positions, strict=True)]
        dims = {len(r) for r in rows}
        if len(dims) != 1:
            raise TransientProviderError(
                f"the response mixes vector lengths {sorted(dims)}; no vector of this request is stored",
                job=self.job,
                status=200,
                code="dimension_mismatch",
            )
        return np.vstack(rows) if rows else np.zeros((0, 0), dtype=np.float32)

    def _decode(self, embedding: object, index: int) -> np.ndarray:
        if isinstance(embedding, str):
            try:
                raw = base64.b64decode(embedding, validate=True)
            except (binascii.Error, ValueError):
                raw = b"\x00"  # falls into the length check below
            if len(raw) % 4:
                raise TransientProviderError(
                    f"the base64 embedding at index {index} is not a whole number of float32 values",
                    job=self.job,
                    status=200,
                    code="bad_base64",
                )
            return np.frombuffer(raw, dtype="<f4")
        if isinstance(embedding, list) and embedding:
            try:
                return np.asarray(embedding, dtype=np.float32)
            except (TypeError, ValueError):
                pass
        raise TransientProviderError(
            f"the embedding at index {index} is neither a base64 string nor a list of numbers",
            job=self.job,
            status=200,
            code="bad_embedding",
        )

    # ------------------------------------------------------------------ errors
    def _error(self, response: httpx.Response) -> ProviderError:
        status = response.status_code
        message, code, err_type, param = _error_fields(response)
        message = self._scrub(message)
        where = f"{self.base_url}/embeddings"
        retry_after = parse_retry_after(response.headers)
        kw: _ErrorDetails = {
            "job": self.job,
            "status": status,
            "code": code,
            "retry_after": retry_after,
            "param": param,
        }
        if status in (401, 403):
            hint = f" in ${self._key_hint}" if self._key_hint else " (set --api-key-env)"
            return AuthenticationError(
                f"{where} refused the request ({status}): {message}. Check the API key{hint}; "
                "the run stops here instead of retrying",
                **kw,
            )
        if status == 400 and (err_type == "no_db_connection" or _NO_DB.search(message)):
            # LiteLLM's proxy without a database of virtual keys: a key that is not its master key
            hint = f" in ${self._key_hint}" if self._key_hint else " (set --api-key-env)"
            return AuthenticationError(
                f"{where} refused the API key ({status}: {message}): LiteLLM's proxy answers so when the key "
                f"is not its master key (LITELLM_MASTER_KEY) and it has no database of keys. Check the API key{hint}; "
                "the run stops here instead of retrying",
                **kw,
            )
        if status in (400, 422) and _UNKNOWN_MODEL.search(message):
            return ModelNotFound(
                f"{where} does not serve model {self.model!r} ({status}: {message}). Check --model "
                "(the name the server or proxy lists at /v1/models)",
                **kw,
            )
        if status == 404:
            return ModelNotFound(
                f"{where} answered 404 for model {self.model!r}: {message}. Check --model and "
                "--base-url (it should end in /v1 for most servers)",
                **kw,
            )
        if status == 429 and (code == "insufficient_quota" or err_type == "insufficient_quota"):
            return QuotaExceeded(
                f"{where} says the account is out of quota (429 insufficient_quota): {message}. "
                "Add credit or raise the quota; this is not a rate limit, so the run stops",
                **kw,
            )
        if status in (408, 409, 429) or status >= 500:
            if self._key is None and status == 500:
                # LiteLLM's proxy answers a request without a key with a bare 500
                message += (
                    "; no API key was sent (the job has no --api-key-env): if the server needs one, "
                    "set the job's --api-key-env to the variable that holds it"
                )
            return TransientProviderError(f"{where} answered {status}: {message}", **kw)
        return TerminalProviderError(f"{where} rejected the request ({status}): {message}", **kw)

    def _scrub(self, text: str) -> str:
        if self._key is not None:
            secret = self._key.get_secret_value()
            if secret:
                text = text.replace(secret, "***")
        return text


class ServerTokenizer:
    """A server's own tokenizer at its ``/tokenize``: exact counts for a model whose
    tokenizer is not on this machine, and cuts to its limit by those counts (the longest
    prefix found in a few requests, so the stored text stays the original's). Any failure
    answers None: the caller falls back to the estimate."""

    def __init__(self, client: EmbeddingsClient, url: str, shape: str, max_model_len: int | None) -> None:
        self._client = client
        self.url = url
        self.shape = shape
        self.max_model_len = max_model_len
        """The model's limit, where the tokenizer says it (vLLM's ``max_model_len``)."""
        self.requests = 0

    async def _post(self, body: dict[str, Any], n: int) -> list[int] | None:
        client = self._client
        self.requests += 1
        try:
            response = await client._http.post(self.url, content=orjson.dumps(body), params=client._params)
            if response.status_code != 200:
                return None
            return _tokenized_count(self.shape, orjson.loads(response.content), n)
        except (httpx.HTTPError, orjson.JSONDecodeError):
            return None

    async def count(self, texts: list[str]) -> list[int] | None:
        """The server's count of each of ``texts`` (special tokens included), or None."""
        if not texts:
            return []
        if self.shape == "tei":
            return await self._post({"inputs": texts, "add_special_tokens": True}, len(texts))
        counts = await asyncio.gather(*(self._post({"model": self._client.model, "prompt": t}, 1) for t in texts))
        return None if any(c is None for c in counts) else [c[0] for c in counts if c is not None]

    async def truncate(self, text: str, max_tokens: int, total: int) -> tuple[str, int] | None:
        """The longest prefix of ``text`` (of ``total`` tokens) found with at most ``max_tokens``,
        and its count: interpolated from the counts, halving when that does not close in."""
        lo, hi, at_lo, at_hi = 0, len(text), 0, total
        for step in range(24):
            if hi - lo <= 1 or at_lo == max_tokens:
                break
            if step % 2 == 0:
                guess = lo + (hi - lo) * (max_tokens - at_lo) // max(1, at_hi - at_lo)
            else:
                guess = (lo + hi) // 2
            guess = min(hi - 1, max(lo + 1, guess))
            counted = await self.count([text[:guess]])
            if counted is None:
                return None
            if counted[0] <= max_tokens:
                lo, at_lo = guess, counted[0]
            else:
                hi, at_hi = guess, counted[0]
        return (text[:lo], at_lo) if lo else None


def _tokenized_count(shape: str, answer: object, n: int) -> list[int] | None:
    """The counts in a ``/tokenize`` answer for ``n`` inputs (vLLM's ``count``, or its
    ``tokens``; TEI's list of token lists), or None when it is not that shape."""
    if shape == "vllm" and isinstance(answer, dict) and n == 1:
        count = answer.get("count")
        if isinstance(count, int) and not isinstance(count, bool):
            return [count]
        tokens = answer.get("tokens")
        return [len(tokens)] if isinstance(tokens, list) else None
    if shape == "tei" and isinstance(answer, list) and len(answer) == n and all(isinstance(t, list) for t in answer):
        return [len(t) for t in answer]
    return None


def _card_limit(model: str) -> Callable[[object], object]:
    """Reads ``max_model_len`` from ``model``'s card in a ``/v1/models`` list (vLLM)."""

    def pick(body: object) -> object:
        cards = body.get("data") if isinstance(body, dict) else None
        for card in cards if isinstance(cards, list) else []:
            if isinstance(card, dict) and card.get("id") == model:
                return card.get("max_model_len")
        return None

    return pick


def _info_limit(body: object) -> object:
    """Reads ``max_input_length`` from TEI's ``/info``."""
    return body.get("max_input_length") if isinstance(body, dict) else None


_NO_DB = re.compile(r"no connected db", re.I)
# "Invalid model name passed in model=nope" (LiteLLM), "The model `x` does not exist" (OpenAI,
# vLLM), "model 'x' not found" (Ollama, TEI's router)
_UNKNOWN_MODEL = re.compile(
    r"invalid model name|model\b.{0,80}\b(?:does not exist|not found)|unknown model|no such model", re.I
)


def _tls_for(base_url: str) -> ssl.SSLContext | bool:
    """TLS settings for a client of ``base_url``: httpx's defaults (the CA bundle, verified)
    for https://. A plain http:// endpoint (a local or self-hosted server) never uses TLS, so
    its client gets a context that trusts no CA instead of loading the bundle, which costs
    ~40 ms per client on these machines, at the start of every run: should a TLS connection
    ever be made through it, verification fails rather than passes unchecked."""
    if base_url.startswith("http://"):
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname, no CAs
    return True


def _is_utf8(text: object) -> bool:
    try:
        str(text).encode("utf-8")
        return isinstance(text, str)
    except UnicodeEncodeError:
        return False


def _snippet(response: httpx.Response, limit: int = 200) -> str:
    text = response.content[:limit].decode("utf-8", "replace").strip().replace("\n", " ")
    ctype = response.headers.get("content-type", "?")
    return f"content-type {ctype}: {text!r}"


def _error_fields(response: httpx.Response) -> tuple[str, str | None, str | None, str | None]:
    """(message, code, type, param) from OpenAI's ``{"error": {...}}`` or the shapes others
    use: TEI's ``{"message", "code", "error_type"}`` (and ``{"error": "...", "error_type"}``),
    vLLM's ``{"object": "error", "message", "type", "code"}``, FastAPI's ``{"detail": [{"loc",
    "msg"}]}`` (Infinity), Azure's ``{"error": {"code", "message"}}``; any other body is
    quoted (an HTML page from a gateway, a plain-text answer)."""
    try:
        payload = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return f"non-JSON body, {_snippet(response)}", None, None, None
    if isinstance(payload, dict):
        detail = payload.get("detail")
        if "error" not in payload and isinstance(detail, list) and detail and isinstance(detail[0], dict):
            first = detail[0]
            loc = first.get("loc")
            if not isinstance(loc, list):
                loc = []
            where = ".".join(str(p) for p in loc if p != "body")
            message = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}" for d in detail[:3])
            return message, None, first.get("type"), (where or None)
        err = payload.get("error", payload)
        if isinstance(err, str):
            return err, None, payload.get("error_type"), None
        if isinstance(err, dict):
            message = err.get("message") or err.get("detail") or payload.get("detail") or str(err)[:300]
            code = err.get("code")
            param = err.get("param")
            return (
                str(message),
                (str(code) if code is not None else None),
                err.get("type") or err.get("error_type"),
                str(param) if param else None,
            )
    return str(payload)[:300], None, None, None


def parse_retry_after(headers: httpx.Headers | Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
