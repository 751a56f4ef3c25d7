"""``vectorfill documents sync``: a table kept in step with a bucket prefix or a directory."""

from __future__ import annotations

import typer

from vectorfill.cli._common import DbOpt, url
from vectorfill.cli._output import out
from vectorfill.documents.sync import sync_documents
from vectorfill.storage.db import connect

__all__ = ["documents_sync"]


def documents_sync(
    source: str = typer.Argument(..., help="s3://BUCKET/PREFIX, or a local directory"),
    table: str = typer.Option(..., help="The document table, TABLE or SCHEMA.TABLE (created when missing)"),
    db: str | None = DbOpt,
) -> None:
    """List SOURCE and upsert one row per object into TABLE (uri, etag, size, last_modified),
    deleting the rows of objects gone; a renamed object keeps its row. A document job on
    TABLE (`vectorfill job create NAME --table TABLE --uri uri ...`) is then queued exactly
    the changed documents. A second sync with nothing changed writes nothing."""
    with connect(url(db), autocommit=True) as conn:
        synced = sync_documents(conn, source, table)
    out.print(
        f"{synced.listed:,} objects listed in {source}: {synced.added:,} added, {synced.changed:,} changed, "
        f"{synced.renamed:,} renamed, {synced.deleted:,} deleted in {table}"
    )
