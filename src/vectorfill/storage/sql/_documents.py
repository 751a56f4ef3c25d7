"""A document table kept in step with a listing (``vectorfill documents sync``).

The table (created when missing) holds one row per object::

    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, uri text NOT NULL UNIQUE,
    etag text, size bigint, last_modified timestamptz

A sync streams the listing, page by page, into a session's temporary table
(:func:`create_listing`, :func:`copy_listing`: each page its own COPY, so no transaction
waits on the store), then merges it in one short transaction (:func:`merge_statements`),
within the source's URI prefix only:

1. renames: an object gone and a new one with the same ETag and size (paired one to one)
   keep their row, whose ``uri`` changes (the document job re-reads it, finds the same
   chunks and sends nothing);
2. changes: rows whose ETag, size or last-modified differ are updated;
3. new objects are inserted; 4. rows of objects gone are deleted.

Each statement writes only rows that differ, so a second sync with nothing changed writes
nothing (the job's triggers see no statement touching a row). The table's row locks are
taken by those statements in the order Postgres meets them; the merge holds them only for
its own short transaction.
"""

from __future__ import annotations

from psycopg import sql

__all__ = [
    "DOCUMENT_COLUMNS",
    "copy_listing",
    "create_document_table",
    "create_listing",
    "index_listing",
    "merge_statements",
]

#: The columns a document table must have, with their types.
DOCUMENT_COLUMNS = {"uri": "text", "etag": "text", "size": "bigint", "last_modified": "timestamp with time zone"}

LISTING = sql.Identifier("_vectorfill_listing")


def create_document_table(table: sql.Identifier) -> sql.Composed:
    return sql.SQL(
        """CREATE TABLE IF NOT EXISTS {t} (
               id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
               uri text NOT NULL UNIQUE,
               etag text,
               size bigint,
               last_modified timestamptz)"""
    ).format(t=table)


def create_listing() -> sql.Composed:
    """A temporary table of this session for one listing (emptied if it exists)."""
    return sql.SQL(
        """CREATE TEMPORARY TABLE IF NOT EXISTS {l} (
               uri text NOT NULL, etag text, size bigint, last_modified timestamptz);
           TRUNCATE {l}"""
    ).format(l=LISTING)


def copy_listing() -> sql.Composed:
    return sql.SQL("COPY {l} (uri, etag, size, last_modified) FROM STDIN").format(l=LISTING)


def index_listing() -> sql.Composed:
    return sql.SQL("CREATE UNIQUE INDEX IF NOT EXISTS _vectorfill_listing_uri ON {l} (uri); ANALYZE {l}").format(
        l=LISTING
    )


def merge_statements(table: sql.Identifier) -> dict[str, sql.Composed]:
    """The merge's statements, in order (one transaction); each takes ``%(prefix)s``, the
    listing's URI prefix, and returns the rows it wrote."""
    in_prefix = sql.SQL("left(t.uri, length(%(prefix)s)) = %(prefix)s")
    return {
        "renamed": sql.SQL(
            """WITH gone AS (
                   SELECT t.id, t.etag, t.size,
                          row_number() OVER (PARTITION BY t.etag, t.size ORDER BY t.uri) AS n
                     FROM {t} t
                    WHERE {in_prefix} AND t.etag IS NOT NULL
                      AND NOT EXISTS (SELECT 1 FROM {l} l WHERE l.uri = t.uri)),
               new AS (
                   SELECT l.uri, l.etag, l.size, l.last_modified,
                          row_number() OVER (PARTITION BY l.etag, l.size ORDER BY l.uri) AS n
                     FROM {l} l
                    WHERE l.etag IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {t} t WHERE t.uri = l.uri))
               UPDATE {t} t SET uri = new.uri, last_modified = new.last_modified
                 FROM gone JOIN new ON new.etag = gone.etag AND new.size = gone.size AND new.n = gone.n
                WHERE t.id = gone.id"""
        ).format(t=table, l=LISTING, in_prefix=in_prefix),
        "changed": sql.SQL(
            """UPDATE {t} t SET etag = l.etag, size = l.size, last_modified = l.last_modified
                 FROM {l} l
                WHERE t.uri = l.uri
                  AND (t.etag, t.size, t.last_modified) IS DISTINCT FROM (l.etag, l.size, l.last_modified)"""
        ).format(t=table, l=LISTING),
        "added": sql.SQL(
            """INSERT INTO {t} (uri, etag, size, last_modified)
               SELECT l.uri, l.etag, l.size, l.last_modified FROM {l} l
                WHERE NOT EXISTS (SELECT 1 FROM {t} t WHERE t.uri = l.uri)"""
        ).format(t=table, l=LISTING),
        "deleted": sql.SQL(
            """DELETE FROM {t} t
                WHERE {in_prefix} AND NOT EXISTS (SELECT 1 FROM {l} l WHERE l.uri = t.uri)"""
        ).format(t=table, l=LISTING, in_prefix=in_prefix),
    }
