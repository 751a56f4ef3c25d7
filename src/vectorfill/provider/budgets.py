"""Rate budgets shared through Postgres by every run, process and machine on one endpoint.

Providers count requests and tokens per minute per account, whoever sends them. Each run's
:class:`~vectorfill.provider.ratelimit.RateLimiter` keeps the endpoint's budget locally; on its own
it cannot know what other runs spend (the provider's headers tell it only afterwards), so
two runs given the whole budget overspend it. Every worker already talks to the vectorfill
database, so the budget lives there too: one row of ``vectorfill.budgets`` per endpoint,
a pair of token buckets refilled by the database's clock (the table's access is
:class:`vectorfill.storage.budgets.PostgresBudget`; the statements and their locking are in
:mod:`vectorfill.storage.sql._budgets`). This module holds what the provider layer needs:
the endpoint's name; the limiter (:mod:`vectorfill.provider.ratelimit`) receives the budget
as a :class:`~vectorfill.provider.ratelimit.SharedBudget` and never sees the database.

Asking the database before each request would put a round trip in front of every request,
so runs take the budget in **chunks** (leases), by default 1/20 of a minute's budget, and
spend them locally; the next chunk is leased in the background while half of one is left,
so a request rarely waits for the database. Unspent budget is given back when the run
ends. A run that dies keeps nothing locked (every statement is a one-row autocommit
statement) and loses at most the chunk it held, which the bucket refills in 3 seconds.

Prefect's global concurrency limits could carry the budget too, but they cost a round trip
to Prefect's server per request, with long stalls under load, where a lease here is paid
once per chunk (``bench/bench_ratelimit.py`` measures both; figures in bench/README.md).

What the shared bucket cannot see: budget leased and not yet spent (each run holds about
a chunk, more only while it puts together a request bigger than one), and spending by
anything that does not lease from it (another tool on the same account). After a lull in
which the buckets filled up, the provider may therefore admit up to a chunk per run less
than the runs hold; the provider's headers lower what a run holds, and a 429 pauses every
run and empties the shared buckets.

The endpoint is named by :func:`endpoint_key`: the base URL without user info, query or
fragment (where a secret could hide) and the model; never an API key. Runs on one
endpoint share one budget whatever key they use, which errs on the safe side for
accounts with several keys.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["endpoint_key"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def endpoint_key(base_url: str, model: str) -> str:
    """``scheme://host[:port]/path model``, the name of an endpoint's shared budget.

    Scheme and host are lowercased, a default port and trailing slashes dropped; user info,
    query and fragment are left out, so that no secret in the URL reaches the table::

        >>> endpoint_key("HTTPS://user:sk-x@API.OpenAI.com:443/v1/?api-key=sk-x", "text-embedding-3-small")
        'https://api.openai.com/v1 text-embedding-3-small'
    """
    parts = urlsplit(base_url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"  # IPv6
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    path = parts.path.rstrip("/")
    return f"{urlunsplit((scheme, host, path, '', ''))} {model.strip()}"
