"""The documents sync flow: a bucket prefix or a directory listed into its document table
(``vectorfill serve --documents SOURCE=TABLE`` runs it every 10 minutes, as
``deployments/prefect.yaml`` declares). It only sequences the one task,
:func:`~vectorfill.tasks.documents.sync_document_table`; a document job on the table is then
queued, by its triggers, exactly the changed documents, for its next backfill or sync run.
"""

from __future__ import annotations

from prefect import flow

from vectorfill.tasks.documents import sync_document_table

__all__ = ["documents_sync"]


@flow(name="vectorfill-documents-sync", persist_result=False, log_prints=False)
def documents_sync(source: str, table: str) -> dict[str, int]:
    """Keep ``table`` in step with the listing of ``source``; returns what the sync did."""
    return sync_document_table(source, table)
