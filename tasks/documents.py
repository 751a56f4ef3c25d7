"""A document table kept in step with a listing, as a Prefect task (the flow
:func:`vectorfill.flows.documents.documents_sync` runs it on a schedule)."""

from __future__ import annotations

from prefect import task

from vectorfill.documents.sync import sync_documents
from vectorfill.storage.db import connect

from .common import TASK_OPTIONS, database_url

__all__ = ["sync_document_table"]


@task(name="sync-documents", retries=2, retry_delay_seconds=[5, 30], **TASK_OPTIONS)
def sync_document_table(source: str, table: str) -> dict[str, int]:
    """List ``source`` (``s3://bucket/prefix`` or a directory) into ``table``: what it did
    (objects listed; rows added, changed, renamed, deleted). A transient failure (the
    database, the store) is retried; a sync with nothing changed writes nothing."""
    with connect(database_url(), autocommit=True) as conn:
        return sync_documents(conn, source, table).as_dict()
