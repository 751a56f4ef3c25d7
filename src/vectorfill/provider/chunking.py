"""Cutting a row's text into chunks: pure functions, no I/O.

Sizes are tokens of the model's own tokenizer (:func:`vectorfill.provider.tokens.counter_for`):
exact for cl100k (OpenAI's models) and the bundled MiniLM (whose 2 special tokens are
counted in), and for other models ``ceil(UTF-8 bytes / 3)``, an over-estimate for most
text, so chunks come out smaller than asked, never larger. Every chunk's input (the
template applied) is counted with that counter before it is returned: no chunk is over
``size``.

Cuts are never made inside a character, nor between a character and the combining marks,
variation selectors, emoji modifiers or zero-width joiner that belong to it.

Two chunkers:

``tokens``
    windows of ``size`` tokens, each starting ``size - overlap`` tokens after the one before.
    Simple, but an edit that changes the length of the text shifts every later window.

``recursive``
    the text is split at paragraphs (blank lines), pieces still over the size at lines,
    then sentences, then words, then token windows (a 50,000-character "word"); separators
    stay with the piece before them, so the pieces cover the text exactly. Pieces are then
    merged up to ``size``. So that one edited paragraph changes few chunks, the merge is
    anchored on the content: the gap after a piece is an *anchor* when a hash of the
    piece's text falls under a threshold proportional to its tokens (about one anchor per
    :data:`SECTION_SIZES` x ``size`` tokens), and no chunk spans an anchor. Anchors do not
    depend on what comes before them, so an edit changes only the chunks between the
    anchors around it (and only those from the edited piece on, because the merge is
    greedy from the anchor before): measured, one edited paragraph of a text of 60
    paragraphs (~5,000 tokens) changes 1.6 chunks of 400 tokens on average, 5 at most, over
    120 edits; ``bench/bench_chunks.py`` measures 1.5 re-sent a document. The price: chunks
    average ~62% of ``size`` (``SECTION_SIZES`` trades one against the other).

``overlap`` repeats the end of the previous chunk at the start of the next (``tokens``:
exactly ``overlap`` tokens; ``recursive``: whole pieces of at most ``overlap`` tokens).
"""

from __future__ import annotations

import hashlib
import math
import re
import string
import unicodedata
from dataclasses import dataclass

import numpy as np

from vectorfill.config import ChunkSettings
from vectorfill.provider.tokens import ByteEstimate, Cl100k, HFTokenizer, TokenCounter

__all__ = ["SECTION_SIZES", "Chunk", "TooManyChunks", "chunk_fields", "chunk_text", "render_template"]

#: Mean tokens between anchors of the recursive chunker, in chunk sizes.
SECTION_SIZES = 1.0


class TooManyChunks(ValueError):
    """The text would make more chunks than ``max_chunks``."""


@dataclass(frozen=True)
class Chunk:
    seq: int
    text: str
    """The exact input: the template applied to ``source[start:end]``."""
    start: int
    end: int
    """Character offsets of the chunk in the row's text (overlap included)."""
    tokens: int
    """The counter's count of ``text`` (exact when the tokenizer is known)."""


# ----------------------------------------------------------------- templates
def chunk_fields(chunking: ChunkSettings) -> tuple[str, ...]:
    """The source columns a chunk template names (read beside the text)."""
    if chunking.template is None:
        return ()
    names = (f for _lit, f, _spec, _conv in string.Formatter().parse(chunking.template) if f and f != "chunk")
    return tuple(dict.fromkeys(names))


def render_template(template: str | None, chunk: str, fields: dict[str, str | None] | None = None) -> str:
    """``"{title}: {chunk}"`` with the row's fields (None renders as nothing)."""
    if template is None:
        return chunk
    out: list[str] = []
    for literal, field, _spec, _conv in string.Formatter().parse(template):
        out.append(literal)
        if field == "chunk":
            out.append(chunk)
        elif field:
            out.append((fields or {}).get(field) or "")
    return "".join(out)


# ----------------------------------------------------------------- token boundaries
def _joins_previous(ch: str) -> bool:
    """True for a character that belongs to the one before it (no cut before it)."""
    o = ord(ch)
    return (
        unicodedata.combining(ch) != 0
        or o == 0x200D  # zero-width joiner
        or 0xFE00 <= o <= 0xFE0F  # variation selectors
        or 0x1F3FB <= o <= 0x1F3FF  # emoji skin-tone modifiers
        or 0xE0020 <= o <= 0xE007F  # tag characters (flag sequences)
        or 0xE0100 <= o <= 0xE01EF
        or unicodedata.category(ch) == "Mn"
    )


def _safe(text: str, i: int) -> int:
    """``i`` moved back to the start of its character cluster (never a cut inside one)."""
    while 0 < i < len(text) and (_joins_previous(text[i]) or text[i - 1] == "\u200d"):
        i -= 1
    return i


def _byte_to_char(text: str, byte_offsets: np.ndarray) -> np.ndarray:
    """Character offsets of UTF-8 byte offsets (one inside a character: that character's start)."""
    raw = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    starts = (raw & 0xC0) != 0x80
    before = np.concatenate(([0], np.cumsum(starts)))  # char starts in raw[:o]
    inside = np.zeros(len(raw) + 1, dtype=np.int64)  # 1 where a byte continues a character
    inside[:-1] = ~starts
    return np.take(before, byte_offsets) - np.take(inside, byte_offsets)


class _Tokens:
    """One counter's view of a text: token boundaries as character offsets."""

    def __init__(self, counter: TokenCounter) -> None:
        self.counter = counter
        self.overhead = 2 if isinstance(counter, HFTokenizer) else 0  # [CLS] and [SEP]

    def count(self, text: str) -> int:
        if isinstance(self.counter, ByteEstimate):
            return math.ceil(len(text.encode("utf-8", "surrogatepass")) / 3) if text else 0
        return self.counter.count([text])[0]

    def boundaries(self, text: str) -> list[int]:
        """Character offsets where each token starts, then ``len(text)``: non-decreasing,
        never inside a character."""
        c = self.counter
        out: list[int]
        if isinstance(c, Cl100k):
            tokens = c._enc.encode_ordinary(text)
            lengths = np.fromiter((len(b) for b in c._enc.decode_tokens_bytes(tokens)), dtype=np.int64)
            offsets = np.concatenate(([0], np.cumsum(lengths)))
            out = _byte_to_char(text, offsets).tolist()
        elif isinstance(c, HFTokenizer):
            enc = c._tok.encode(text, add_special_tokens=False)
            out = [s for s, _ in enc.offsets] + [len(text)]
            out[0] = 0
        else:  # bytes/3
            size = len(text.encode("utf-8", "surrogatepass"))
            out = _byte_to_char(text, np.arange(0, size + 3, 3).clip(max=size)).tolist()
        for i in range(1, len(out)):  # monotone, even where a tokenizer's offsets are not
            if out[i] < out[i - 1]:
                out[i] = out[i - 1]
        out[-1] = len(text)
        return out


# ----------------------------------------------------------------- the chunkers
def chunk_text(
    text: str,
    settings: ChunkSettings,
    counter: TokenCounter,
    *,
    limit: int | None = None,
    fields: dict[str, str | None] | None = None,
) -> list[Chunk]:
    """The chunks of ``text`` (``chunker="none"``: the whole text, one chunk). ``limit`` is
    the model's input limit (a chunk is never larger); ``fields`` the row's columns for the
    template. Raises :class:`TooManyChunks` above ``settings.max_chunks``."""
    toks = _Tokens(counter)
    if not settings.enabled:
        rendered = render_template(settings.template, text, fields)
        return [Chunk(0, rendered, 0, len(text), toks.count(rendered))]
    size = min(settings.size, limit) if limit else settings.size
    fixed = toks.count(render_template(settings.template, "", fields)) if settings.template else toks.overhead
    budget = max(1, size - fixed)
    overlap = min(settings.overlap, budget - 1)
    if not text:
        return []
    if settings.chunker == "tokens":
        spans = _windows(text, toks, 0, len(text), budget, overlap)
    else:
        spans = _merge(text, toks, _pieces(text, toks, budget), budget, overlap)
    if len(spans) > settings.max_chunks:
        raise TooManyChunks(
            f"makes {len(spans):,} chunks of at most {size} tokens, over the limit of {settings.max_chunks:,} "
            "(raise it with --max-chunks, or use a larger --chunk-size)"
        )
    chunks: list[Chunk] = []
    for s, e in spans:
        while True:
            rendered = render_template(settings.template, text[s:e], fields)
            n = toks.count(rendered)
            if n <= size or e - s <= 1:
                break
            e = _shrink(text, toks, s, e, n - size)  # the pieces' sum was short: cut; _cover takes the rest
        chunks.append(Chunk(len(chunks), rendered, s, e, n))
    return _cover(text, toks, chunks, settings, size, fields)


def _cover(
    text: str,
    toks: _Tokens,
    chunks: list[Chunk],
    settings: ChunkSettings,
    size: int,
    fields: dict[str, str | None] | None,
) -> list[Chunk]:
    """Chunks shrunk by the exact check leave a gap before the next: chunk the gap too."""
    out: list[Chunk] = []
    covered = 0
    for c in chunks:
        if c.start > covered:  # a gap left by a shrunk chunk
            for s, e in _windows(text, toks, covered, c.start, max(1, size - toks.overhead), 0):
                rendered = render_template(settings.template, text[s:e], fields)
                out.append(Chunk(len(out), rendered, s, e, toks.count(rendered)))
        out.append(Chunk(len(out), c.text, c.start, c.end, c.tokens))
        covered = max(covered, c.end)
    if len(out) > settings.max_chunks:
        raise TooManyChunks(f"makes {len(out):,} chunks, over the limit of {settings.max_chunks:,}")
    return out


def _shrink(text: str, toks: _Tokens, s: int, e: int, over: int) -> int:
    """A cut before ``e`` that drops at least ``over`` tokens (at a safe boundary)."""
    b = toks.boundaries(text[s:e])
    keep = max(1, len(b) - 1 - over)
    cut = s + _safe(text[s:e], b[keep])
    return cut if cut > s else s + max(1, b[keep])


def _windows(text: str, toks: _Tokens, start: int, end: int, budget: int, overlap: int) -> list[tuple[int, int]]:
    """Windows of ``budget`` tokens over ``text[start:end]``, each ``budget - overlap`` tokens on."""
    part = text[start:end]
    raw = toks.boundaries(part)
    b = [_safe(part, x) for x in raw]
    n = len(b) - 1
    spans: list[tuple[int, int]] = []
    i = 0
    while i < n:
        j = min(i + budget, n)
        while j < n and b[j] <= b[i]:  # one character cluster longer than the window
            j += 1
        cut = b[j] if b[j] > b[i] else raw[j]
        spans.append((start + b[i], start + cut))
        if j >= n:
            break
        nxt = max(i + 1, j - overlap)
        while nxt < j and b[nxt] <= b[i]:
            nxt += 1
        i = nxt
    return spans


#: Split levels of the recursive chunker: paragraphs, lines, sentences, words.
_LEVELS = (
    re.compile(r"\n[ \t\r\f\v]*\n\s*"),
    re.compile(r"\n\s*"),
    re.compile(r"(?<=[.!?;:])\s+|(?<=[。！？；])\s*"),
    re.compile(r"\s+"),
)


#: Above this many characters per token of budget, the whole text is split without being
#: counted first (English runs ~4 characters a cl100k token; very repetitive text can run
#: more, and is then split into more chunks than it needs, each still within the size).
_COUNT_WHOLE_CHARS = 16


def _pieces(text: str, toks: _Tokens, budget: int) -> list[tuple[int, int, int]]:
    """``(start, end, tokens)`` pieces covering the text, each within ``budget`` tokens."""
    out: list[tuple[int, int, int]] = []

    def split(s: int, e: int, level: int) -> None:
        # a text of many times the budget in characters is not counted (a whole document
        # would cost a full pass of the tokenizer): split; its pieces are counted
        if level > 0 or e - s <= _COUNT_WHOLE_CHARS * budget:
            n = toks.count(text[s:e]) - toks.overhead
            if n <= budget:
                out.append((s, e, max(n, 0)))
                return
        if level == len(_LEVELS):
            for ws, we in _windows(text, toks, s, e, budget, 0):
                out.append((ws, we, toks.count(text[ws:we]) - toks.overhead))
            return
        cuts = [m.end() for m in _LEVELS[level].finditer(text, s, e) if s < m.end() < e and m.start() > s]
        if not cuts:
            split(s, e, level + 1)
            return
        prev = s
        for c in [*cuts, e]:
            m = toks.count(text[prev:c]) - toks.overhead
            if m > budget:
                split(prev, c, level + 1)
            else:
                out.append((prev, c, max(m, 0)))
            prev = c

    split(0, len(text), 0)
    return out


def _anchor(text: str, piece: tuple[int, int, int], budget: int) -> bool:
    """Whether the gap after ``piece`` is an anchor: its hash under a threshold proportional
    to its tokens (so anchors come about every ``SECTION_SIZES * budget`` tokens)."""
    s, e, t = piece
    h = int.from_bytes(hashlib.blake2b(text[s:e].encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")
    return h / 2**64 < t / (SECTION_SIZES * budget)


def _merge(
    text: str, toks: _Tokens, pieces: list[tuple[int, int, int]], budget: int, overlap: int
) -> list[tuple[int, int]]:
    """Greedy merge of pieces up to ``budget`` tokens, never across an anchor."""
    spans: list[tuple[int, int]] = []
    cur: list[tuple[int, int, int]] = []
    tokens = 0
    for i, p in enumerate(pieces):
        if cur and tokens + p[2] > budget:
            spans.append((cur[0][0], cur[-1][1]))
            cur, tokens = _tail(cur, overlap, budget - p[2]), 0
            tokens = sum(q[2] for q in cur)
        cur.append(p)
        tokens += p[2]
        if i + 1 < len(pieces) and _anchor(text, p, budget):
            spans.append((cur[0][0], cur[-1][1]))
            cur = _tail(cur, overlap, budget - pieces[i + 1][2])
            tokens = sum(q[2] for q in cur)
    if cur and (not spans or cur[-1][1] > spans[-1][1]):
        spans.append((cur[0][0], cur[-1][1]))
    return spans


def _tail(cur: list[tuple[int, int, int]], overlap: int, room: int) -> list[tuple[int, int, int]]:
    """The last whole pieces of ``cur`` within ``overlap`` tokens (and the room left)."""
    if overlap <= 0:
        return []
    out: list[tuple[int, int, int]] = []
    total = 0
    for p in reversed(cur):
        if total + p[2] > min(overlap, room):
            break
        out.insert(0, p)
        total += p[2]
    return out
