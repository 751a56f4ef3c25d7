"""Per-version options (vector storage type, chunking) and the exact input of each vector.

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-01

``vectorfill.versions.options`` (jsonb) holds how a version stores its vectors
(``storage``: auto, vector or halfvec) and how it cuts rows into chunks (``chunking``); a
change of either is a new version, like a change of model. Every vector table gains
``chunk`` (the exact text embedded; NULL for vectors stored before this revision, until
their row is embedded again), and each job's view shows it.
"""

from alembic import op

revision = "0004"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE vectorfill.versions ADD COLUMN options jsonb NOT NULL DEFAULT '{}'")
    op.execute(
        """
        DO $$
        DECLARE v record; j record; keys text;
        BEGIN
          FOR v IN SELECT job_id, version FROM vectorfill.versions LOOP
            IF to_regclass(format('vectorfill._v_%s_%s', v.job_id, v.version)) IS NOT NULL THEN
              EXECUTE format('ALTER TABLE vectorfill.%I ADD COLUMN IF NOT EXISTS chunk text',
                             format('_v_%s_%s', v.job_id, v.version));
            END IF;
          END LOOP;
          -- the views of active versions, with the new column
{views}        END $$
        """.format(views=_recreate_views("v.chunk_seq, v.chunk, v.embedding, v.model, "))
    )


def downgrade() -> None:
    op.execute(
        """
        DO $$
        DECLARE j record; keys text;
        BEGIN
{views}        END $$
        """.format(views=_recreate_views("v.chunk_seq, v.embedding, v.model, "))
    )
    op.execute("ALTER TABLE vectorfill.versions DROP COLUMN options")


def _recreate_views(columns: str) -> str:
    """PL/pgSQL that re-creates the view of every job's active version with ``columns``
    after its key columns (the view's shape is the one thing up- and downgrade change)."""
    return f"""          FOR j IN SELECT jb.name, jb.key_columns, ve.job_id, ve.version
                     FROM vectorfill.jobs jb JOIN vectorfill.versions ve ON ve.job_id = jb.id
                    WHERE ve.state = 'active' LOOP
            IF cardinality(j.key_columns) = 1 THEN
              keys := 'v.k1 AS id';
            ELSE
              SELECT string_agg(format('v.%I AS %I', 'k' || o, c), ', ' ORDER BY o) INTO keys
                FROM unnest(j.key_columns) WITH ORDINALITY AS u(c, o);
            END IF;
            EXECUTE format('DROP VIEW IF EXISTS vectorfill.%I', j.name);
            EXECUTE format('CREATE VIEW vectorfill.%I AS SELECT %s, {columns}'
                           'v.embedded_at FROM vectorfill.%I v', j.name, keys,
                           format('_v_%s_%s', j.job_id, j.version));
          END LOOP;
"""
