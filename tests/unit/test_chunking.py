"""The chunkers (pure functions): bounds, coverage, overlap, edits, hard input."""

from __future__ import annotations

import itertools
import random
import unicodedata

import pytest

from vectorfill.config import ChunkSettings
from vectorfill.provider.chunking import TooManyChunks, _joins_previous, chunk_text
from vectorfill.provider.tokens import ByteEstimate, counter_for

CL100K = counter_for("text-embedding-3-small")
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
    "mu",
    "nu",
    "xi",
    "omicron",
]


def _doc(rng: random.Random, paragraphs: int = 40) -> str:
    return "\n\n".join(
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(15, 120))) + "." for _ in range(paragraphs)
    )


def _check(text: str, chunks, size: int, counter=CL100K, overlap: bool = False) -> None:
    for c in chunks:
        assert (c.tokens <= size and counter.count([c.text])[0] == c.tokens) or not counter.exact
        assert c.text == text[c.start : c.end]
        assert c.start == 0 or not _joins_previous(text[c.start]), "cut inside a character cluster"
        assert c.end == len(text) or not _joins_previous(text[c.end])
    if not overlap:
        assert "".join(c.text for c in chunks) == text
    covered = 0
    for c in chunks:
        assert c.start <= covered < c.end or covered == len(text)
        covered = max(covered, c.end)
    assert covered == len(text)


@pytest.mark.parametrize("chunker", ["tokens", "recursive"])
@pytest.mark.parametrize("size", [16, 100, 400])
def test_chunks_are_within_the_size_and_cover_the_text(chunker, size):
    text = _doc(random.Random(size))
    chunks = chunk_text(text, ChunkSettings(chunker=chunker, size=size), CL100K)
    assert len(chunks) > 1
    _check(text, chunks, size)


def test_token_overlap_is_what_was_asked():
    text = _doc(random.Random(3))
    chunks = chunk_text(text, ChunkSettings(chunker="tokens", size=100, overlap=20), CL100K)
    _check(text, chunks, 100, overlap=True)
    for a, b in itertools.pairwise(chunks):
        shared = text[b.start : a.end]
        assert a.text.endswith(shared) and b.text.startswith(shared)
        assert CL100K.count([shared])[0] == 20


def test_recursive_overlap_repeats_whole_pieces_within_the_overlap():
    text = _doc(random.Random(4))
    chunks = chunk_text(text, ChunkSettings(chunker="recursive", size=200, overlap=60), CL100K)
    _check(text, chunks, 200, overlap=True)
    assert any(b.start < a.end for a, b in itertools.pairwise(chunks))
    for a, b in itertools.pairwise(chunks):
        if b.start < a.end:
            assert CL100K.count([text[b.start : a.end]])[0] <= 60 + 2


def test_one_edited_paragraph_changes_few_recursive_chunks():
    rng = random.Random(7)
    text = _doc(rng, 60)
    settings = ChunkSettings(chunker="recursive", size=400)
    before = {c.text for c in chunk_text(text, settings, CL100K)}
    paragraphs = text.split("\n\n")
    changed = []
    for k in range(0, 60, 2):
        edited = list(paragraphs)
        edited[k] = " ".join(rng.choice(WORDS) for _ in range(rng.randint(15, 120))) + "."
        after = chunk_text("\n\n".join(edited), settings, CL100K)
        changed.append(sum(1 for c in after if c.text not in before))
    assert sum(changed) / len(changed) <= 4, changed
    assert max(changed) <= 6, changed


def test_edge_cases():
    s = ChunkSettings(chunker="recursive", size=50)
    assert chunk_text("", s, CL100K) == []
    short = "A short text."
    (only,) = chunk_text(short, s, CL100K)
    assert only.text == short and only.seq == 0
    exact = " ".join(["word"] * 50)
    assert CL100K.count([exact])[0] == 50
    assert [c.text for c in chunk_text(exact, s, CL100K)] == [exact]
    assert len(chunk_text(exact + " word", s, CL100K)) >= 2


@pytest.mark.parametrize("chunker", ["tokens", "recursive"])
def test_a_single_50000_character_word(chunker):
    word = "".join(random.Random(1).choice("abcdefghijklmnopqrstuvwxyz") for _ in range(50_000))
    chunks = chunk_text(word, ChunkSettings(chunker=chunker, size=256), CL100K)
    _check(word, chunks, 256)


@pytest.mark.parametrize("chunker", ["tokens", "recursive"])
@pytest.mark.parametrize("counter", [CL100K, ByteEstimate()], ids=["cl100k", "bytes"])
def test_cjk_emoji_and_combining_characters_are_never_cut(chunker, counter):
    rng = random.Random(5)
    atoms = [
        "漢字仮名交じり文",
        "。",
        "👍🏽",
        "👩\u200d👩\u200d👧",
        "🇫🇷",
        "e\u0301\u0302",
        "ą\u0328",
        "한국어",
        " ",
        "\n\n",
        "\u2764\ufe0f",
    ]
    text = "".join(rng.choice(atoms) for _ in range(3000))
    chunks = chunk_text(text, ChunkSettings(chunker=chunker, size=24), counter)
    _check(text, chunks, 24, counter)
    for c in chunks:
        assert unicodedata.normalize("NFC", c.text)  # whole characters: encodes and normalises
        assert not c.text.endswith("\u200d")


def test_template_tokens_count_in_the_size():
    text = _doc(random.Random(9), 10)
    s = ChunkSettings(chunker="recursive", size=64, template="{title}: {chunk}")
    chunks = chunk_text(text, s, CL100K, fields={"title": "A rather long title of the document"})
    assert all(c.text.startswith("A rather long title of the document: ") for c in chunks)
    assert all(CL100K.count([c.text])[0] <= 64 for c in chunks)


def test_too_many_chunks_is_an_error():
    with pytest.raises(TooManyChunks, match="over the limit of 3"):
        chunk_text(_doc(random.Random(2)), ChunkSettings(chunker="tokens", size=16, max_chunks=3), CL100K)


def test_minilm_counts_its_special_tokens():
    counter = counter_for("all-MiniLM-L6-v2")
    if not counter.exact:
        pytest.skip("the bundled MiniLM is not installed")
    text = _doc(random.Random(11), 12)
    for chunker in ("tokens", "recursive"):
        chunks = chunk_text(text, ChunkSettings(chunker=chunker, size=128), counter)
        assert all(counter.count([c.text])[0] <= 128 for c in chunks)
        assert "".join(c.text for c in chunks) == text
