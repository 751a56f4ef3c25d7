"""Documents by reference: the object a row's URI names, loaded and parsed to text.

The stages, one module each: :mod:`._uris` (what a URI names), :mod:`._loaders` (its
bytes, from disk or S3), :mod:`._formats` (its format: content type, extension, sniffing),
:mod:`._parsers` (its text, one parser per format), :mod:`._listing` (what a bucket prefix
or a directory holds, page by page). None of these touch the database; :mod:`.sync` (a
table kept in step with a listing) writes through :mod:`vectorfill.storage.sql`.

The engine calls :func:`fetch_document` for each claimed row of a document job, off the
event loop (its bytes loaded and hashed, its format detected), then, unless the bytes are
the ones its chunks were made from, :func:`parse_fetched`, and chunks the text as it
chunks a text job's. :func:`read_document` is the two at once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ._formats import FORMATS, detect_format
from ._loaders import Loaded, Loader
from ._parsers import parse_document
from ._uris import Location, parse_uri

__all__ = [
    "FORMATS",
    "Document",
    "Fetched",
    "Loaded",
    "Loader",
    "Location",
    "detect_format",
    "fetch_document",
    "parse_document",
    "parse_fetched",
    "parse_uri",
    "read_document",
]


@dataclass(frozen=True)
class Document:
    """A document read: its text, its format, and the size of its bytes."""

    uri: str
    text: str
    format: str
    size: int


@dataclass(frozen=True)
class Fetched:
    """A document's bytes as loaded, their sha256 and their format (not yet parsed)."""

    uri: str
    data: bytes
    format: str
    sha256: bytes


def fetch_document(loader: Loader, uri: str) -> Fetched:
    """Load the document ``uri`` names, hash its bytes and detect its format (blocking: run
    it off the event loop). Raises as :func:`read_document` does for the load and format."""
    loaded = loader.load(uri)
    fmt = detect_format(uri, loaded.data, loaded.content_type, loaded.location.name)
    return Fetched(uri, loaded.data, fmt, hashlib.sha256(loaded.data).digest())


def parse_fetched(fetched: Fetched) -> Document:
    """Parse fetched bytes to text (blocking). Raises a
    :class:`~vectorfill.errors.DocumentError` for a document that cannot be used."""
    text = parse_document(fetched.uri, fetched.format, fetched.data)
    return Document(fetched.uri, text, fetched.format, len(fetched.data))


def read_document(loader: Loader, uri: str) -> Document:
    """Load the document ``uri`` names and parse it to text (blocking: run it off the event
    loop). Raises a :class:`~vectorfill.errors.DocumentError` naming the URI and the reason
    for a document that cannot be used, :class:`~vectorfill.errors.DocumentStoreUnavailable`
    when the store failed for a reason that may pass."""
    return parse_fetched(fetch_document(loader, uri))
