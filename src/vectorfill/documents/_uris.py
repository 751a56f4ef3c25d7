"""Where a document lives: a local path, a ``file://`` URI or an ``s3://bucket/key`` URI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from vectorfill.errors import DocumentFormatError

__all__ = ["Location", "parse_uri"]


@dataclass(frozen=True)
class Location:
    """A parsed URI: ``scheme`` is ``file`` (``path`` set) or ``s3`` (``bucket`` and ``key`` set)."""

    uri: str
    scheme: str
    path: Path | None = None
    bucket: str | None = None
    key: str | None = None

    @property
    def name(self) -> str:
        """The object's base name, whose extension hints at its format."""
        if self.path is not None:
            return self.path.name
        return (self.key or "").rsplit("/", 1)[-1]


def parse_uri(uri: str) -> Location:
    """``/a/b.pdf``, ``rel/b.pdf``, ``file:///a/b.pdf`` or ``s3://bucket/key``; anything
    else (``https://``, ``gs://``) is refused with the row's failure (an unsupported URI)."""
    text = uri.strip()
    if text.startswith("s3://"):
        parts = urlsplit(text)
        key = parts.path.lstrip("/")
        if not parts.netloc or not key:
            raise DocumentFormatError(uri, "an s3:// URI needs a bucket and a key: s3://BUCKET/KEY", reason="bad_uri")
        return Location(uri, "s3", bucket=parts.netloc, key=key)
    if text.startswith("file://"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise DocumentFormatError(uri, "file:// URIs name a path on this machine (file:///path)", reason="bad_uri")
        return Location(uri, "file", path=Path(unquote(parts.path)))
    scheme = text.split("://", 1)[0] if "://" in text else None
    if scheme is not None:
        raise DocumentFormatError(uri, f"{scheme}:// is not supported; use a path, file:// or s3://", reason="bad_uri")
    return Location(uri, "file", path=Path(text))
