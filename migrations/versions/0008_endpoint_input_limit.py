"""The model's input limit, learnt per endpoint beside its caps.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

``vectorfill.endpoint_caps.max_input_tokens``: the most tokens one *input* may have at the
endpoint (base URL + model), as the server said it ("This model's maximum context length is
256 tokens, however input[0] has 3667 tokens"). Claims cut longer inputs to it before they
are sent, so a server that refused one long input is not sent another (lowered, never
raised; forgotten with ``vectorfill check JOB --forget``).

``input_token_ratio``: for a model whose tokenizer is not known to vectorfill, the server's
tokens per estimated token (UTF-8 bytes / 3) of ASCII text, from the count the server named
for a refused input; long inputs are cut by the estimate scaled by it (raised, never lowered).
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE vectorfill.endpoint_caps ADD COLUMN max_input_tokens integer CHECK (max_input_tokens > 0)")
    op.execute("ALTER TABLE vectorfill.endpoint_caps ADD COLUMN input_token_ratio real CHECK (input_token_ratio > 0)")


def downgrade() -> None:
    op.execute("ALTER TABLE vectorfill.endpoint_caps DROP COLUMN input_token_ratio")
    op.execute("ALTER TABLE vectorfill.endpoint_caps DROP COLUMN max_input_tokens")
