"""Content-addressed look-ups in a version's vectors: the stored vector of an exact input.

A vector table's ``input_hash`` is the sha256 of the exact input embedded; within one
version (one model, one ``dimensions``) two inputs with the same hash have the same vector.
:meth:`ReuseStatements.find_vectors` finds one stored vector per hash asked, through the
``<table>_input_hash`` index (created with the table), so that a claim
copies the vectors it already has instead of paying for them again.

Locking: a plain read, no lock taken. A vector found may be deleted (its row edited or
deleted) right after the read; that does not matter, since a vector is a function of its
input alone: the copy is right whatever happens to the row it was read from.
"""

from __future__ import annotations

from psycopg import sql

from vectorfill.storage.sql._compose import JobTables

#: The 32-byte digests of the ``hashes`` parameter, as an array.
_DIGESTS = sql.SQL(
    "ARRAY(SELECT substring(%(hashes)s::bytea FROM i * 32 + 1 FOR 32)"
    " FROM generate_series(0, length(%(hashes)s::bytea) / 32 - 1) AS i)"
)


def digests(hashes) -> bytes:
    """The ``hashes`` parameter of :class:`ReuseStatements`' statements (sha256 digests)."""
    return b"".join(hashes)


class ReuseStatements(JobTables):
    """The content-addressed family of :class:`~vectorfill.storage.sql.JobSQL`."""

    def find_vectors(self) -> sql.Composed:
        """One stored vector (with the model the provider named, and the exact text it was
        made from: a long input may have been cut to the model's limit before it was sent)
        for each input hash given that this version has, in one index probe per hash. Parameter ``hashes``: the
        sha256 digests concatenated in one ``bytea`` (cut into 32-byte digests here: a
        ``bytea[]`` of thousands of elements costs the client and the server more than the
        look-up itself)."""
        return sql.SQL(
            """SELECT DISTINCT ON (input_hash) input_hash, embedding, model, chunk FROM {v}
                WHERE input_hash = ANY({digests}) AND chunk_seq >= 0
                ORDER BY input_hash"""
        ).format(v=self.v, digests=_DIGESTS)

    def known_hashes(self) -> sql.Composed:
        """Which of the input hashes given this version has a vector for (an estimate's
        look-up: no vector read). Parameter ``hashes``, as for :meth:`find_vectors`."""
        return sql.SQL(
            "SELECT DISTINCT input_hash FROM {v} WHERE input_hash = ANY({digests}) AND chunk_seq >= 0"
        ).format(v=self.v, digests=_DIGESTS)
