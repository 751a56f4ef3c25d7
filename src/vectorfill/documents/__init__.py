"""Documents by reference: the object a row's URI names, loaded and parsed to text.

The stages, one module each: :mod:`._uris` (what a URI names), :mod:`._loaders` (its
bytes, from disk or S3), :mod:`._formats` (its format: content type, extension, sniffing),
:mod:`._parsers` (its text, one parser per format), :mod:`._listing` (what a bucket prefix
or a directory holds, page by page). None of these touch the database; :mod:`.sync` (a
table kept in step with a listing) writes through :mod:`vectorfill.storage.sql`.

The engine calls :func:`read_document` for each claimed row of a document job, off the
event loop, and chunks the text as it chunks a text job's.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._formats import FORMATS, detect_format
from ._loaders import Loaded, Loader
from ._parsers import parse_document
from ._uris import Location, parse_uri

__all__ = [
    "FORMATS",
    "Document",
    "Loaded",
    "Loader",
    "Location",
    "detect_format",
    "parse_document",
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


def read_document(loader: Loader, uri: str) -> Document:
    """Load the document ``uri`` names and parse it to text (blocking: run it off the event
    loop). Raises a :class:`~vectorfill.errors.DocumentError` naming the URI and the reason
    for a document that cannot be used, :class:`~vectorfill.errors.DocumentStoreUnavailable`
    when the store failed for a reason that may pass."""
    loaded = loader.load(uri)
    fmt = detect_format(uri, loaded.data, loaded.content_type, loaded.location.name)
    size = len(loaded.data)
    text = parse_document(uri, fmt, loaded.data)
    return Document(uri, text, fmt, size)
