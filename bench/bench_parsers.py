"""How the candidate parsing libraries compare on generated documents: seconds per
document and whether the text comes out right (the choice of the ``[documents]`` extra).

Needs the candidates, which vectorfill does not install::

    pip install pypdf pypdfium2 pymupdf "markitdown[pdf,docx,xlsx]" python-docx openpyxl \\
        python-calamine ebooklib trafilatura selectolax fpdf2
    python bench/bench_parsers.py

Figures in bench/README.md ("Document parsers").
"""

from __future__ import annotations

import io
import random
import statistics
import time
from collections.abc import Callable

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "contract",
    "party",
    "shall",
    "agreement",
    "payment",
    "term",
    "notice",
    "clause",
    "section",
    "delivery",
]


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))).capitalize() + "."


def make_pdf(pages: int, rng: random.Random) -> tuple[bytes, list[str]]:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    paras = []
    for _ in range(pages):
        pdf.add_page()
        for _ in range(6):
            p = " ".join(sentence(rng) for _ in range(4))
            paras.append(p)
            pdf.multi_cell(0, 5, p)
            pdf.ln(3)
    return bytes(pdf.output()), paras


def make_docx(pages: int, rng: random.Random) -> tuple[bytes, list[str]]:
    import docx

    d = docx.Document()
    paras = []
    for _ in range(pages * 6):
        p = " ".join(sentence(rng) for _ in range(4))
        paras.append(p)
        d.add_paragraph(p)
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue(), paras


def make_xlsx(rows: int, rng: random.Random) -> tuple[bytes, list[str]]:
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    cells = []
    for i in range(rows):
        row = [f"item {i}", rng.choice(WORDS), rng.randint(1, 1000)]
        ws.append(row)
        cells.append(str(row[1]))
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue(), cells


def make_html(paragraphs: int, rng: random.Random) -> tuple[bytes, list[str]]:
    paras = [" ".join(sentence(rng) for _ in range(4)) for _ in range(paragraphs)]
    nav = "<nav><ul>" + "".join(f"<li><a href='/p{i}'>Menu entry {i}</a></li>" for i in range(30)) + "</ul></nav>"
    body = "".join(f"<p>{p}</p>" for p in paras)
    html = (
        f"<!doctype html><html><head><title>T</title><script>var x = 1;</script><style>p{{}}</style></head>"
        f"<body><header>Site header</header>{nav}<main><article><h1>Title</h1>{body}</article></main>"
        f"<aside>Related links</aside><footer>Copyright footer text</footer></body></html>"
    )
    return html.encode(), paras


def pdf_pypdf(data: bytes) -> str:
    import pypdf

    return "\n".join(p.extract_text() or "" for p in pypdf.PdfReader(io.BytesIO(data)).pages)


def pdf_pdfium(data: bytes) -> str:
    import pypdfium2

    doc = pypdfium2.PdfDocument(data)
    try:
        return "\n".join(doc[i].get_textpage().get_text_range() for i in range(len(doc)))
    finally:
        doc.close()


def pdf_pymupdf(data: bytes) -> str:
    import pymupdf

    with pymupdf.open(stream=data, filetype="pdf") as doc:
        return "\n".join(page.get_text() for page in doc)


def markitdown(ext: str) -> Callable[[bytes], str]:
    from markitdown import MarkItDown, StreamInfo

    md = MarkItDown()

    def parse(data: bytes) -> str:
        return md.convert_stream(io.BytesIO(data), stream_info=StreamInfo(extension=ext)).text_content

    return parse


def docx_python_docx(data: bytes) -> str:
    import docx

    return "\n\n".join(p.text for p in docx.Document(io.BytesIO(data)).paragraphs)


def xlsx_openpyxl(data: bytes) -> str:
    import openpyxl

    wb = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    out = []
    for ws in wb.worksheets:
        for row in ws.iter_rows(values_only=True):
            out.append("\t".join("" if v is None else str(v) for v in row))
    return "\n".join(out)


def xlsx_calamine(data: bytes) -> str:
    from python_calamine import CalamineWorkbook

    wb = CalamineWorkbook.from_filelike(io.BytesIO(data))
    out = []
    for name in wb.sheet_names:
        for row in wb.get_sheet_by_name(name).to_python():
            out.append("\t".join(str(v) for v in row))
    return "\n".join(out)


def html_trafilatura(data: bytes) -> str:
    import trafilatura

    return trafilatura.extract(data.decode(), include_comments=False) or ""


def html_selectolax(data: bytes) -> str:
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(data)
    for node in tree.css("script, style, nav, header, footer, aside, noscript, template"):
        node.decompose()
    root = tree.css_first("main") or tree.css_first("article") or tree.body
    return root.text(separator="\n", strip=True) if root is not None else ""


def measure(name: str, parse: Callable[[bytes], str], data: bytes, expected: list[str], runs: int = 3) -> None:
    times = []
    text = ""
    for _ in range(runs):
        t0 = time.perf_counter()
        text = parse(data)
        times.append(time.perf_counter() - t0)
    flat = " ".join(text.split())
    found = sum(1 for e in expected if " ".join(e.split()) in flat)
    boiler = any(b in text for b in ("Menu entry", "Copyright footer", "var x"))
    print(
        f"| {name:28} | {len(data) / 1024:8.0f} | {statistics.median(times) * 1000:9.1f} | "
        f"{found}/{len(expected)} | {'yes' if boiler else 'no'} |"
    )


def main() -> None:
    rng = random.Random(7)
    pdf, pdf_paras = make_pdf(20, rng)
    docx_bytes, docx_paras = make_docx(20, rng)
    xlsx, cells = make_xlsx(2000, rng)
    html, html_paras = make_html(120, rng)
    print("| parser | KB | ms per document | paragraphs found whole | boilerplate kept |")
    print("|---|---:|---:|---:|---|")
    for name, parse in [("pdf: pypdf", pdf_pypdf), ("pdf: pypdfium2", pdf_pdfium), ("pdf: pymupdf", pdf_pymupdf)]:
        measure(name, parse, pdf, pdf_paras)
    measure("pdf: markitdown (pdfminer)", markitdown(".pdf"), pdf, pdf_paras, runs=1)
    measure("docx: python-docx", docx_python_docx, docx_bytes, docx_paras)
    measure("docx: markitdown (mammoth)", markitdown(".docx"), docx_bytes, docx_paras)
    measure("xlsx: openpyxl read-only", xlsx_openpyxl, xlsx, cells[:200])
    measure("xlsx: python-calamine", xlsx_calamine, xlsx, cells[:200])
    measure("xlsx: markitdown (pandas)", markitdown(".xlsx"), xlsx, cells[:200], runs=1)
    measure("html: selectolax + rules", html_selectolax, html, html_paras)
    measure("html: trafilatura", html_trafilatura, html, html_paras)
    measure("html: markitdown (bs4)", markitdown(".html"), html, html_paras)


if __name__ == "__main__":
    main()
