"""An index on every vector table's ``input_hash`` (the stored vector of an exact input),
and ``vectorfill.spend``, the daily spend ledger behind ``max_usd_per_day``.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

A claim looks the inputs it is about to send up by their sha256 in the version's vectors
(and in the active version's, for a re-embed with the same model), and copies the vectors
found instead of paying for them again. Tables created from this revision on get the index
with the table; this adds it to the tables that exist.

``vectorfill.spend`` holds, per scope (a job, or an endpoint shared by several) and UTC day,
the dollars charged before each request; a request that would pass the scope's cap is not
sent.
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def _each_vector_table(statement: str) -> str:
    return f"""
        DO $$
        DECLARE v record; t text;
        BEGIN
          FOR v IN SELECT job_id, version FROM vectorfill.versions LOOP
            t := format('_v_%s_%s', v.job_id, v.version);
            IF to_regclass(format('vectorfill.%I', t)) IS NOT NULL THEN
              EXECUTE {statement};
            END IF;
          END LOOP;
        END $$
        """


def upgrade() -> None:
    op.execute(
        """CREATE TABLE vectorfill.spend (
               scope text NOT NULL,
               day date NOT NULL,
               usd float8 NOT NULL DEFAULT 0,
               updated_at timestamptz NOT NULL DEFAULT now(),
               PRIMARY KEY (scope, day))"""
    )
    op.execute(
        _each_vector_table(
            "format('CREATE INDEX IF NOT EXISTS %I ON vectorfill.%I (input_hash)', t || '_input_hash', t)"
        )
    )


def downgrade() -> None:
    op.execute("DROP TABLE vectorfill.spend")
    op.execute(_each_vector_table("format('DROP INDEX IF EXISTS vectorfill.%I', t || '_input_hash')"))
