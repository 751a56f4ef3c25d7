"""Chunked jobs and halfvec storage, end to end with the fake provider."""

from __future__ import annotations

import random

import numpy as np
import psycopg
import pytest
from psycopg import sql

from vectorfill.config import ChunkSettings
from vectorfill.provider.tokens import counter_for

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
CL100K = counter_for("fake-embed")


def _paragraph(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 60))) + "."


def _docs(env, n: int, paragraphs: int = 12, seed: int = 1) -> dict[int, list[str]]:
    rng = random.Random(seed)
    docs = {i: [_paragraph(rng) for _ in range(paragraphs)] for i in range(1, n + 1)}
    with env.connect() as conn:
        conn.execute("CREATE TABLE longdocs (id bigint PRIMARY KEY, body text)")
        with conn.cursor().copy("COPY longdocs (id, body) FROM STDIN") as copy:
            for i, ps in docs.items():
                copy.write_row((i, "\n\n".join(ps)))
    return docs


def _chunks(env, job: str = "docs") -> dict[int, list[tuple[int, str, np.ndarray]]]:
    with env.connect() as conn:
        rows = conn.execute(
            sql.SQL("SELECT id, chunk_seq, chunk, embedding FROM {} ORDER BY id, chunk_seq").format(
                sql.Identifier("vectorfill", job)
            )
        ).fetchall()
    out: dict[int, list] = {}
    for i, seq, chunk, emb in rows:
        out.setdefault(i, []).append((seq, chunk, np.asarray(emb.to_numpy(), dtype=np.float32)))
    return out


def _assert_chunks_right(env, texts: dict[int, str], size: int) -> None:
    got = _chunks(env)
    assert set(got) == set(texts)
    for i, chunks in got.items():
        assert [c[0] for c in chunks] == list(range(len(chunks)))
        assert "".join(c[1] for c in chunks) == texts[i]  # they cover the text (no overlap asked)
        for _seq, chunk, emb in chunks:
            assert CL100K.count([chunk])[0] <= size
            np.testing.assert_allclose(emb, env.provider.expected_vector(chunk), atol=1e-6)


def test_chunked_job_stores_each_chunk_and_an_edit_resends_only_changed_chunks(env):
    docs = _docs(env, 30)
    env.create_job(
        table="longdocs", template=None, text_columns=["body"], chunking=ChunkSettings(chunker="recursive", size=60)
    )
    env.backfill()
    texts = {i: "\n\n".join(ps) for i, ps in docs.items()}
    _assert_chunks_right(env, texts, 60)
    before = _chunks(env)
    total_chunks = sum(len(c) for c in before.values())
    assert total_chunks > 60
    assert env.provider.requests < total_chunks / 10  # chunks of many rows packed in one request

    rng = random.Random(99)
    env.provider.reset()
    for i in (3, 7, 11):
        docs[i][5] = _paragraph(rng)
        with env.connect() as conn:
            conn.execute("UPDATE longdocs SET body = %s WHERE id = %s", ("\n\n".join(docs[i]), i))
    env.backfill()
    texts = {i: "\n\n".join(ps) for i, ps in docs.items()}
    _assert_chunks_right(env, texts, 60)
    old_texts = {c[1] for cs in before.values() for c in cs}
    sent = env.provider.inputs
    assert sent and all(t not in old_texts for t in sent)  # only new chunk texts were sent
    assert len(sent) <= 3 * 4
    after = _chunks(env)
    for i in (1, 2, 20):  # rows not edited: untouched
        assert [c[1] for c in after[i]] == [c[1] for c in before[i]]

    with env.connect() as conn:  # a delete leaves no orphan chunk
        conn.execute("DELETE FROM longdocs WHERE id = 3")
    assert 3 not in _chunks(env)


def test_a_row_edited_while_its_chunks_are_in_flight_ends_with_its_new_chunks_only(env):
    docs = _docs(env, 4, paragraphs=8)
    env.create_job(
        table="longdocs", template=None, text_columns=["body"], chunking=ChunkSettings(chunker="recursive", size=40)
    )
    rng = random.Random(5)
    docs[2] = [_paragraph(rng) for _ in range(8)]
    edited = {"done": False}

    def edit_once(text: str) -> bool:  # runs in the provider while the request is in flight
        if not edited["done"]:
            edited["done"] = True
            with psycopg.connect(env.url, autocommit=True) as conn:
                conn.execute("UPDATE longdocs SET body = %s WHERE id = 2", ("\n\n".join(docs[2]),))
        return False

    env.provider.fail_when(edit_once)
    env.backfill()
    env.provider.clear_faults()
    env.backfill()
    _assert_chunks_right(env, {i: "\n\n".join(ps) for i, ps in docs.items()}, 40)


def test_a_row_with_too_many_chunks_fails_with_the_reason(env):
    _docs(env, 3, paragraphs=30)
    env.create_job(
        table="longdocs",
        template=None,
        text_columns=["body"],
        chunking=ChunkSettings(chunker="tokens", size=16, max_chunks=5),
    )
    env.backfill()
    with env.connect() as conn:
        reasons = conn.execute("SELECT reason, message FROM vectorfill.failures").fetchall()
    assert len(reasons) == 3 and all(r[0] == "too_many_chunks" and "over the limit of 5" in r[1] for r in reasons)


def test_chunk_template_and_a_chunker_change_is_a_new_version(env):
    env.make_table(5)
    env.create_job(chunking=ChunkSettings(chunker="recursive", size=40, template="{title}: {chunk}"))
    env.backfill()
    got = _chunks(env)
    assert all(c[1].startswith(f"Title {i}: ") for i, cs in got.items() for c in cs)
    from vectorfill.jobs.versions import set_model

    with env.connect() as conn:
        v = set_model(conn, "docs", model="fake-embed", chunking=ChunkSettings(chunker="none"))
    assert v.version == 2 and v.chunking.chunker == "none"
    env.backfill()
    got = _chunks(env)
    texts = env.texts()
    assert {i: [c[1] for c in cs] for i, cs in got.items()} == {i: [t] for i, t in texts.items()}


@pytest.mark.slow
def test_halfvec_storage_index_and_search(env):
    from vectorfill.jobs.search import create_index, search

    env.make_table(300)
    env.create_job(storage="halfvec")
    env.backfill()
    with env.connect() as conn:
        typ = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'vectorfill._v_1_1'::regclass AND attname = 'embedding'"
        ).fetchone()[0]
        assert typ == "halfvec(32)"
        rows = conn.execute("SELECT id, chunk, embedding FROM vectorfill.docs").fetchall()
    for _i, chunk, emb in rows:
        np.testing.assert_allclose(emb.to_numpy(), env.provider.expected_vector(chunk), atol=2e-3)
    assert create_index(env.url, "docs") == "vectorfill._v_1_1_hnsw"
    with env.connect() as conn:
        conn.execute("SET enable_seqscan = off")
        hits = search(conn, "docs", env.texts()[7], k=3)
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN SELECT k1 FROM vectorfill._v_1_1 ORDER BY embedding <=> %s::halfvec LIMIT 3",
                (env.provider.expected_vector("x"),),
            )
        )
    assert "_v_1_1_hnsw" in plan
    assert hits[0].id == 7


def test_index_refused_before_it_starts_above_the_limit_and_invalid_index_dropped(env, monkeypatch):
    from vectorfill.errors import JobError
    from vectorfill.jobs.search import create_index

    env.make_table(2000)
    env.create_job(storage="vector", dimensions=32)
    env.backfill()
    with env.connect() as conn:  # pretend the model's vectors were 2,500-dimensional
        conn.execute("UPDATE vectorfill.versions SET vector_dims = 2500")
    with pytest.raises(JobError, match=r"at most 2,000 dimensions; store them as halfvec"):
        create_index(env.url, "docs")
    with env.connect() as conn:
        conn.execute("UPDATE vectorfill.versions SET vector_dims = 32")
        assert conn.execute("SELECT to_regclass('vectorfill._v_1_1_hnsw')").fetchone()[0] is None

    real_connect = psycopg.connect

    class CancelTheBuild:  # the CREATE INDEX (only) runs under a 1 ms statement_timeout
        def __init__(self, conn):
            self.conn = conn

        def __enter__(self):
            self.conn.__enter__()
            return self

        def __exit__(self, *exc):
            return self.conn.__exit__(*exc)

        def execute(self, query, *args):
            build = "CREATE INDEX" in (query.as_string(self.conn) if hasattr(query, "as_string") else query)
            if build:
                self.conn.execute("SET statement_timeout = 1")
            try:
                return self.conn.execute(query, *args)
            finally:
                if build:
                    self.conn.execute("RESET statement_timeout")

    monkeypatch.setattr(psycopg, "connect", lambda *a, **kw: CancelTheBuild(real_connect(*a, **kw)))
    with pytest.raises(JobError, match="partial index was dropped"):
        create_index(env.url, "docs")
    monkeypatch.setattr(psycopg, "connect", real_connect)
    with env.connect() as conn:
        assert conn.execute("SELECT to_regclass('vectorfill._v_1_1_hnsw')").fetchone()[0] is None
    create_index(env.url, "docs")
    with env.connect() as conn:
        assert conn.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'vectorfill._v_1_1_hnsw'::regclass"
        ).fetchone()[0]


def test_estimate_counts_chunks_exactly_and_search_shows_chunks(env):
    from vectorfill.jobs.estimate import estimate
    from vectorfill.jobs.search import search
    from vectorfill.provider.chunking import chunk_text

    docs = _docs(env, 10)
    settings = ChunkSettings(chunker="recursive", size=50)
    env.create_job(table="longdocs", template=None, text_columns=["body"], chunking=settings)
    texts = {i: "\n\n".join(ps) for i, ps in docs.items()}
    expected = [c for t in texts.values() for c in chunk_text(t, settings, CL100K, limit=8191)]
    with env.connect() as conn:
        (est,) = estimate(conn, "docs")
    assert (est.rows, est.chunks, est.tokens) == (10, len(expected), sum(c.tokens for c in expected))
    env.backfill()
    assert len(env.provider.inputs) == len(expected)
    assert env.provider.tokens_billed == est.tokens

    target = _chunks(env)[4][2][1]
    with env.connect() as conn:
        hits = search(conn, "docs", target, k=5)
        best = search(conn, "docs", target, k=5, per_row=True)
    assert (hits[0].id, hits[0].chunk_seq, hits[0].chunk) == (4, 2, target)
    assert best[0].id == 4 and len({h.id for h in best}) == len(best) == 5


def test_the_chunks_migration_goes_down_and_up_with_a_job(fresh_db):
    from vectorfill.storage.db import connect, head_revision, migrate

    migrate(fresh_db, "0002")
    with connect(fresh_db) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO notes VALUES (1, 'one')")
        conn.execute(
            "INSERT INTO vectorfill.jobs (name, source_schema, source_table, key_columns, key_types, text_columns) "
            "VALUES ('notes', 'public', 'notes', '{id}', '{integer}', '{body}')"
        )
        conn.execute(
            "INSERT INTO vectorfill.versions (job_id, version, model, base_url, state) VALUES (1, 1, 'm', 'u', 'active')"
        )
        conn.execute(
            "CREATE TABLE vectorfill._v_1_1 (k1 integer, chunk_seq integer, embedding vector(3), input_hash bytea, "
            "model text, embedded_at timestamptz DEFAULT now(), PRIMARY KEY (k1, chunk_seq))"
        )
        conn.execute("INSERT INTO vectorfill._v_1_1 VALUES (1, 0, '[1,2,3]', '\\x00', 'm')")
        conn.execute(
            "CREATE VIEW vectorfill.notes AS SELECT v.k1 AS id, v.chunk_seq, v.embedding, v.model, v.embedded_at "
            "FROM vectorfill._v_1_1 v"
        )
    assert migrate(fresh_db) == head_revision()
    with connect(fresh_db) as conn:
        cols = [d.name for d in conn.execute("SELECT * FROM vectorfill.notes").description]
        assert cols == ["id", "chunk_seq", "chunk", "embedding", "model", "embedded_at"]
        from vectorfill.jobs.registry import load_job

        v = load_job(conn, "notes").active
        assert (v.storage, v.chunking.chunker) == ("vector", "none")  # versions made before: as they were
    assert migrate(fresh_db, "0002", downgrade=True) == "0002"
    with connect(fresh_db) as conn:
        cols = [d.name for d in conn.execute("SELECT * FROM vectorfill.notes").description]
        assert cols == ["id", "chunk_seq", "embedding", "model", "embedded_at"]


def test_text_embedding_3_large_is_indexed_and_searched_as_halfvec(env):
    """The 3,072-d model the README's examples use: auto storage types its column halfvec,
    `vectorfill index` builds, and search goes through the index; a fake-embed job of
    2,100 dims (size learnt from the first answer) goes halfvec at its first store."""
    from conftest import API_KEY
    from fake_provider import FakeProvider
    from vectorfill.jobs.search import create_index, search

    env.make_table(40)
    with FakeProvider(3072, api_key=API_KEY, model="text-embedding-3-large") as large:
        env.create_job(model="text-embedding-3-large", base_url=large.base_url)
        env.backfill()
        assert create_index(env.url, "docs") == "vectorfill._v_1_1_hnsw"
        with env.connect() as conn:
            typ = conn.execute(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = 'vectorfill._v_1_1'::regclass AND attname = 'embedding'"
            ).fetchone()[0]
            conn.execute("SET enable_seqscan = off")
            hits = search(conn, "docs", env.texts()[9], k=3)
        assert typ == "halfvec(3072)" and hits[0].id == 9

    with FakeProvider(2100, api_key=API_KEY) as wide:
        env.create_job("wide", base_url=wide.base_url)
        env.backfill("wide")
        assert create_index(env.url, "wide") == "vectorfill._v_2_1_hnsw"
        with env.connect() as conn:
            typ = conn.execute(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = 'vectorfill._v_2_1'::regclass AND attname = 'embedding'"
            ).fetchone()[0]
            emb = conn.execute("SELECT chunk, embedding FROM vectorfill.wide WHERE id = 3").fetchone()
        assert typ == "halfvec(2100)"
        np.testing.assert_allclose(emb[1].to_numpy(), wide.expected_vector(emb[0]), atol=2e-3)


def test_set_model_refuses_a_version_its_index_could_not_follow_and_invalid_indexes_are_not_mirrored(env):
    from vectorfill.errors import JobError
    from vectorfill.jobs.search import create_index, has_index
    from vectorfill.jobs.versions import set_model

    env.make_table(5)
    env.create_job(dimensions=32)
    create_index(env.url, "docs")
    with pytest.raises(JobError, match=r"could not have: .*at most 2,000 dimensions"), env.connect() as conn:
        set_model(conn, "docs", model="text-embedding-3-large", storage="vector")
    with env.connect() as conn:  # auto: halfvec, which HNSW indexes up to 4,000
        assert set_model(conn, "docs", model="text-embedding-3-large").vector_type == "halfvec"
        conn.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'vectorfill._v_1_1_hnsw'::regclass")
        from vectorfill.jobs.registry import load_job

        job = load_job(conn, "docs")
        assert not has_index(conn, job, job.active)  # an INVALID index is no index to mirror


@pytest.mark.slow
def test_a_row_with_more_chunks_than_one_request_takes_is_stored_whole(env):
    """max_inputs 4 and ~20 chunks a row: a row's chunks span requests (Request.continues) and
    are stored together once every request is answered; an edit keeps the unchanged ones."""
    from vectorfill.engine.claim import Item, RowPlan, pack

    docs = _docs(env, 3, paragraphs=10)
    env.create_job(
        table="longdocs",
        template=None,
        text_columns=["body"],
        chunking=ChunkSettings(chunker="recursive", size=24),
        settings_kw={"max_inputs": 4, "retries": 1},
    )
    env.backfill()
    texts = {i: "\n\n".join(ps) for i, ps in docs.items()}
    _assert_chunks_right(env, texts, 24)
    per_row = [len(c) for c in _chunks(env).values()]
    assert min(per_row) > 4 and env.provider.requests == sum(
        -(-n // 4) for n in per_row
    )  # each row from a fresh request

    rng = random.Random(3)
    docs[2][4] = _paragraph(rng)
    with env.connect() as conn:
        conn.execute("UPDATE longdocs SET body = %s WHERE id = 2", ("\n\n".join(docs[2]),))
    env.provider.reset()
    env.backfill()
    _assert_chunks_right(env, {i: "\n\n".join(ps) for i, ps in docs.items()}, 24)
    assert 0 < len(env.provider.inputs) < 10

    # packing: a row that fits in what is left starts the next request; a larger one spans
    items = [Item((k,), 1, f"{k}-{c}", b"h", 1) for k, c in [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]]
    items += [Item((3,), 1, f"3-{c}", b"h", 1) for c in range(6)]
    plans = {(k,): RowPlan((k,), 1, 1) for k in (1, 2, 3)}
    requests = pack(items, 4, 1000, plans)
    assert [[i.text for i in b.items] for b in requests] == [
        ["1-0", "1-1", "1-2"],
        ["2-0", "2-1"],
        ["3-0", "3-1", "3-2", "3-3"],
        ["3-4", "3-5"],
    ]
    assert [b.continues for b in requests] == [False, False, True, False]
