"""Shared rate budgets (``vectorfill.budgets``) and learnt endpoint caps
(``vectorfill.endpoint_caps``): one row per endpoint each, shared by every run.

Locking
-------
One budget row per endpoint is a token bucket for requests and one for tokens, whose levels
are refilled by the time elapsed since ``updated_at``, measured by *the database's* clock
(``statement_timestamp()``), so that the clocks of the machines sharing it do not matter.
Every statement on it is one short autocommit statement on one row:

* :data:`BUDGET_LEASE` takes a chunk. Its CTE reads the row ``FOR UPDATE`` (a concurrent
  lease waits for the row lock, then sees the row as the other left it, because READ
  COMMITTED re-reads a row that changed while it waited), refills, grants
  ``least(wanted, level)`` and the ``UPDATE`` writes the rest back. Two leases therefore
  never grant the same budget, and the lock is held for the statement only: no lock and no
  transaction is held between statements, so a process that dies or hangs blocks nobody;
  budget it had leased and not spent is lost and comes back with the refill.
* :data:`BUDGET_GIVE_BACK` and :data:`BUDGET_PAUSE` are single-row UPDATE statements whose
  ``SET`` expressions read the row's own columns, which READ COMMITTED re-evaluates on
  the newest version of the row after waiting for its lock; the refill time never moves
  backwards (``greatest(now, updated_at)``).
"""

from __future__ import annotations

from psycopg import sql

# ----------------------------------------------------------------- shared rate budgets
# Parameters: endpoint (vectorfill.budgets.endpoint_key, never a secret); rpm/tpm (the
# limits the caller asserts, NULL for none); requests/tokens (how much it wants or gives
# back); seconds (a pause). Levels are float8: the refill is continuous.

#: Make the endpoint's row, full, unless it exists.
BUDGET_ENSURE = sql.SQL(
    """INSERT INTO vectorfill.budgets (endpoint, rpm, tpm, requests, tokens)
       VALUES (%(endpoint)s, %(rpm)s::float8, %(tpm)s::float8,
               coalesce(%(rpm)s::float8, 0), coalesce(%(tpm)s::float8, 0))
       ON CONFLICT (endpoint) DO NOTHING"""
)

_REFILLED = "least({cap}, {level} + extract(epoch FROM {t} - {updated})::float8 * {cap} / 60)"

#: Take up to ``requests``/``tokens`` from the endpoint's buckets, after refilling them; one
#: row (granted requests and tokens, the levels left, the limits in force and the seconds
#: of pause left), or none when the row does not exist yet (run :data:`BUDGET_ENSURE`).
#:
#: The limits in force are the lowest any lease asserted in the last 60 seconds, per kind:
#: a run configured higher than another on the same endpoint is held to the other's limit
#: while that one is working, and gets its own a minute after it stopped. A kind with no
#: limit (NULL) grants whatever is asked.
#:
#: Locking: the ``cur`` CTE locks the row ``FOR UPDATE``; see the module docstring.
BUDGET_LEASE = sql.SQL(
    """WITH cur AS (
           SELECT b.endpoint, b.requests, b.tokens, b.updated_at, b.paused_until,
                  b.rpm_set_at, b.tpm_set_at,
                  greatest(statement_timestamp(), b.updated_at) AS t,
                  CASE WHEN b.rpm_set_at > statement_timestamp() - interval '60 seconds'
                       THEN least(b.rpm, %(rpm)s::float8) ELSE %(rpm)s::float8 END AS rpm,
                  CASE WHEN b.tpm_set_at > statement_timestamp() - interval '60 seconds'
                       THEN least(b.tpm, %(tpm)s::float8) ELSE %(tpm)s::float8 END AS tpm
             FROM vectorfill.budgets b
            WHERE b.endpoint = %(endpoint)s
              FOR UPDATE
       ), refilled AS (
           SELECT cur.*, """
    + _REFILLED.format(cap="cur.rpm", level="cur.requests", t="cur.t", updated="cur.updated_at")
    + """ AS requests_now, """
    + _REFILLED.format(cap="cur.tpm", level="cur.tokens", t="cur.t", updated="cur.updated_at")
    + """ AS tokens_now
             FROM cur
       ), granted AS (
           SELECT r.*,
                  CASE WHEN r.rpm IS NULL THEN %(requests)s::float8
                       ELSE least(%(requests)s::float8, greatest(r.requests_now, 0)) END AS got_requests,
                  CASE WHEN r.tpm IS NULL THEN %(tokens)s::float8
                       ELSE least(%(tokens)s::float8, greatest(r.tokens_now, 0)) END AS got_tokens
             FROM refilled r
       )
       UPDATE vectorfill.budgets b
          SET rpm = g.rpm,
              tpm = g.tpm,
              requests = coalesce(g.requests_now - g.got_requests, 0),
              tokens = coalesce(g.tokens_now - g.got_tokens, 0),
              updated_at = g.t,
              rpm_set_at = CASE WHEN g.rpm IS NOT DISTINCT FROM %(rpm)s::float8 THEN g.t ELSE g.rpm_set_at END,
              tpm_set_at = CASE WHEN g.tpm IS NOT DISTINCT FROM %(tpm)s::float8 THEN g.t ELSE g.tpm_set_at END
         FROM granted g
        WHERE b.endpoint = g.endpoint
    RETURNING g.got_requests, g.got_tokens, b.requests, b.tokens, b.rpm, b.tpm,
              extract(epoch FROM greatest(b.paused_until, g.t) - g.t)::float8"""
)

_NOW = "greatest(statement_timestamp(), b.updated_at)"

#: Put unspent budget back (``requests``/``tokens``; a negative amount is a debt, charged):
#: refill, add, cap at the limit.
BUDGET_GIVE_BACK = sql.SQL(
    """UPDATE vectorfill.budgets b
          SET requests = CASE WHEN b.rpm IS NULL THEN 0 ELSE least(b.rpm, """
    + _REFILLED.format(cap="b.rpm", level="b.requests", t=_NOW, updated="b.updated_at")
    + """ + %(requests)s::float8) END,
              tokens = CASE WHEN b.tpm IS NULL THEN 0 ELSE least(b.tpm, """
    + _REFILLED.format(cap="b.tpm", level="b.tokens", t=_NOW, updated="b.updated_at")
    + """ + %(tokens)s::float8) END,
              updated_at = """
    + _NOW
    + """
        WHERE b.endpoint = %(endpoint)s"""
)

#: The provider refused a request (429): every run on the endpoint pauses ``seconds`` (from
#: its next lease on), and the buckets are emptied: the provider has less than they said.
BUDGET_PAUSE = sql.SQL(
    """UPDATE vectorfill.budgets b
          SET paused_until = greatest(b.paused_until,
                                      statement_timestamp() + make_interval(secs => %(seconds)s::float8)),
              requests = CASE WHEN b.rpm IS NULL THEN 0 ELSE least(0, """
    + _REFILLED.format(cap="b.rpm", level="b.requests", t=_NOW, updated="b.updated_at")
    + """) END,
              tokens = CASE WHEN b.tpm IS NULL THEN 0 ELSE least(0, """
    + _REFILLED.format(cap="b.tpm", level="b.tokens", t=_NOW, updated="b.updated_at")
    + """) END,
              updated_at = """
    + _NOW
    + """
        WHERE b.endpoint = %(endpoint)s"""
)


# ---------------------------------------------------------------------------------------------
# Endpoint capabilities (vectorfill.endpoint_caps, migration 0005): per-request limits and the
# encoding an endpoint was found to accept, learnt from its refusals, shared by every run.
# Parameters by name: endpoint, max_inputs, max_request_tokens, encoding_format, evidence.
# A learnt limit only ever lowers the one remembered (least); NULL keeps what is there.

#: The endpoint's remembered limits: max_inputs, max_request_tokens, encoding_format.
ENDPOINT_CAPS = sql.SQL(
    """SELECT max_inputs, max_request_tokens, encoding_format, max_input_tokens, input_token_ratio
         FROM vectorfill.endpoint_caps WHERE endpoint = %(endpoint)s"""
)

#: Remember what a refusal taught (limits lowered, never raised; the encoding replaced).
REMEMBER_ENDPOINT_CAPS = sql.SQL(
    """INSERT INTO vectorfill.endpoint_caps AS c
              (endpoint, max_inputs, max_request_tokens, encoding_format, max_input_tokens, input_token_ratio,
               evidence)
       VALUES (%(endpoint)s, %(max_inputs)s, %(max_request_tokens)s, %(encoding_format)s, %(max_input_tokens)s,
               %(input_token_ratio)s, %(evidence)s)
       ON CONFLICT (endpoint) DO UPDATE
          SET max_inputs = CASE WHEN EXCLUDED.max_inputs IS NULL THEN c.max_inputs
                                ELSE least(c.max_inputs, EXCLUDED.max_inputs) END,
              max_request_tokens = CASE WHEN EXCLUDED.max_request_tokens IS NULL THEN c.max_request_tokens
                                        ELSE least(c.max_request_tokens, EXCLUDED.max_request_tokens) END,
              encoding_format = coalesce(EXCLUDED.encoding_format, c.encoding_format),
              max_input_tokens = CASE WHEN EXCLUDED.max_input_tokens IS NULL THEN c.max_input_tokens
                                      ELSE least(c.max_input_tokens, EXCLUDED.max_input_tokens) END,
              input_token_ratio = CASE WHEN EXCLUDED.input_token_ratio IS NULL THEN c.input_token_ratio
                                       ELSE greatest(c.input_token_ratio, EXCLUDED.input_token_ratio) END,
              evidence = coalesce(EXCLUDED.evidence, c.evidence),
              learned_at = clock_timestamp()"""
)

#: Forget what was learnt about an endpoint (the server was upgraded or reconfigured).
FORGET_ENDPOINT_CAPS = sql.SQL("DELETE FROM vectorfill.endpoint_caps WHERE endpoint = %(endpoint)s")
