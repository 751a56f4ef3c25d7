"""Load a document's bytes: from this machine's disk, or from S3 through boto3.

The one edge where the stores' errors become vectorfill's (:data:`S3_CODES`): a missing
object or file, access denied, too large (checked before the body is read, so a huge
object never enters memory), or a transient store failure (a 503, a timeout) that is
retried and is never the row's fault. S3 is reached with the usual AWS environment:
credentials, ``AWS_REGION`` and ``AWS_ENDPOINT_URL`` (an S3-compatible store) as boto3
reads them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from vectorfill.errors import (
    ConfigError,
    DocumentDenied,
    DocumentError,
    DocumentFormatError,
    DocumentMissing,
    DocumentStoreUnavailable,
    DocumentTooLarge,
)

from ._uris import Location, parse_uri

__all__ = ["S3_CODES", "Loaded", "Loader", "s3_client"]

#: S3 error codes and what they mean for the row: gone, refused, or a transient failure.
S3_CODES: dict[str, type[Exception]] = {
    "NoSuchKey": DocumentMissing,
    "NoSuchBucket": DocumentMissing,
    "404": DocumentMissing,
    "NotFound": DocumentMissing,
    "AccessDenied": DocumentDenied,
    "403": DocumentDenied,
    "Forbidden": DocumentDenied,
    "AllAccessDisabled": DocumentDenied,
    "InvalidObjectState": DocumentDenied,  # archived (Glacier) objects
    "SlowDown": DocumentStoreUnavailable,
    "ServiceUnavailable": DocumentStoreUnavailable,
    "InternalError": DocumentStoreUnavailable,
    "RequestTimeout": DocumentStoreUnavailable,
    "Throttling": DocumentStoreUnavailable,
    "ThrottlingException": DocumentStoreUnavailable,
}


@dataclass(frozen=True)
class Loaded:
    """A document's bytes as loaded, with what the store said its content type is."""

    location: Location
    data: bytes
    content_type: str | None = None


def s3_client(timeout_s: float = 60.0) -> Any:
    """A boto3 S3 client from the environment (``AWS_ENDPOINT_URL`` included), with no
    retries of its own: a transient failure is raised, and retried by the caller."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ConfigError("s3:// documents need boto3: pip install 'vectorfill[documents]'") from None
    config = Config(
        connect_timeout=min(timeout_s, 10.0),
        read_timeout=timeout_s,
        retries={"total_max_attempts": 1},
        signature_version="s3v4",
    )
    return boto3.session.Session().client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None, config=config)


class Loader:
    """Loads documents by URI, each at most ``max_bytes`` long. The S3 client is made on
    the first ``s3://`` URI and reused (boto3's clients are thread-safe)."""

    def __init__(self, *, max_bytes: int, timeout_s: float = 60.0) -> None:
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._s3: Any = None

    def load(self, uri: str) -> Loaded:
        location = parse_uri(uri)
        if location.scheme == "s3":
            return self._load_s3(location)
        return self._load_file(location)

    def _too_large(self, location: Location, size: int) -> DocumentTooLarge:
        return DocumentTooLarge(
            location.uri,
            f"{_size(size)}, over the job's max_document_bytes of {_size(self.max_bytes)}; "
            "it is not read (raise the limit with --max-document-mb to embed it)",
        )

    def _load_file(self, location: Location) -> Loaded:
        assert location.path is not None
        try:
            with open(location.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > self.max_bytes:
                    raise self._too_large(location, size)
                data = f.read(self.max_bytes + 1)
        except FileNotFoundError:
            raise DocumentMissing(location.uri, "no such file") from None
        except PermissionError:
            raise DocumentDenied(location.uri, "permission denied reading the file") from None
        except IsADirectoryError:
            raise DocumentFormatError(location.uri, "is a directory, not a document", reason="bad_uri") from None
        except DocumentError:
            raise
        except OSError as exc:
            raise DocumentStoreUnavailable(f"{location.uri}: reading the file failed: {exc}") from None
        if len(data) > self.max_bytes:  # grew since the stat
            raise self._too_large(location, len(data))
        return Loaded(location, data)

    def _load_s3(self, location: Location) -> Loaded:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        if self._s3 is None:
            self._s3 = s3_client(self.timeout_s)
        try:
            answer = self._s3.get_object(Bucket=location.bucket, Key=location.key)
            body = answer["Body"]
            size = int(answer.get("ContentLength") or 0)
            if size > self.max_bytes:
                body.close()
                raise self._too_large(location, size)
            data = body.read(self.max_bytes + 1)
            body.close()
        except NoCredentialsError:
            raise ConfigError(
                "no AWS credentials found for s3:// documents: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or a profile), and AWS_ENDPOINT_URL for an S3-compatible store"
            ) from None
        except ClientError as exc:
            raise s3_error(location.uri, exc) from None
        except BotoCoreError as exc:  # connection refused or reset, timeouts
            raise DocumentStoreUnavailable(f"{location.uri}: the S3 store failed: {exc}") from None
        if len(data) > self.max_bytes:
            raise self._too_large(location, len(data))
        return Loaded(location, data, answer.get("ContentType"))


def _size(n: int) -> str:
    return f"{n / 2**20:,.1f} MB" if n >= 2**20 else f"{n / 1024:,.1f} KB"


def s3_error(uri: str, exc: Any) -> Exception:
    """botocore's ``ClientError`` as the error it means for the row (:data:`S3_CODES`);
    a 5xx not in the table is transient, any other code a refusal."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    message = error.get("Message") or code
    kind = S3_CODES.get(code)
    if kind is None:
        kind = DocumentStoreUnavailable if status >= 500 or status == 429 else DocumentDenied
    if kind is DocumentStoreUnavailable:
        return DocumentStoreUnavailable(f"{uri}: the S3 store answered {status} {code}: {message}")
    if kind is DocumentMissing:
        return DocumentMissing(uri, f"no such object (S3 {status} {code})")
    return DocumentDenied(uri, f"access denied (S3 {status} {code}: {message})")
