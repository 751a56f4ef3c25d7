"""What every command shares: the ``--db`` option, the connection it names, and the parsing
of the chunk options (``job create`` and ``job set-model``)."""

from __future__ import annotations

from contextlib import AbstractContextManager

import psycopg
import typer

from vectorfill.cli._output import note
from vectorfill.config import DATABASE_URL_ENV
from vectorfill.database import resolve_database_url
from vectorfill.storage.db import connect

__all__ = ["DbOpt", "chunk_options", "conn", "url"]

DbOpt = typer.Option(None, "--db", help=f"Postgres URL (default: ${DATABASE_URL_ENV}, else the embedded Postgres)")


def url(db: str | None) -> str:
    """The database ``--db`` names (else the environment's, else the embedded Postgres)."""
    return resolve_database_url(db, announce=note)


def conn(db: str | None) -> AbstractContextManager[psycopg.Connection]:
    """A connection to :func:`url`'s database; committed when the block ends without error."""
    return connect(url(db))


def chunk_options(
    chunker: str | None, size: int | None, overlap: int | None, template: str | None, max_chunks: int | None
) -> dict[str, object]:
    """The chunk options given on the command line (a ``\\n`` in ``--chunk-template`` is a
    newline), for :func:`vectorfill.jobs.model_change.chunk_settings`."""
    given: dict[str, object] = {
        k: v
        for k, v in dict(chunker=chunker, size=size, overlap=overlap, template=template, max_chunks=max_chunks).items()
        if v is not None
    }
    if template is not None and "\\" in template:
        given["template"] = template.encode().decode("unicode_escape")
    return given
