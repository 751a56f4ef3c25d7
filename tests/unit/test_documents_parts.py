"""The document stages without a store: URIs, format detection, the parsers' text and
reasons, and what S3's error codes mean for a row."""

from __future__ import annotations

import io
import zipfile

import pytest

import document_helpers as make
import vectorfill.documents
from vectorfill.documents import detect_format, parse_document, parse_uri
from vectorfill.documents._loaders import s3_error
from vectorfill.documents._parsers import decode_text
from vectorfill.errors import (
    DocumentDenied,
    DocumentEmpty,
    DocumentEncrypted,
    DocumentError,
    DocumentFormatError,
    DocumentMissing,
    DocumentNoText,
    DocumentStoreUnavailable,
    is_transient,
)


def test_the_public_face_is_said_out_loud():
    assert sorted(vectorfill.documents.__all__) == sorted(
        [
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
    )


def test_a_fetched_document_is_hashed_and_typed_before_it_is_parsed(tmp_path):
    import hashlib

    from vectorfill.documents import Loader, fetch_document, parse_fetched

    data = b"# Title\n\nA paragraph about tides."
    path = tmp_path / "notes.md"
    path.write_bytes(data)
    fetched = fetch_document(Loader(max_bytes=4096), str(path))
    assert (fetched.sha256, fetched.format, fetched.data) == (hashlib.sha256(data).digest(), "markdown", data)
    assert parse_fetched(fetched).text == "# Title\n\nA paragraph about tides."


@pytest.mark.parametrize(
    ("uri", "scheme", "where"),
    [
        ("/srv/docs/a b.pdf", "file", "/srv/docs/a b.pdf"),
        ("file:///srv/docs/a%20b.pdf", "file", "/srv/docs/a b.pdf"),
        ("file://localhost/srv/x.txt", "file", "/srv/x.txt"),
        ("rel/x.txt", "file", "rel/x.txt"),
        ("s3://bucket/dir/key.pdf", "s3", "bucket:dir/key.pdf"),
    ],
)
def test_uris_name_a_file_or_an_s3_object(uri, scheme, where):
    loc = parse_uri(uri)
    assert loc.scheme == scheme
    assert (str(loc.path) if scheme == "file" else f"{loc.bucket}:{loc.key}") == where


@pytest.mark.parametrize("uri", ["https://example.com/a.pdf", "gs://b/k", "s3://bucket-only", "file://otherhost/x"])
def test_unsupported_uris_fail_the_row_as_bad_uri(uri):
    with pytest.raises(DocumentFormatError) as err:
        parse_uri(uri)
    assert err.value.reason == "bad_uri" and uri in str(err.value)


def _zip(names: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in names.items():
            z.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("content_type", "name", "data", "fmt"),
    [
        ("application/pdf", "x.bin", b"anything", "pdf"),  # the content type first
        ("text/html; charset=utf-8", "x", b"<p>", "html"),
        ("binary/octet-stream", "x.docx", b"", "docx"),  # a generic type: the extension
        (None, "notes.MD", b"# hi", "markdown"),
        (None, "noext", b"%PDF-1.7 ...", "pdf"),  # no extension: sniffing
        (None, "noext", _zip({"mimetype": b"application/epub+zip", "x": b""}), "epub"),
        (None, "noext", _zip({"word/document.xml": b""}), "docx"),
        (None, "noext", _zip({"xl/workbook.xml": b""}), "xlsx"),
        (None, "noext", b"\n  <!DOCTYPE html><html>", "html"),
        (None, "noext", "plain words, café".encode(), "text"),
        (None, "noext", "Latin-1 words, café".encode("latin-1"), "text"),
    ],
)
def test_the_format_comes_from_the_content_type_else_the_extension_else_the_bytes(content_type, name, data, fmt):
    assert detect_format("u", data, content_type, name) == fmt


def test_binary_bytes_of_no_known_format_are_an_unknown_format():
    with pytest.raises(DocumentFormatError, match="unknown format") as err:
        detect_format("s3://b/blob", bytes(range(256)) * 8, "binary/octet-stream", "blob")
    assert err.value.reason == "unknown_format"


def test_text_is_decoded_as_utf8_else_windows_1252_else_latin1():
    assert decode_text("café".encode()) == "café"
    assert decode_text(b"\xef\xbb\xbfbom") == "bom"
    assert decode_text("naïve “quotes”".encode("cp1252")) == "naïve “quotes”"
    assert decode_text(b"\x81\x8d") == "\x81\x8d"  # undefined in cp1252: Latin-1


def test_each_parser_gives_the_documents_text_paragraph_by_paragraph():
    ps = make.paragraphs(5, seed=2)
    assert parse_document("u", "docx", make.docx(ps, table=[["a", "b"]])) == "\n\n".join(ps) + "\n\na | b"
    assert parse_document("u", "html", make.html("Title", ps)) == "\n\n".join(["Title", *ps])
    assert parse_document("u", "epub", make.epub([("One", ps[:2]), ("Two", ps[2:])])) == "\n\n".join(
        ["One", *ps[:2], "Two", *ps[2:]]
    )
    assert parse_document("u", "xlsx", make.xlsx({"S": [["a", 1, 2.5], [None, None], ["b", None, "c"]]})) == (
        "S\n\na\t1\t2.5\nb\t\tc"
    )
    pdf_text = parse_document("u", "pdf", make.pdf(ps))
    assert " ".join(pdf_text.split()) == " ".join(" ".join(ps).split())


@pytest.mark.parametrize(
    ("fmt", "data", "error", "reason", "words"),
    [
        ("pdf", make.pdf(["secret words"], password="pw"), DocumentEncrypted, "encrypted", "password"),
        ("pdf", make.scanned_pdf(3), DocumentNoText, "no_text_layer", "scanned: no text layer on any of its 3 pages"),
        ("pdf", b"%PDF-1.4\n" + bytes(range(256)), DocumentFormatError, "corrupt", "not a readable PDF"),
        ("docx", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(500), DocumentEncrypted, "encrypted", "encrypted"),
        ("xlsx", b"PK\x03\x04broken", DocumentFormatError, "corrupt", "XLSX"),
        ("epub", b"PK\x03\x04broken", DocumentFormatError, "corrupt", "EPUB"),
        ("text", b"  \n\t ", DocumentEmpty, "empty_document", "empty"),
        ("xlsx", make.xlsx({"Empty": []}), DocumentEmpty, "empty_document", "no text"),
    ],
)
def test_bad_documents_raise_their_reason(fmt, data, error, reason, words):
    with pytest.raises(error) as err:
        parse_document("s3://b/k", fmt, data)
    assert err.value.reason == reason and words in str(err.value) and "s3://b/k" in str(err.value)
    assert not is_transient(err.value)


class _ClientError(Exception):
    def __init__(self, code: str, status: int) -> None:
        self.response = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("NoSuchKey", 404, DocumentMissing),
        ("NoSuchBucket", 404, DocumentMissing),
        ("AccessDenied", 403, DocumentDenied),
        ("SlowDown", 503, DocumentStoreUnavailable),
        ("InternalError", 500, DocumentStoreUnavailable),
        ("SomethingNew", 502, DocumentStoreUnavailable),
        ("SomethingElse", 400, DocumentDenied),
    ],
)
def test_s3_errors_are_the_rows_fault_or_a_transient_store_failure(code, status, kind):
    error = s3_error("s3://b/k", _ClientError(code, status))
    assert type(error) is kind
    assert is_transient(error) == (kind is DocumentStoreUnavailable)
    if isinstance(error, DocumentError):
        assert error.uri == "s3://b/k" and code in str(error)
