"""One parser per format: a document's bytes to its text, paragraphs apart by a blank line
(so that the ``recursive`` chunker cuts between them).

The libraries are the ``[documents]`` extra, imported when a format is first parsed; each
was chosen by measurement (``bench/bench_parsers.py``, figures in bench/README.md):
pypdfium2 for PDF, python-docx for DOCX, python-calamine for XLSX, ebooklib for EPUB's
spine and selectolax (lexbor) for HTML and EPUB chapters. Text and Markdown need none.
Each parser maps its library's errors to the row's reason (corrupt, encrypted, no text
layer); :func:`parse_document` fails a document with no text at all as empty.
"""

from __future__ import annotations

import io
import re
import warnings
import zipfile
from collections.abc import Callable
from typing import Any

from vectorfill.errors import (
    ConfigError,
    DocumentEmpty,
    DocumentEncrypted,
    DocumentFormatError,
    DocumentNoText,
)

__all__ = ["PARSERS", "decode_text", "parse_document"]

#: The first bytes of an OLE2 container: how Office stores an encrypted .docx/.xlsx.
OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"

_BLOCKS = "h1,h2,h3,h4,h5,h6,p,li,pre,blockquote,tr,dt,dd,div,section,article,br,hr,figcaption,caption"
_BOILERPLATE = "script,style,noscript,template,nav,header,footer,aside,form,iframe,svg,button"
_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")
_BLANK_LINES = re.compile(r"\n\s*\n\s*")


def _need(module: str, fmt: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise ConfigError(
            f"parsing {fmt} documents needs {module.split('.')[0]}: pip install 'vectorfill[documents]'"
        ) from None


def tidy(text: str) -> str:
    """Spaces collapsed within lines, at most one blank line between paragraphs, no NULs
    (Postgres text cannot hold them)."""
    lines = (_SPACES.sub(" ", line).strip() for line in text.replace("\x00", "").split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def decode_text(data: bytes) -> str:
    """UTF-8 (with or without a BOM), UTF-16 with a BOM, else Windows-1252, else Latin-1
    (which decodes any bytes)."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", "replace")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", "replace")
    for encoding in ("utf-8", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            pass
    return data.decode("latin-1")


def parse_text(uri: str, data: bytes) -> str:
    return decode_text(data).replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "").strip()


def parse_html(uri: str, data: bytes) -> str:
    """The page's text without its boilerplate: scripts, styles, navigation, header,
    footer, asides and forms removed; ``<main>`` (else ``<article>``, else ``<body>``) kept."""
    lexbor = _need("selectolax.lexbor", "HTML")
    return _html_text(lexbor.LexborHTMLParser(data))


def _html_text(tree: Any) -> str:
    for node in tree.css(_BOILERPLATE):
        node.decompose()
    for node in tree.css(_BLOCKS):
        node.insert_after("\n\n")
    for node in tree.css("td,th"):
        node.insert_after("\t")
    root = tree.css_first("main") or tree.css_first("article") or tree.body or tree.root
    return tidy(root.text(separator="", strip=False)) if root is not None else ""


def parse_pdf(uri: str, data: bytes) -> str:
    """Each page's text layer (pages apart by a blank line). A password-protected PDF is
    :class:`DocumentEncrypted`; pages with no text at all (a scan) :class:`DocumentNoText`."""
    pdfium = _need("pypdfium2", "PDF")
    try:
        doc = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise DocumentEncrypted(uri, "the PDF is encrypted (password-protected); its text cannot be read") from None
        raise DocumentFormatError(uri, f"not a readable PDF: {exc}", reason="corrupt") from None
    try:
        pages = []
        for i in range(len(doc)):
            page = doc[i]
            textpage = page.get_textpage()
            pages.append(tidy(textpage.get_text_range()))
            textpage.close()
            page.close()
    except pdfium.PdfiumError as exc:
        raise DocumentFormatError(uri, f"a page of the PDF could not be read: {exc}", reason="corrupt") from None
    finally:
        doc.close()
    if pages and not any(pages):
        raise DocumentNoText(uri, f"scanned: no text layer on any of its {len(pages)} pages; OCR is not supported")
    return "\n\n".join(p for p in pages if p)


def _office_container_error(uri: str, data: bytes, what: str, exc: BaseException) -> Exception:
    if data.startswith(OLE2_MAGIC):
        return DocumentEncrypted(uri, f"the {what} file is encrypted (password-protected) or in the old binary format")
    return DocumentFormatError(uri, f"not a readable {what} file: {exc}", reason="corrupt")


def parse_docx(uri: str, data: bytes) -> str:
    """Paragraphs and tables in document order (a table's cells apart by `` | ``)."""
    docx = _need("docx", "DOCX")
    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # python-docx raises zipfile's, lxml's, KeyError, its own
        raise _office_container_error(uri, data, "DOCX", exc) from None
    from docx.table import Table

    parts = []
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            for row in block.rows:
                parts.append(" | ".join(cell.text.strip() for cell in row.cells))
            parts.append("")
        else:
            parts.append(block.text)
            parts.append("")
    return tidy("\n".join(parts))


def parse_xlsx(uri: str, data: bytes) -> str:
    """Each sheet under its name, a row a line, cells apart by a tab; empty rows skipped."""
    calamine = _need("python_calamine", "XLSX")
    try:
        workbook = calamine.CalamineWorkbook.from_filelike(io.BytesIO(data))
        sheets = []
        for name in workbook.sheet_names:
            rows = []
            for row in workbook.get_sheet_by_name(name).to_python(skip_empty_area=True):
                cells = [_cell(v) for v in row]
                if any(cells):
                    rows.append("\t".join(cells).rstrip("\t"))
            if rows:
                sheets.append(f"{name}\n\n" + "\n".join(rows))
    except Exception as exc:  # calamine's errors, zipfile's
        raise _office_container_error(uri, data, "XLSX", exc) from None
    return "\n\n".join(sheets).replace("\x00", "")


def _cell(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def parse_epub(uri: str, data: bytes) -> str:
    """The chapters in reading order (the spine), each as HTML text."""
    epub = _need("ebooklib.epub", "EPUB")
    lexbor = _need("selectolax.lexbor", "EPUB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            book = epub.read_epub(io.BytesIO(data), options={"ignore_ncx": True})
        chapters = []
        for idref, _linear in book.spine:
            item = book.get_item_with_id(idref)
            if item is None:
                continue
            tree = lexbor.LexborHTMLParser(item.get_content())
            text = _html_text(tree)
            if text:
                chapters.append(text)
    except (zipfile.BadZipFile, KeyError, epub.EpubException) as exc:
        raise DocumentFormatError(uri, f"not a readable EPUB: {exc}", reason="corrupt") from None
    except Exception as exc:  # lxml's parse errors in the package files
        raise DocumentFormatError(uri, f"not a readable EPUB: {exc}", reason="corrupt") from None
    return "\n\n".join(chapters)


PARSERS: dict[str, Callable[[str, bytes], str]] = {
    "pdf": parse_pdf,
    "docx": parse_docx,
    "xlsx": parse_xlsx,
    "epub": parse_epub,
    "html": parse_html,
    "markdown": parse_text,
    "text": parse_text,
}


def parse_document(uri: str, fmt: str, data: bytes) -> str:
    """The text of a document of format ``fmt``; :class:`DocumentEmpty` when it has none."""
    if not data.strip():
        raise DocumentEmpty(uri, "the document is empty (0 bytes of content)")
    text = PARSERS[fmt](uri, data)
    if not text.strip():
        raise DocumentEmpty(uri, f"the {fmt} document has no text")
    return text
