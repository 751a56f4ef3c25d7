"""Batch API submissions: what was sent to a provider's Batch API, and its rows.

Revision ID: 0006
Revises: 0002
Create Date: 2026-12-01

``vectorfill.batches`` holds one row per submission (one provider batch), written *before*
anything is sent, so that a run that dies at any point leaves a record the next run can
reconcile with the provider's list of batches (by the submission id in the batch's
metadata). ``vectorfill.batch_items`` maps each input (``custom_id`` = request number, and
the position in that request) back to its queue row: the key, the ``seq`` claimed and the
hash of the text sent. Texts themselves are not kept.
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE vectorfill.batches (
            id                uuid PRIMARY KEY,
            job_id            integer NOT NULL,
            version           integer NOT NULL,
            state             text NOT NULL
                              CHECK (state IN ('claiming', 'uploading', 'submitted', 'done', 'released')),
            provider_status   text,
            provider_batch_id text UNIQUE,
            input_file_id     text,
            output_file_id    text,
            error_file_id     text,
            rows              integer NOT NULL DEFAULT 0,
            requests          integer NOT NULL DEFAULT 0,
            tokens            bigint NOT NULL DEFAULT 0,
            billed_tokens     bigint,
            written           integer,
            stale             integer,
            failed            integer,
            retried           integer,
            error             text,
            created_at        timestamptz NOT NULL DEFAULT now(),
            submitted_at      timestamptz,
            finished_at       timestamptz,
            FOREIGN KEY (job_id, version) REFERENCES vectorfill.versions ON DELETE CASCADE
        )
        """
    )
    op.execute("CREATE INDEX batches_open ON vectorfill.batches (job_id) WHERE state <> 'done' AND state <> 'released'")
    op.execute(
        """
        CREATE TABLE vectorfill.batch_items (
            batch_id   uuid NOT NULL REFERENCES vectorfill.batches ON DELETE CASCADE,
            req        integer NOT NULL,
            pos        integer NOT NULL,
            row_key    jsonb NOT NULL,
            seq        bigint NOT NULL,
            input_hash bytea NOT NULL,
            tokens     integer NOT NULL,
            PRIMARY KEY (batch_id, req, pos)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE vectorfill.batch_items")
    op.execute("DROP TABLE vectorfill.batches")
