"""Prefect's own database, next to vectorfill's: ``<database>_prefect`` in the same cluster.

The local Prefect server (:mod:`vectorfill.orchestration.local_server`) and ``vectorfill
serve`` (:mod:`vectorfill.orchestration.serve`) keep their run history there, so that
history survives restarts and does not stall under load as SQLite does.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from vectorfill.errors import INSUFFICIENT_PRIVILEGE, DatabaseError, first_line
from vectorfill.storage.db import create_database

__all__ = ["ensure_prefect_database", "prefect_database_url"]


def prefect_database_url(url: str) -> tuple[str, str]:
    """(SQLAlchemy asyncpg URL of Prefect's database, its name) next to vectorfill's ``url``."""
    parts = urlsplit(url)
    vf_db = parts.path.lstrip("/") or "postgres"
    name = f"{vf_db}_prefect"
    return urlunsplit(parts._replace(scheme="postgresql+asyncpg", path="/" + name)), name


def ensure_prefect_database(url: str, name: str) -> None:
    """Create the database ``name`` in ``url``'s cluster unless it exists.

    Raises :class:`~vectorfill.errors.DatabaseRefused` with ``sqlstate``
    :data:`~vectorfill.errors.INSUFFICIENT_PRIVILEGE` as is when the role may not create it
    (the caller decides what to do then), a :class:`DatabaseError` for any other failure."""
    try:
        create_database(url, name)
    except DatabaseError as exc:
        if exc.sqlstate == INSUFFICIENT_PRIVILEGE:
            raise
        raise type(exc)(
            f"cannot create Prefect's database {name!r} next to vectorfill's: "
            f"{first_line(exc.__cause__ or exc)}. Grant CREATEDB, create it yourself, or point "
            "PREFECT_API_URL at a Prefect server you run",
            sqlstate=exc.sqlstate,
        ) from exc
