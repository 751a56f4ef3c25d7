"""Shared rate budgets: one token bucket per endpoint, used by every run on every machine.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

``vectorfill.budgets`` holds one row per endpoint (base URL and model, normalised by
:func:`vectorfill.provider.budgets.endpoint_key`; never an API key): the requests-per-minute and
tokens-per-minute limits in force, how much of each the bucket holds, and until when a 429
asked everyone to pause. Runs take the budget in chunks (:mod:`vectorfill.provider.budgets`); the
statements and their locking are in :mod:`vectorfill.storage.sql`.
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE vectorfill.budgets (
            endpoint     text PRIMARY KEY,
            rpm          double precision CHECK (rpm > 0),
            tpm          double precision CHECK (tpm > 0),
            requests     double precision NOT NULL DEFAULT 0,
            tokens       double precision NOT NULL DEFAULT 0,
            updated_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
            rpm_set_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
            tpm_set_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
            paused_until timestamptz NOT NULL DEFAULT '-infinity'
        )
        """
    )
    op.execute(
        """
        COMMENT ON TABLE vectorfill.budgets IS
        'Rate budgets shared by every vectorfill run on an endpoint: token buckets refilled at '
        'rpm/60 and tpm/60 per second since updated_at, taken in chunks by the runs'
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE vectorfill.budgets")
