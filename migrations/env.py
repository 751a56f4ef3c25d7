"""Alembic environment for vectorfill's own schema.

Run through :func:`vectorfill.storage.db.migrate` (``vectorfill migrate``); the version table lives
in the ``vectorfill`` schema, so vectorfill never touches ``public.alembic_version`` of an
application that uses Alembic itself.
"""

from alembic import context
from sqlalchemy import create_engine, pool, text

config = context.config


def _run(connection) -> None:
    connection.execute(text("CREATE SCHEMA IF NOT EXISTS vectorfill"))
    connection.commit()
    context.configure(
        connection=connection,
        version_table_schema="vectorfill",
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()
