"""Which database a command or a run uses: ``--db``, else ``$VECTORFILL_DATABASE_URL``, else
the embedded Postgres, started if needed (``vectorfill db start``).

A module above both :mod:`vectorfill.storage` (which turns a URL into a session and does
not know the embedded server) and :mod:`vectorfill.local.pgembedded` (which runs it).
"""

from __future__ import annotations

from collections.abc import Callable

from vectorfill.config import DATABASE_URL_ENV
from vectorfill.errors import ConfigError
from vectorfill.storage.db import given_database_url

__all__ = ["resolve_database_url"]


def resolve_database_url(
    url: str | None = None, *, announce: Callable[[str], object] | None = None, start_embedded: bool = True
) -> str:
    """``url``, else ``$VECTORFILL_DATABASE_URL``, else the embedded Postgres (started if
    needed, and ``announce`` told so); with ``start_embedded=False``, a
    :class:`~vectorfill.errors.ConfigError` instead."""
    given = given_database_url(url)
    if given:
        return given
    if not start_embedded:
        raise ConfigError(f"no database given: pass --db or set {DATABASE_URL_ENV}")
    # imported here: a command given --db never loads the embedded server's machinery
    # lazy: the embedded Postgres package, only when no database URL is given
    from vectorfill.local import pgembedded

    found = pgembedded.start()
    if announce:
        announce(
            f"No --db or {DATABASE_URL_ENV} given: using the embedded Postgres in "
            f"{pgembedded.status().data_dir} (`vectorfill db stop` stops it)."
        )
    return given_database_url(found) or found
