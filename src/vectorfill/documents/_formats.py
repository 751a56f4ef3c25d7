"""A document's format: from the content type the store gave, else the extension, else sniffing."""

from __future__ import annotations

import io
import zipfile

from vectorfill.errors import DocumentFormatError

__all__ = ["CONTENT_TYPES", "EXTENSIONS", "FORMATS", "detect_format"]

FORMATS = ("pdf", "docx", "xlsx", "epub", "html", "markdown", "text")

CONTENT_TYPES = {
    "application/pdf": "pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "application/vnd.ms-excel.sheet.macroenabled.12": "xlsx",
    "application/epub+zip": "epub",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/plain": "text",
    "text/csv": "text",
    "text/tab-separated-values": "text",
}
#: Content types that say nothing about the format (S3's default for uploads without one).
GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream", "application/x-download"})

EXTENSIONS = {
    "pdf": "pdf",
    "docx": "docx",
    "xlsx": "xlsx",
    "xlsm": "xlsx",
    "epub": "epub",
    "html": "html",
    "htm": "html",
    "xhtml": "html",
    "md": "markdown",
    "markdown": "markdown",
    "txt": "text",
    "text": "text",
    "csv": "text",
    "tsv": "text",
    "log": "text",
    "rst": "text",
}


def detect_format(uri: str, data: bytes, content_type: str | None = None, name: str = "") -> str:
    """One of :data:`FORMATS`: the content type's (when it names one), else the extension's,
    else what the bytes look like; :class:`DocumentFormatError` when none says."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind in CONTENT_TYPES:
        return CONTENT_TYPES[kind]
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if ext in EXTENSIONS:
        return EXTENSIONS[ext]
    sniffed = sniff(data)
    if sniffed is not None:
        return sniffed
    said = f"content type {kind!r}" if kind and kind not in GENERIC_TYPES else "no known extension"
    raise DocumentFormatError(
        uri,
        f"unknown format ({said}, and the bytes are none of {', '.join(FORMATS)}); "
        "give the object a known extension or content type",
    )


def sniff(data: bytes) -> str | None:
    """The format the first bytes show, or None."""
    head = data[:2048]
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        return _zip_format(data)
    if b"\x00" in head and not head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return None  # binary
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html")) or b"<html" in text[:512]:
        return "html"
    if not data.strip(b" \t\r\n\xef\xbb\xbf"):
        return "text"  # empty: parsed to nothing, and failed as empty
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the end of the sample
            return "text" if _mostly_printable(head) else None
    return "text"


def _mostly_printable(head: bytes) -> bool:
    printable = sum(1 for b in head if b >= 32 or b in (9, 10, 13))
    return printable >= 0.95 * len(head)


def _zip_format(data: bytes) -> str | None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = set(z.namelist())
            if "mimetype" in names and z.read("mimetype").strip() == b"application/epub+zip":
                return "epub"
    except (zipfile.BadZipFile, OSError, KeyError):
        return None
    if "word/document.xml" in names:
        return "docx"
    if "xl/workbook.xml" in names:
        return "xlsx"
    return None
