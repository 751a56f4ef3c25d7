"""Documents made by the tests with each format's own library, and the text each holds."""

from __future__ import annotations

import io
import random

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "sigma",
    "omega",
]


def paragraphs(n: int, seed: int = 1, words: tuple[int, int] = (12, 40)) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(*words))).capitalize() + "." for _ in range(n)]


def pdf(paras: list[str], *, per_page: int = 4, password: str | None = None) -> bytes:
    """A PDF whose pages carry ``paras`` as a text layer (encrypted for a user password)."""
    from fpdf import FPDF

    doc = FPDF()
    doc.set_font("helvetica", size=11)
    for i, p in enumerate(paras):
        if i % per_page == 0:
            doc.add_page()
        doc.multi_cell(0, 5, p, new_x="LMARGIN", new_y="NEXT")
        doc.ln(4)
    if password is not None:
        from fpdf.enums import EncryptionMethod

        doc.set_encryption(
            owner_password="owner-" + password, user_password=password, encryption_method=EncryptionMethod.RC4
        )
    return bytes(doc.output())


def scanned_pdf(pages: int = 2) -> bytes:
    """A PDF of page images and no text layer, like a scan."""
    from fpdf import FPDF
    from PIL import Image, ImageDraw

    doc = FPDF()
    for n in range(pages):
        image = Image.new("L", (400, 500), 255)
        draw = ImageDraw.Draw(image)
        for y in range(40, 460, 24):  # lines of "print"
            draw.rectangle((40, y, 360 - (y * 7 + n * 13) % 120, y + 10), fill=20)
        doc.add_page()
        doc.image(image, x=10, y=10, w=180)
    return bytes(doc.output())


def docx(paras: list[str], table: list[list[str]] | None = None) -> bytes:
    import docx as python_docx

    d = python_docx.Document()
    for p in paras:
        d.add_paragraph(p)
    if table:
        t = d.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, value in enumerate(row):
                t.cell(r, c).text = value
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


def xlsx(sheets: dict[str, list[list[object]]]) -> bytes:
    import openpyxl

    wb = openpyxl.Workbook()
    wb.remove(wb.active)
    for name, rows in sheets.items():
        ws = wb.create_sheet(name)
        for row in rows:
            ws.append(row)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def epub(chapters: list[tuple[str, list[str]]]) -> bytes:
    """An EPUB of (title, paragraphs) chapters, in that reading order."""
    import tempfile
    from pathlib import Path

    from ebooklib import epub as ebook

    book = ebook.EpubBook()
    book.set_identifier("vectorfill-test")
    book.set_title("Test book")
    book.set_language("en")
    items = []
    for i, (title, paras) in enumerate(chapters, 1):
        ch = ebook.EpubHtml(title=title, file_name=f"ch{i}.xhtml", lang="en")
        ch.content = f"<h1>{title}</h1>" + "".join(f"<p>{p}</p>" for p in paras)
        book.add_item(ch)
        items.append(ch)
    book.toc = items
    book.add_item(ebook.EpubNcx())
    book.add_item(ebook.EpubNav())
    book.spine = items
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "book.epub"
        ebook.write_epub(str(path), book)
        return path.read_bytes()


def html(title: str, paras: list[str]) -> bytes:
    """A page with its boilerplate: scripts, styles, a header, navigation, an aside, a footer."""
    nav = "<nav><ul>" + "".join(f"<li><a href='/p{i}'>Menu entry {i}</a></li>" for i in range(8)) + "</ul></nav>"
    body = "".join(f"<p>{p}</p>" for p in paras)
    return (
        "<!doctype html><html><head><title>Page</title><script>var tracking = 1;</script>"
        "<style>p { color: red }</style></head><body><header>Site header</header>"
        f"{nav}<main><h1>{title}</h1>{body}</main><aside>Related links</aside>"
        "<footer>Copyright footer</footer></body></html>"
    ).encode()


BOILERPLATE = ("Menu entry", "Site header", "Related links", "Copyright footer", "tracking", "color: red")
