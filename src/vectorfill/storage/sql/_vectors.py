"""Statements on one version's vectors (``_v_<job>_<version>``): its tables, the store,
search, the HNSW index, and the job's view ``vectorfill.<job>``.

Locking
-------
* **Store** (:meth:`VectorStatements.settle`, then :meth:`VectorStatements.copy_vectors`, in
  one transaction) deletes each queue row *only if its seq is still the claimed one* and
  COPYs the vectors of exactly the rows it deleted. A row edited while its old text was in
  flight has a new ``seq``: its stale vector is discarded and the row stays queued for its
  new text. Because ``seq`` comes from a global sequence, a row that is completed and
  queued again never reuses a ``seq``.
* A **deleted row**'s vectors stay stored until its 'D' is absorbed (:mod:`._changelog`);
  the view ``vectorfill.<job>`` and :meth:`VectorStatements.search` show a vector only
  while its key is in the source (a semi-join on the source's key), so readers never see
  them.
"""

from __future__ import annotations

import dataclasses

from psycopg import sql

from vectorfill.records import Job, Version
from vectorfill.storage.sql._compose import SCHEMA, JobTables, text_expression


class VectorStatements(JobTables):
    """The vector family of :class:`~vectorfill.storage.sql.JobSQL`."""

    # -- DDL
    def create_tables(self) -> sql.Composed:
        key_defs = sql.SQL(", ").join(
            sql.SQL("{} {} NOT NULL").format(k, t) for k, t in zip(self.k, self.types, strict=True)
        )
        vtype = self.column_type()
        return sql.SQL(
            """
            CREATE TABLE {q} (
                {key_defs},
                seq bigint NOT NULL,
                queued_at timestamptz NOT NULL DEFAULT now(),
                lease_until timestamptz,
                claimed_by uuid,
                attempts integer NOT NULL DEFAULT 0,
                last_error text,
                PRIMARY KEY ({k})
            );
            CREATE INDEX ON {q} (queued_at);
            CREATE TABLE {v} (
                {key_defs},
                chunk_seq integer NOT NULL DEFAULT 0,
                embedding {vtype} NOT NULL,
                input_hash bytea NOT NULL,
                model text NOT NULL,
                embedded_at timestamptz NOT NULL DEFAULT now(),
                chunk text,
                PRIMARY KEY ({k}, chunk_seq)
            );
            CREATE INDEX {hash_index} ON {v} (input_hash);
            """
        ).format(
            q=self.q,
            v=self.v,
            key_defs=key_defs,
            k=self._cols(),
            vtype=vtype,
            hash_index=sql.Identifier(f"{self.version.vector_table}_input_hash"),
        )

    def drop_tables(self) -> sql.Composed:
        return sql.SQL("DROP TABLE IF EXISTS {q}; DROP TABLE IF EXISTS {v};").format(q=self.q, v=self.v)

    def column_type(self, dims: int | None = None) -> sql.SQL | sql.Composed:
        """``vector(d)`` or ``halfvec(d)`` (:attr:`Version.vector_type`); untyped while the
        dimensions are not known."""
        dims = dims or self.version.vector_dims
        vtype = dataclasses.replace(self.version, vector_dims=dims).vector_type
        if dims:
            return sql.SQL("{}({})").format(sql.SQL(vtype), sql.Literal(dims))
        return sql.SQL(vtype)

    def set_vector_dims(self, dims: int) -> sql.Composed:
        t = self.column_type(dims)
        return sql.SQL("ALTER TABLE {v} ALTER COLUMN embedding TYPE {t} USING embedding::{t}").format(v=self.v, t=t)

    # -- store
    def settle_chunks(self) -> sql.Composed:
        """:meth:`settle` that keeps the vectors of unchanged chunks: for each row it settles
        (queue row still at its claimed ``seq``), the stored chunk with each listed input
        hash is copied to its new ``chunk_seq`` (written as ``-1 - chunk_seq`` here, flipped
        by :meth:`flip_kept` in the same transaction, since the old rows still hold the
        numbers while this statement runs), then the row's old chunks are deleted. Every
        sub-statement sees the snapshot of the statement's start, so ``kept`` reads the old
        chunks that ``old`` deletes. Returns the settled keys and how many chunks were kept.
        Parameters: keys, seqs; kept keys, chunk_seqs, hashes; job id, version."""
        return sql.SQL(
            """WITH done AS (
                   DELETE FROM {q} q USING {unnest} WHERE {match} AND q.seq = c.seq
                   RETURNING {qk}),
               kept AS (
                   INSERT INTO {v} ({k}, chunk_seq, embedding, input_hash, model, embedded_at, chunk)
                   SELECT {rk}, -1 - r.chunk_seq, o.embedding, o.input_hash, o.model, o.embedded_at, o.chunk
                     FROM {unnest_r}
                     JOIN done ON {rmatch}
                     CROSS JOIN LATERAL (
                         SELECT * FROM {v} o WHERE {omatch} AND o.input_hash = r.input_hash AND o.chunk_seq >= 0
                          ORDER BY o.chunk_seq LIMIT 1) o
                   RETURNING 1),
               old AS (DELETE FROM {v} v USING done WHERE {vmatch} AND v.chunk_seq >= 0),
               cleared AS (
                   DELETE FROM vectorfill.failures f USING done
                    WHERE f.job_id = %s AND f.version = %s AND f.row_key = {dkey})
               SELECT {dk}, (SELECT count(*) FROM kept) FROM done"""
        ).format(
            q=self.q,
            unnest=self._unnest([("seq", "bigint")]),
            match=self._match("q", "c"),
            qk=self._cols("q"),
            v=self.v,
            k=self._cols(),
            rk=self._cols("r"),
            unnest_r=self._unnest([("chunk_seq", "integer"), ("input_hash", "bytea")], alias="r"),
            rmatch=self._match("done", "r"),
            omatch=self._match("o", "r"),
            vmatch=self._match("v", "done"),
            dkey=self._failure_key("done"),
            dk=self._cols("done"),
        )

    def flip_kept(self) -> sql.Composed:
        """Give the chunks :meth:`settle_chunks` kept their real numbers. Parameter: keys."""
        return sql.SQL(
            "UPDATE {v} v SET chunk_seq = -1 - v.chunk_seq FROM {unnest} WHERE {m} AND v.chunk_seq < 0"
        ).format(v=self.v, unnest=self._unnest([]), m=self._match("v", "c"))

    def settle(self) -> sql.Composed:
        """Start storing vectors: delete the queue rows still at their claimed ``seq`` and,
        for exactly those keys, the old vectors and failure records; return the keys.

        The DELETE locks each queue row until the transaction ends (waiting for a
        concurrent trigger's update of it to commit, then re-checking ``seq``), so the
        caller COPYs vectors for exactly the rows whose text is still the embedded one,
        in the same transaction (:meth:`copy_vectors`). Parameters: keys, seqs, job id,
        version.
        """
        return sql.SQL(
            """WITH done AS (
                   DELETE FROM {q} q USING {unnest} WHERE {match} AND q.seq = c.seq
                   RETURNING {qk}),
               old AS (DELETE FROM {v} v USING done WHERE {vmatch}),
               cleared AS (
                   DELETE FROM vectorfill.failures f USING done
                    WHERE f.job_id = %s AND f.version = %s AND f.row_key = {dkey})
               SELECT {dk} FROM done"""
        ).format(
            q=self.q,
            unnest=self._unnest([("seq", "bigint")]),
            match=self._match("q", "c"),
            qk=self._cols("q"),
            v=self.v,
            vmatch=self._match("v", "done"),
            dkey=self._failure_key("done"),
            dk=self._cols("done"),
        )

    def copy_vectors(self) -> sql.Composed:
        """Binary COPY straight into the vector table (after :meth:`settle`)."""
        return sql.SQL(
            "COPY {v} ({k}, chunk_seq, embedding, input_hash, model, chunk) FROM STDIN (FORMAT BINARY)"
        ).format(v=self.v, k=self._cols())

    # -- reading
    def search(self, per_row: bool = False) -> sql.Composed:
        """Nearest chunks (rows, for a job without a chunker) by cosine distance, with their
        chunk number and text. The ORDER BY ... LIMIT runs on the vector table alone so that
        its HNSW index (``vectorfill index``) serves it; the source is joined after, for the
        row's text. ``per_row``: the best chunk of each row, from the nearest
        ``%(k)s * %(fan)s`` chunks (an index scan returns a bounded candidate list).
        Parameters: q (query vector), k, fan."""
        src_match = self._src_match("n")
        # rows deleted whose deletion is still in the change log are not shown (their
        # vectors go when it is absorbed): a probe of the source's key per candidate
        live = sql.SQL("EXISTS (SELECT 1 FROM {src} s WHERE {m})").format(src=self.src, m=self._src_match("v"))
        inner = sql.SQL(
            """SELECT {k}, chunk_seq, chunk, embedding <=> %(q)s{cast} AS distance FROM {v} v WHERE {live}
                ORDER BY embedding <=> %(q)s{cast} LIMIT %(k)s"""
        )
        if per_row:
            inner = sql.SQL(
                """SELECT * FROM (
                       SELECT DISTINCT ON ({k}) * FROM (
                           SELECT {k}, chunk_seq, chunk, embedding <=> %(q)s{cast} AS distance FROM {v} v WHERE {live}
                            ORDER BY embedding <=> %(q)s{cast} LIMIT %(k)s * %(fan)s) c
                        ORDER BY {k}, distance) b
                    ORDER BY distance LIMIT %(k)s"""
            )
        return sql.SQL(
            """SELECT {nk}, n.distance, {text} AS text, n.chunk_seq, n.chunk
                 FROM ({inner}) n
                 LEFT JOIN {src} s ON {m}
                ORDER BY n.distance"""
        ).format(
            inner=inner.format(k=self._cols(), cast=self._query_cast(), v=self.v, live=live),
            nk=self._cols("n"),
            k=self._cols(),
            cast=self._query_cast(),
            text=text_expression(self.job, "s"),
            v=self.v,
            src=self.src,
            m=src_match,
        )

    def index_facts(self) -> sql.Composed:
        """Whether the HNSW index exists, and the planner's row estimate (-1: never analysed)."""
        return sql.SQL(
            """SELECT coalesce((SELECT indisvalid FROM pg_catalog.pg_index WHERE indexrelid = to_regclass({idx})), false),
                      (SELECT reltuples FROM pg_catalog.pg_class WHERE oid = to_regclass({v}))"""
        ).format(
            idx=sql.Literal(f"{SCHEMA}.{self.index_name()}"), v=sql.Literal(f"{SCHEMA}.{self.version.vector_table}")
        )

    def count_long_chunks(self) -> sql.Composed:
        """Stored chunks longer than ``%(bytes)s`` UTF-8 bytes (those a server that cuts
        silently may have cut, when the model's limit is not known)."""
        return sql.SQL("SELECT count(*) FROM {} WHERE octet_length(chunk) > %(bytes)s").format(self.v)

    def count_vectors(self) -> sql.Composed:
        return sql.SQL("SELECT count(*) FROM {}").format(self.v)

    def _query_cast(self) -> sql.SQL:
        """The query vector (sent as ``vector``) cast to the column's type, so that a
        ``halfvec`` column's index serves the ORDER BY."""
        return sql.SQL("::halfvec") if self.version.vector_type == "halfvec" else sql.SQL("")

    def index_name(self) -> str:
        return f"{self.version.vector_table}_hnsw"

    def create_index(self) -> sql.Composed:
        """An HNSW index for cosine distance (built without blocking writers)."""
        ops = sql.SQL("halfvec_cosine_ops" if self.version.vector_type == "halfvec" else "vector_cosine_ops")
        return sql.SQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {v} USING hnsw (embedding {ops})").format(
            name=sql.Identifier(self.index_name()), v=self.v, ops=ops
        )

    def index_valid(self) -> sql.Composed:
        """Whether the HNSW index exists (NULL: it does not) and is valid: a ``CREATE INDEX
        CONCURRENTLY`` that failed midway leaves an INVALID index behind."""
        return sql.SQL(
            "SELECT (SELECT indisvalid FROM pg_catalog.pg_index WHERE indexrelid = to_regclass({idx}))"
        ).format(idx=sql.Literal(f"{SCHEMA}.{self.index_name()}"))

    def drop_index(self) -> sql.Composed:
        return sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(SCHEMA, self.index_name()))


def view_name(job: Job) -> sql.Identifier:
    return sql.Identifier(SCHEMA, job.name)


def create_view(job: Job, version: Version) -> sql.Composed:
    """``vectorfill.<job>``: the active version's vectors, keyed like the source."""
    js = JobTables(job, version)
    keys: sql.Composable
    if len(job.key_columns) == 1:
        keys = sql.SQL("v.k1 AS id")
    else:
        keys = sql.SQL(", ").join(
            sql.SQL("v.{} AS {}").format(k, sql.Identifier(c)) for k, c in zip(js.k, job.key_columns, strict=True)
        )
    # the semi-join hides the vectors of rows deleted whose deletion is still in the change
    # log (absorbed at the next claim or count): a probe of the source's key per row shown
    return sql.SQL(
        """DROP VIEW IF EXISTS {view};
           CREATE VIEW {view} AS
           SELECT {keys}, v.chunk_seq, v.chunk, v.embedding, v.model, v.embedded_at FROM {v} v
            WHERE EXISTS (SELECT 1 FROM {src} s WHERE {m})"""
    ).format(view=view_name(job), keys=keys, v=js.v, src=js.src, m=js._src_match("v"))
