"""What a bucket prefix or a local directory holds, page by page (never all at once).

A listing yields pages of :class:`Listed` objects, at most ``page_size`` each: S3's
``ListObjectsV2`` pages as the store sends them, a directory's entries as ``os.scandir``
finds them. A listing of 100,000 objects is never held in memory; the caller writes each
page on before asking for the next.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vectorfill.errors import ConfigError, DocumentStoreUnavailable

from ._loaders import s3_client

__all__ = ["Listed", "Listing", "list_source"]

PAGE_SIZE = 1000


@dataclass(frozen=True)
class Listed:
    """One object: the URI a document job loads, its ETag (for a file, its modification
    time and size: a rename keeps it, an edit changes it), size and last modification."""

    uri: str
    etag: str | None
    size: int
    last_modified: datetime


@dataclass(frozen=True)
class Listing:
    """A source to list: ``prefix`` is what every URI of it starts with (the rows a sync
    may delete), ``pages`` the listing itself, lazily."""

    prefix: str
    pages: Iterator[list[Listed]]


def list_source(source: str, *, page_size: int = PAGE_SIZE, timeout_s: float = 60.0) -> Listing:
    """``s3://bucket/prefix`` (every object under the prefix) or a local directory (every
    file under it, hidden ones skipped, symbolic links to directories not followed)."""
    if source.startswith("s3://"):
        bucket, _, prefix = source[len("s3://") :].partition("/")
        if not bucket:
            raise ConfigError(f"{source!r}: write s3://BUCKET or s3://BUCKET/PREFIX")
        return Listing(f"s3://{bucket}/{prefix}", _s3_pages(bucket, prefix, page_size, timeout_s))
    if "://" in source and not source.startswith("file://"):
        raise ConfigError(f"{source!r}: documents sync lists s3://BUCKET/PREFIX or a local directory")
    path = Path(source.removeprefix("file://")).resolve()
    if not path.is_dir():
        raise ConfigError(f"{source!r} is not a directory (documents sync lists a directory or s3://BUCKET/PREFIX)")
    return Listing(str(path) + os.sep, _dir_pages(path, page_size))


def _s3_pages(bucket: str, prefix: str, page_size: int, timeout_s: float) -> Iterator[list[Listed]]:
    from botocore.exceptions import BotoCoreError, ClientError

    client: Any = s3_client(timeout_s)
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size}
    )
    try:
        for page in pages:
            yield [
                Listed(
                    f"s3://{bucket}/{o['Key']}", str(o.get("ETag", "")).strip('"') or None, o["Size"], o["LastModified"]
                )
                for o in page.get("Contents", ())
                if not o["Key"].endswith("/")  # folder markers
            ]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError"):
            raise DocumentStoreUnavailable(f"listing s3://{bucket}/{prefix} failed: {status} {code}") from None
        raise ConfigError(f"listing s3://{bucket}/{prefix} was refused: {code} ({status})") from None
    except BotoCoreError as exc:
        raise DocumentStoreUnavailable(f"listing s3://{bucket}/{prefix} failed: {exc}") from None


def _dir_pages(root: Path, page_size: int) -> Iterator[list[Listed]]:
    page: list[Listed] = []
    stack = [str(root)]
    while stack:  # depth first, one directory's handle open at a time
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                        continue
                    if not entry.is_file():
                        continue
                    st = entry.stat()
                    page.append(
                        Listed(
                            entry.path,
                            f"{st.st_mtime_ns:x}-{st.st_size:x}",
                            st.st_size,
                            datetime.fromtimestamp(st.st_mtime_ns / 1e9, UTC),
                        )
                    )
                    if len(page) >= page_size:
                        yield page
                        page = []
        except FileNotFoundError:  # removed while listed
            continue
    if page:
        yield page
