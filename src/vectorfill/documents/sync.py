"""Keep a document table in step with a bucket prefix or a local directory.

:func:`sync_documents` streams the listing (:mod:`._listing`) page by page into a
temporary table, then merges it into the table in one short transaction (the statements
and their story are :mod:`vectorfill.storage.sql._documents`'s): renamed objects keep
their row, changed ones are updated, new ones inserted, gone ones deleted. A document job
on the table (``job create --uri uri``, which watches ``etag``) is then queued, by its
triggers, exactly the documents that changed. A sync with nothing changed writes nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import psycopg
from psycopg import sql as pgsql

from vectorfill.errors import SourceError
from vectorfill.storage import sql

from ._listing import Listing, list_source

__all__ = ["Synced", "sync_documents", "sync_listing"]


@dataclass(frozen=True)
class Synced:
    """What one sync did: objects listed; rows added, changed, renamed and deleted."""

    listed: int = 0
    added: int = 0
    changed: int = 0
    renamed: int = 0
    deleted: int = 0

    @property
    def written(self) -> int:
        return self.added + self.changed + self.renamed + self.deleted

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def sync_documents(conn: psycopg.Connection, source: str, table: str) -> Synced:
    """List ``source`` (``s3://bucket/prefix`` or a directory) into ``table`` (``schema.table``
    or ``table``, created when missing). ``conn`` must be in autocommit mode: each page is
    its own COPY, and the merge its own transaction."""
    return sync_listing(conn, list_source(source), table)


def sync_listing(conn: psycopg.Connection, listing: Listing, table: str) -> Synced:
    """:func:`sync_documents` for a listing already made (tests give one of their own)."""
    ident = _document_table(conn, table)
    conn.execute(sql.create_listing())
    listed = 0
    for page in listing.pages:
        with conn.cursor().copy(sql.copy_listing()) as copy:
            for o in page:
                copy.write_row((o.uri, o.etag, o.size, o.last_modified))
        listed += len(page)
    conn.execute(sql.index_listing())
    counts = {}
    with conn.transaction():
        for what, statement in sql.merge_statements(ident).items():
            counts[what] = conn.execute(statement, {"prefix": listing.prefix}).rowcount
    conn.execute(pgsql.SQL("DROP TABLE IF EXISTS pg_temp._vectorfill_listing"))
    return Synced(listed=listed, **counts)


def _document_table(conn: psycopg.Connection, table: str) -> pgsql.Identifier:
    schema, _, name = table.rpartition(".")
    schema = schema or "public"
    ident = pgsql.Identifier(schema, name)
    conn.execute(sql.create_document_table(ident))
    found = conn.execute(sql.LOOKUP_TABLE, {"schema": schema, "table": name}).fetchone()
    assert found is not None
    columns = {c: t for c, t, _ in conn.execute(sql.LOOKUP_COLUMNS, {"oid": found[0]})}
    wrong = {c: t for c, t in sql.DOCUMENT_COLUMNS.items() if columns.get(c) != t}
    if wrong or "id" not in columns:
        want = ", ".join(f"{c} {t}" for c, t in sql.DOCUMENT_COLUMNS.items())
        raise SourceError(
            f"{schema}.{name} is not a document table: it needs the columns id, {want} "
            f"(id its key, uri unique); name a new table and sync creates it"
        )
    return ident
