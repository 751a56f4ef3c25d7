"""Tricky texts for token counting (emoji, scripts, whitespace runs, random bytes), shared by the
token-count modules, and the exact cl100k counter they are checked against."""

from __future__ import annotations

import random

from vectorfill.provider.tokens import Cl100k

COUNTER = Cl100k()

_PIECES = [
    "😀",
    "👩‍👩‍👧‍👦",
    "🇫🇷",
    "🏳️‍🌈",
    "e\u0301",
    "ﬁ",
    "\u200b",
    "\ufeff",  # emoji, ZWJ, flags, combining, invisible
    "漢字",
    "日本語のテキスト",
    "한국어",
    "中文文本测试",
    "ไทย",
    "العربية",
    "עברית",  # CJK and other scripts
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    " " * 40,
    "\n" * 17,
    "\t \t \n",  # whitespace runs
    "a",
    "the",
    " word",
    "Hello",
    "don't",
    "1234567",
    "3.14159",
    "0x7fffffff",  # English and digits
    "aaaaaaaaaaaaaaaa",
    "!!!!",
    "....",
    "----",
    "====",
    "<|endoftext|>",
    "\\u0000",  # long runs, specials
    "def f(x):\n    return x\n",
    "SELECT * FROM t;",
    "https://example.com/a?b=c",  # code
]


def tricky_text(rng: random.Random, max_pieces: int = 60) -> str:
    kind = rng.random()
    if kind < 0.15:  # random bytes, read as UTF-8 (replacement characters) or Latin-1
        raw = rng.randbytes(rng.randint(1, 400))
        return raw.decode("utf-8", "replace") if rng.random() < 0.5 else raw.decode("latin-1")
    if kind < 0.25:  # one character repeated: tokens per byte far from English
        return rng.choice(["😀", "漢", " ", "a", "\n", "é", "0"]) * rng.randint(1, 500)
    return "".join(rng.choice(_PIECES) for _ in range(rng.randint(1, max_pieces)))


def tricky_texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [tricky_text(rng) for _ in range(n)]
