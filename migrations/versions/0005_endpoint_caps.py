"""What each endpoint was found to accept, remembered for every run on it.

Revision ID: 0005
Revises: 0002
Create Date: 2026-12-01

``vectorfill.endpoint_caps`` holds one row per endpoint (base URL and model, named as the
rate budgets name it, :func:`vectorfill.provider.budgets.endpoint_key`; never an API key):
the most inputs and tokens one request may carry, learnt from the endpoint's own refusals
(a 413 or 400 naming its limit), and the response encoding it accepts (``float`` once it
refused ``base64``). A run reads it before its first request and writes to it when it
learns something (:mod:`vectorfill.provider.negotiate`); the statements are in
:mod:`vectorfill.storage.sql`.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE vectorfill.endpoint_caps (
            endpoint           text PRIMARY KEY,
            max_inputs         integer CHECK (max_inputs > 0),
            max_request_tokens integer CHECK (max_request_tokens > 0),
            encoding_format    text CHECK (encoding_format IN ('base64', 'float')),
            evidence           text,
            learned_at         timestamptz NOT NULL DEFAULT clock_timestamp()
        )
        """
    )
    op.execute(
        """
        COMMENT ON TABLE vectorfill.endpoint_caps IS
        'Per-request limits and the encoding each endpoint was found to accept, learnt from its '
        'refusals and shared by every vectorfill run on it'
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE vectorfill.endpoint_caps")
