"""Change logs: one per job, written by its triggers (one row per statement) and folded into
its versions' queues by its absorber.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

Each job gets ``vectorfill._c_<job id>`` (``seq``, ``op`` and one uncompressed array per key
column, typed like the key). The absorber function and the triggers that write the log
are per-job code, installed by ``vectorfill migrate`` right after this revision
(:func:`vectorfill.storage.jobs.upgrade_triggers`), as for every job created from now on.

The downgrade first folds each job's log into its queues (nothing written is lost), then
drops the logs, the absorbers and the jobs' triggers (which write the logs): the older
release's ``vectorfill migrate`` re-installs its own triggers. Writes to a source table
between the two are not queued.
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        DO $$
        DECLARE j record; cols text; storage text;
        BEGIN
          FOR j IN SELECT id, key_types FROM vectorfill.jobs LOOP
            SELECT string_agg(format('k%s %s[] NOT NULL', i, t), ', ' ORDER BY i),
                   string_agg(format('ALTER TABLE vectorfill.%I ALTER COLUMN k%s SET STORAGE EXTERNAL;',
                                     '_c_' || j.id, i), ' ' ORDER BY i)
              INTO cols, storage
              FROM unnest(j.key_types) WITH ORDINALITY AS k(t, i);
            EXECUTE format('CREATE TABLE IF NOT EXISTS vectorfill.%I (seq bigint NOT NULL, op "char" NOT NULL, %s)',
                           '_c_' || j.id, cols);
            EXECUTE storage;
          END LOOP;
        END $$
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DO $$
        DECLARE j record; t text;
        BEGIN
          FOR j IN SELECT id, name, source_schema, source_table FROM vectorfill.jobs LOOP
            IF to_regprocedure(format('vectorfill.%I()', '_absorb_' || j.id)) IS NOT NULL THEN
              EXECUTE format('SELECT vectorfill.%I()', '_absorb_' || j.id);
            END IF;
            IF to_regclass(format('%I.%I', j.source_schema, j.source_table)) IS NOT NULL THEN
              FOREACH t IN ARRAY ARRAY['insert', 'update', 'delete', 'truncate'] LOOP
                EXECUTE format('DROP TRIGGER IF EXISTS %I ON %I.%I',
                               'vectorfill_' || j.name || '_' || t, j.source_schema, j.source_table);
              END LOOP;
            END IF;
            EXECUTE format('DROP FUNCTION IF EXISTS vectorfill.%I()', '_trg_' || j.id);
            EXECUTE format('DROP FUNCTION IF EXISTS vectorfill.%I()', '_absorb_' || j.id);
            EXECUTE format('DROP TABLE IF EXISTS vectorfill.%I', '_c_' || j.id);
          END LOOP;
        END $$
        """
    )
