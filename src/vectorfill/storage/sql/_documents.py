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

``vectorfill.document_hashes`` (migration 0010) records, per job version and source row,
what a document job row's chunks were made from: the sha256 of the document's bytes, its
format, ``context`` (what else decides the chunks) and ``inputs`` (the chunks' input
hashes, concatenated in order). :func:`read_document_hashes` reads a claim's records,
:func:`write_document_hashes` writes them (one autocommit statement after the claim's
transaction: a record is trusted only while the row's stored chunks have its ``inputs``,
so it needs no transaction with the chunks).
"""

from __future__ import annotations

from psycopg import sql

from vectorfill.storage.sql._compose import JobTables

__all__ = [
    "DOCUMENT_COLUMNS",
    "copy_listing",
    "create_document_table",
    "create_listing",
    "index_listing",
    "merge_statements",
    "read_document_hashes",
    "write_document_hashes",
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


def read_document_hashes(js: JobTables) -> sql.Composed:
    """The records of claimed rows: ``k1..kn, sha256, format, context, inputs``.
    Parameters: keys, job id, version."""
    return sql.SQL(
        """SELECT {ck}, d.sha256, d.format, d.context, d.inputs
             FROM {unnest}
             JOIN vectorfill.document_hashes d
               ON d.job_id = %s AND d.version = %s AND d.row_key = {ckey}"""
    ).format(ck=js._cols("c"), unnest=js._unnest([]), ckey=js._failure_key("c"))


def write_document_hashes(js: JobTables) -> sql.Composed:
    """Forget the records of some rows (deleted, failed) and write others' (upserted).
    Parameters: forgotten keys, job id, version; job id, version, recorded keys, sha256s,
    formats, contexts, inputs."""
    return sql.SQL(
        """WITH forgotten AS (
               DELETE FROM vectorfill.document_hashes d USING {unnest_g}
                WHERE d.job_id = %s AND d.version = %s AND d.row_key = {gkey})
           INSERT INTO vectorfill.document_hashes AS d
                  (job_id, version, row_key, sha256, format, context, inputs, read_at)
           SELECT %s, %s, {ckey}, c.sha256, c.format, c.context, c.inputs, now() FROM {unnest}
           ON CONFLICT (job_id, version, row_key) DO UPDATE
              SET sha256 = EXCLUDED.sha256, format = EXCLUDED.format, context = EXCLUDED.context,
                  inputs = EXCLUDED.inputs, read_at = EXCLUDED.read_at"""
    ).format(
        unnest_g=js._unnest([], alias="g"),
        gkey=js._failure_key("g"),
        ckey=js._failure_key("c"),
        unnest=js._unnest([("sha256", "bytea"), ("format", "text"), ("context", "bytea"), ("inputs", "bytea")]),
    )
