"""What each endpoint was found to accept, kept in ``vectorfill.endpoint_caps`` (migration
0005) and shared by every run: loaded before a run's first request, remembered when a
refusal teaches something (:class:`vectorfill.provider.negotiate.Negotiator` decides what;
it receives :func:`remembering`'s callable and never sees the database).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from vectorfill.errors import UNDEFINED_TABLE, DatabaseRefused
from vectorfill.records import Caps
from vectorfill.storage import sql
from vectorfill.storage.db import aconnect

__all__ = ["load_caps", "remember_caps", "remembering"]


async def load_caps(url: str, endpoint: str) -> Caps:
    """What ``vectorfill.endpoint_caps`` remembers of ``endpoint``; nothing when the table
    does not exist yet (a database not migrated to 0005)."""
    try:
        async with aconnect(url) as conn:
            cur = await conn.execute(sql.ENDPOINT_CAPS, {"endpoint": endpoint})
            row = await cur.fetchone()
    except DatabaseRefused as exc:
        if exc.sqlstate == UNDEFINED_TABLE:
            return Caps()
        raise
    if row is None:
        return Caps()
    return Caps(
        max_inputs=row[0],
        max_request_tokens=row[1],
        encoding_format=row[2],
        max_input_tokens=row[3],
        input_token_ratio=row[4],
    )


async def remember_caps(url: str, endpoint: str, caps: Caps, evidence: str) -> None:
    """Keep what was learnt about ``endpoint`` for every run (limits only lowered)."""
    async with aconnect(url) as conn:
        await conn.execute(
            sql.REMEMBER_ENDPOINT_CAPS,
            {
                "endpoint": endpoint,
                "max_inputs": caps.max_inputs,
                "max_request_tokens": caps.max_request_tokens,
                "encoding_format": caps.encoding_format,
                "max_input_tokens": caps.max_input_tokens,
                "input_token_ratio": caps.input_token_ratio,
                "evidence": evidence[:500],
            },
        )
        await conn.commit()


def remembering(url: str | None, endpoint: str) -> Callable[[Caps, str], Awaitable[None]]:
    """The ``remember`` of a :class:`~vectorfill.provider.negotiate.Negotiator` that keeps
    what it learns about ``endpoint`` in the database at ``url`` (nowhere when None)::

        negotiator = Negotiator(client, caps=await load_caps(url, key), remember=remembering(url, key))
    """

    async def remember(learnt: Caps, evidence: str) -> None:
        if url:
            await remember_caps(url, endpoint, learnt, evidence)

    return remember
