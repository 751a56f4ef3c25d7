"""Document hashes: what each document job row's chunks were made from.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

``vectorfill.document_hashes`` holds, per job version and source row (``row_key``, a JSON
array as in ``vectorfill.failures``), the sha256 of the document's bytes last parsed for
it, its format, ``context`` (sha256 of what else decides its chunks: the chunk template's
field values, the chunker's settings and token limit) and ``inputs``, the sha256 of each
chunk's text that parse gave, concatenated in chunk order. A row queued again whose bytes,
format and context are the recorded ones, and whose stored chunks still have exactly those
input hashes, is up to date without being parsed (:mod:`vectorfill.engine.documents`).
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE vectorfill.document_hashes (
            job_id   integer NOT NULL,
            version  integer NOT NULL,
            row_key  jsonb NOT NULL,
            sha256   bytea NOT NULL,
            format   text NOT NULL,
            context  bytea NOT NULL,
            inputs   bytea NOT NULL,
            read_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (job_id, version, row_key),
            FOREIGN KEY (job_id, version) REFERENCES vectorfill.versions ON DELETE CASCADE
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE vectorfill.document_hashes")
