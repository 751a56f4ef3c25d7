"""The daily spend ledger (``vectorfill.spend``): dollars charged per scope and UTC day.

A scope is ``job:<name>`` (the job's ``max_usd_per_day``) or ``endpoint:<endpoint key>``
(``endpoint_max_usd_per_day``, shared by every job on that endpoint and model).

Locking
-------
:data:`SPEND_CHARGE` is one autocommit statement on one row: ``INSERT ... ON CONFLICT DO
UPDATE`` locks the scope's row for the day, and its ``WHERE`` re-checks the cap against the
row as the last writer left it (READ COMMITTED re-evaluates it after the lock wait), so two
runs never both spend the last dollars. Nothing is held between statements.
"""

from __future__ import annotations

from psycopg import sql

#: Charge ``usd`` to ``scope`` on ``day`` unless the day's total would pass ``cap``: returns
#: the new total, or no row when the charge is refused. Parameters: scope, day, usd, cap.
SPEND_CHARGE = sql.SQL(
    """INSERT INTO vectorfill.spend AS s (scope, day, usd)
       SELECT %(scope)s, %(day)s, %(usd)s::float8 WHERE %(usd)s::float8 <= %(cap)s::float8
       ON CONFLICT (scope, day) DO UPDATE SET usd = s.usd + excluded.usd, updated_at = now()
        WHERE s.usd + excluded.usd <= %(cap)s::float8
       RETURNING usd"""
)

#: Correct a charge by ``usd`` (the billed tokens' cost minus the charged estimate).
#: Parameters: scope, day, usd.
SPEND_ADJUST = sql.SQL(
    """UPDATE vectorfill.spend SET usd = greatest(0, usd + %(usd)s::float8), updated_at = now()
        WHERE scope = %(scope)s AND day = %(day)s"""
)

#: The day's total of ``scope`` (no row: nothing spent). Parameters: scope, day.
SPEND_TODAY = sql.SQL("SELECT usd FROM vectorfill.spend WHERE scope = %(scope)s AND day = %(day)s")
