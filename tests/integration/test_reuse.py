"""Content-addressed reuse: an input whose vector exists is copied, bit for bit, not sent.

Within a claim identical inputs go out once; across runs an input the version has a vector
for is copied; a re-embed with the same model and dimensions copies the active version's
vectors; a shorter ``dimensions`` of a model whose vectors shorten is derived from them.
"""

from __future__ import annotations

import random

import numpy as np
from psycopg import sql

from conftest import expire_leases
from vectorfill.config import ChunkSettings
from vectorfill.jobs import versions


def _texts_table(env, texts: dict[int, str], table: str = "notes") -> None:
    with env.connect() as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, body text)").format(sql.Identifier(table)))
        with conn.cursor().copy(sql.SQL("COPY {} (id, body) FROM STDIN").format(sql.Identifier(table))) as copy:
            for i, t in texts.items():
                copy.write_row((i, t))


def _notes_job(env, **settings):
    return env.create_job(table="notes", template=None, text_columns=["body"], settings_kw={"retries": 1, **settings})


def _stored(env, job: str = "docs") -> dict[tuple[int, int], tuple[str, np.ndarray]]:
    with env.connect() as conn:
        rows = conn.execute(
            sql.SQL("SELECT id, chunk_seq, chunk, embedding FROM {}").format(sql.Identifier("vectorfill", job))
        ).fetchall()
    return {(i, c): (chunk, np.asarray(e.to_numpy(), dtype=np.float32)) for i, c, chunk, e in rows}


def _assert_exact(env, stored, dimensions: int | None = None) -> None:
    """Each stored vector is, bit for bit, what the provider returns for its input."""
    for (_key, _seq), (chunk, vector) in stored.items():
        assert np.array_equal(vector, env.provider.expected_vector(chunk, dimensions)), chunk


def _set_model(env, **kw):
    with env.connect() as conn:
        return versions.set_model(conn, "docs", model=env.provider.model, base_url=env.provider.base_url, **kw)


def test_identical_inputs_in_different_rows_are_sent_once_and_copied_exactly(env):
    distinct = [f"product {n}: a templated description" for n in range(10)]
    texts = {i: distinct[i % 10] for i in range(1, 1001)}
    _texts_table(env, texts)
    _notes_job(env, max_inputs=64)
    summary = env.backfill()
    assert sorted(env.provider.inputs) == sorted(distinct)  # 10 inputs for 1,000 rows
    assert summary.embedded == 1000 and summary.sent == 10 and summary.reused == 990
    stored = _stored(env)
    assert {k[0] for k in stored} == set(texts)
    _assert_exact(env, stored)
    assert "990 inputs reused, 10 sent" in summary.log_line()


def test_an_edit_to_a_text_another_row_has_is_copied_not_sent(env):
    texts = {i: f"note number {i}" for i in range(1, 51)}
    _texts_table(env, texts)
    _notes_job(env)
    env.backfill()
    env.provider.reset()
    with env.connect() as conn:
        conn.execute("UPDATE notes SET body = 'note number 7' WHERE id IN (3, 4)")
        conn.execute("INSERT INTO notes VALUES (100, 'note number 9'), (101, 'something new')")
    summary = env.backfill()
    assert env.provider.inputs == ["something new"]
    assert summary.embedded == 4 and summary.reused == 3 and summary.requests == 1
    stored = _stored(env)
    assert stored[(3, 0)][0] == stored[(4, 0)][0] == "note number 7"
    assert np.array_equal(stored[(3, 0)][1], stored[(7, 0)][1])
    _assert_exact(env, stored)


def test_a_repeat_run_over_rows_already_embedded_sends_nothing(env):
    """Rows queued again with the text another row has (here: a new table's copy of every
    row) are copies: no request at all."""
    texts = {i: f"row {i} says {'x' * (i % 7)}" for i in range(1, 201)}
    _texts_table(env, texts)
    _notes_job(env)
    env.backfill()
    env.provider.reset()
    with env.connect() as conn:
        conn.execute("INSERT INTO notes SELECT id + 1000, body FROM notes")
    summary = env.backfill()
    assert env.provider.requests == 0 and summary.cost_usd == 0
    assert summary.embedded == 200 and summary.reused == 200
    _assert_exact(env, _stored(env))


def test_boilerplate_chunks_of_different_documents_are_sent_once(env):
    rng = random.Random(3)
    header = "ACME Corp confidential. Do not distribute outside the company."
    footer = "Licensed under the Apache License 2.0; see LICENSE for the terms."
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    bodies = {i: " ".join(rng.choice(words) for _ in range(40)) + f" doc {i}." for i in range(1, 41)}
    texts = {i: f"{header}\n\n{body}\n\n{footer}" for i, body in bodies.items()}
    _texts_table(env, texts)
    env.create_job(
        table="notes",
        template=None,
        text_columns=["body"],
        chunking=ChunkSettings(chunker="recursive", size=20, overlap=0),
        settings_kw={"retries": 1, "max_inputs": 16},
    )
    summary = env.backfill()
    stored = _stored(env)
    chunks = [c for c, _ in stored.values()]
    assert len(env.provider.inputs) == len(set(env.provider.inputs)) == len(set(chunks)) < len(chunks)
    assert summary.reused == len(chunks) - len(set(chunks))
    _assert_exact(env, stored)
    for i, text in texts.items():  # each row's chunks, in order, still cover its text
        assert "".join(stored[(k, c)][0] for k, c in sorted(stored) if k == i) == text


def test_a_template_change_that_renders_the_same_inputs_sends_nothing(env):
    env.make_table(40)
    env.create_job()
    env.backfill()
    env.provider.reset()
    _set_model(env, chunking=ChunkSettings(template="{chunk}"))  # renders each row's text as before
    summary = env.backfill()
    assert summary.switched_to == 2
    assert env.provider.requests == 0 and summary.reused == 40 and summary.sent == 0
    assert "40 inputs reused, 0 sent" in summary.log_line()
    _assert_exact(env, _stored(env))


def test_a_chunker_change_sends_only_the_chunks_the_active_version_lacks(env):
    rng = random.Random(5)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    texts = {
        i: "\n\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(5, 50))) + "." for _ in range(8))
        for i in range(1, 31)
    }
    _texts_table(env, texts)
    env.create_job(
        table="notes",
        template=None,
        text_columns=["body"],
        chunking=ChunkSettings(chunker="recursive", size=60),
        settings_kw={"retries": 1},
    )
    env.backfill()
    old = {c for c, _ in _stored(env).values()}
    env.provider.reset()
    _set_model(env, chunking=ChunkSettings(chunker="recursive", size=90))
    summary = env.backfill()
    assert summary.switched_to == 2
    stored = _stored(env)
    new = [c for c, _ in stored.values()]
    assert sorted(env.provider.inputs) == sorted(set(new) - old)
    assert summary.sent == len(set(new) - old) and 0 < summary.reused == len(new) - summary.sent
    _assert_exact(env, stored)


def test_storage_vector_to_halfvec_is_a_cast_not_a_request(env):
    env.make_table(30)
    env.create_job()
    env.backfill()
    env.provider.reset()
    _set_model(env, storage="halfvec")
    summary = env.backfill()
    assert summary.switched_to == 2 and env.provider.requests == 0 and summary.reused == 30
    with env.connect() as conn:
        kind = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'vectorfill._v_1_2'::regclass AND attname = 'embedding'"
        ).fetchone()[0]
    assert kind.startswith("halfvec")
    for (_k, _c), (chunk, vector) in _stored(env).items():  # the provider's vector, as halfvec stores it
        assert np.array_equal(vector, env.provider.expected_vector(chunk).astype(np.float16).astype(np.float32))


def test_a_halfvec_version_is_not_copied_into_a_float32_one(env):
    env.make_table(10)
    env.create_job(storage="halfvec")
    env.backfill()
    env.provider.reset()
    _set_model(env, storage="vector")
    summary = env.backfill()
    assert env.provider.requests >= 1 and summary.reused == 0 and summary.sent == 10
    _assert_exact(env, _stored(env))


def test_fewer_dimensions_of_a_shortening_model_are_derived_with_no_request(env):
    env.make_table(60)
    env.create_job(settings_kw={"retries": 1, "matryoshka": True})
    env.backfill()
    env.provider.reset()
    _set_model(env, dimensions=16)
    with env.connect() as conn:  # a row edited during the re-embed is embedded normally
        conn.execute("UPDATE articles SET body = 'rewritten while re-embedding' WHERE id = 5")
    summary = env.backfill()
    assert summary.switched_to == 2
    assert env.provider.inputs == ["Title 5\n\nrewritten while re-embedding"]
    # (the edited row is sent once: for the active version, and then derived from it, or
    # for the new version, if its claim comes first)
    assert summary.reused == summary.derived >= 59 and summary.derived_from == 1
    assert "derived from version 1" in summary.log_line()
    stored = _stored(env)
    assert len(stored) == 60
    for (_k, _c), (chunk, vector) in stored.items():
        # bit for bit what the provider returns when asked for dimensions=16
        assert vector.shape == (16,) and np.array_equal(vector, env.provider.expected_vector(chunk, 16))


def test_without_the_option_a_model_not_known_to_shorten_is_sent_again(env):
    env.make_table(10)
    env.create_job()
    env.backfill()
    env.provider.reset()
    _set_model(env, dimensions=16)
    summary = env.backfill()
    assert summary.sent == 10 and summary.derived == 0
    _assert_exact(env, _stored(env), 16)


def test_estimate_counts_only_the_inputs_really_sent(env):
    from vectorfill.jobs.estimate import estimate

    distinct = [f"boilerplate paragraph {n}" for n in range(5)]
    _texts_table(env, {i: distinct[i % 5] for i in range(1, 101)})
    _notes_job(env)
    with env.connect() as conn:
        (before,) = estimate(conn, "docs")
    assert before.chunks == 5 and before.reused == 95
    summary = env.backfill()
    assert summary.sent == before.chunks and summary.tokens == before.tokens
    env.provider.reset()
    with env.connect() as conn:
        conn.execute("INSERT INTO notes SELECT id + 1000, body FROM notes WHERE id <= 10")
        conn.execute("INSERT INTO notes VALUES (5000, 'a new text')")
        (after,) = estimate(conn, "docs")
    assert after.chunks == 1 and after.reused == 10
    assert env.backfill().sent == 1 and env.provider.inputs == ["a new text"]


def test_estimate_of_a_derived_version_sends_nothing(env):
    from vectorfill.jobs.estimate import estimate

    env.make_table(20)
    env.create_job(settings_kw={"retries": 1, "matryoshka": True})
    env.backfill()
    _set_model(env, dimensions=8)
    with env.connect() as conn:
        estimates = {e.version: e for e in estimate(conn, "docs")}
    assert estimates[2].tokens == 0 and estimates[2].reused == estimates[2].derived == 20
    assert estimates[2].cost_usd in (0, None)


def test_a_store_without_the_copies_filled_in_leaves_their_rows_queued(env):
    """The stages called by hand (claim -> embed -> store, as the slice does but without its
    fill-in of the copies): the rows whose inputs are copies are not settled without their
    vectors; they stay queued, and a run embeds them."""
    import asyncio
    import uuid

    from vectorfill.jobs.registry import load_job
    from vectorfill.provider.client import EmbeddingsClient
    from vectorfill.storage.db import LaneConnection
    from vectorfill.tasks import Work, claim_rows, embed_request, store_vectors

    _texts_table(env, {i: ("the same text" if i <= 3 else f"text {i}") for i in range(1, 7)})
    _notes_job(env)
    with env.connect() as conn:
        job = load_job(conn, "docs")
    work = Work(job, job.active)

    async def run():
        db = LaneConnection(env.url)
        try:
            claim = await claim_rows(work, 100, uuid.uuid4(), db)
            assert claim.reused == 2 and len(claim.requests) == 1
            async with EmbeddingsClient.for_version(work.version, job="docs", settings=work.settings) as client:
                embedded = await embed_request(work, client, claim.requests[0])
            return await store_vectors(work, embedded, db, claim.requests[0].rows)
        finally:
            await db.aclose()

    stored = asyncio.run(run())
    assert stored.written == 4 and len(env.vectors()) == 4  # the sender and the 3 others
    assert env.status().pending == 2  # the two copies: queued, not settled without a vector
    expire_leases(env.url)
    env.provider.reset()
    summary = env.backfill()
    assert summary.embedded == 2 and summary.reused == 2 and env.provider.requests == 0
    _assert_exact(env, _stored(env))
