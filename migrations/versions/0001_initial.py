"""vectorfill's own tables: jobs, versions, failures and the queue sequence.

Revision ID: 0001
Revises:
Create Date: 2026-11-24

Per-job queue and vector tables (``vectorfill._q_*``/``_v_*``), views and the triggers on
source tables are created by ``vectorfill job create``; the downgrade removes those too,
so that a downgrade to base leaves no trigger behind on any user table.
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute("CREATE SEQUENCE vectorfill.queue_seq")
    op.execute(
        """
        CREATE TABLE vectorfill.jobs (
            id            serial PRIMARY KEY,
            name          text NOT NULL UNIQUE CHECK (name ~ '^[a-z][a-z0-9_]{0,39}$'),
            source_schema text NOT NULL,
            source_table  text NOT NULL,
            key_columns   text[] NOT NULL CHECK (cardinality(key_columns) >= 1),
            key_types     text[] NOT NULL,
            text_columns  text[] NOT NULL CHECK (cardinality(text_columns) >= 1),
            template      text,
            settings      jsonb NOT NULL DEFAULT '{}',
            created_at    timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE vectorfill.versions (
            job_id       integer NOT NULL REFERENCES vectorfill.jobs (id) ON DELETE CASCADE,
            version      integer NOT NULL,
            model        text NOT NULL,
            base_url     text NOT NULL,
            api_key_env  text,
            dimensions   integer CHECK (dimensions > 0),
            vector_dims  integer CHECK (vector_dims > 0),
            state        text NOT NULL CHECK (state IN ('filling', 'active', 'paused', 'retired')),
            created_at   timestamptz NOT NULL DEFAULT now(),
            activated_at timestamptz,
            PRIMARY KEY (job_id, version)
        )
        """
    )
    op.execute("CREATE UNIQUE INDEX versions_one_active ON vectorfill.versions (job_id) WHERE state = 'active'")
    op.execute(
        """
        CREATE TABLE vectorfill.failures (
            job_id    integer NOT NULL,
            version   integer NOT NULL,
            row_key   jsonb NOT NULL,
            reason    text NOT NULL,
            status    integer,
            message   text NOT NULL,
            attempts  integer NOT NULL DEFAULT 0,
            failed_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (job_id, version, row_key),
            FOREIGN KEY (job_id, version) REFERENCES vectorfill.versions ON DELETE CASCADE
        )
        """
    )


def downgrade() -> None:
    # Remove what jobs installed: triggers on user tables first, then per-job objects.
    op.execute(
        """
        DO $$
        DECLARE j record; t record;
        BEGIN
          FOR j IN SELECT id, name, source_schema, source_table FROM vectorfill.jobs LOOP
            FOR t IN SELECT unnest(ARRAY['insert', 'update', 'delete', 'truncate']) AS op LOOP
              IF to_regclass(format('%I.%I', j.source_schema, j.source_table)) IS NOT NULL THEN
                EXECUTE format('DROP TRIGGER IF EXISTS %I ON %I.%I',
                               'vectorfill_' || j.name || '_' || t.op, j.source_schema, j.source_table);
              END IF;
            END LOOP;
            EXECUTE format('DROP FUNCTION IF EXISTS vectorfill.%I()', '_trg_' || j.id);
            EXECUTE format('DROP VIEW IF EXISTS vectorfill.%I', j.name);
          END LOOP;
          FOR t IN SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = 'vectorfill' AND c.relkind = 'r'
                      AND (c.relname LIKE '\\_q\\_%' OR c.relname LIKE '\\_v\\_%') LOOP
            EXECUTE format('DROP TABLE vectorfill.%I', t.relname);
          END LOOP;
        END $$
        """
    )
    op.execute("DROP TABLE vectorfill.failures")
    op.execute("DROP TABLE vectorfill.versions")
    op.execute("DROP TABLE vectorfill.jobs")
    op.execute("DROP SEQUENCE vectorfill.queue_seq")
