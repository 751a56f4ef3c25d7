"""Stage 1: lease queued rows, read their current text, and pack them into requests.

Three steps: claim (:func:`lease_rows`: SQL), plan (:func:`plan_rows`: a pure function over
the typed rows read, :class:`Leased`, deciding each row's fate as a :class:`Plan`), settle
(:func:`settle_claim`: SQL, for the rows that need no request); :func:`claim_rows` runs them.

Rows that need no request are settled here, before anything is paid for: rows deleted
from the source, rows whose text still hashes to the stored vector's input (unchanged),
rows with no text (recorded as failures) and rows that ran out of attempts.

With a chunker (:mod:`vectorfill.provider.chunking`) each row is cut into chunks here, and
only chunks whose input (sha256) the row has no stored vector for become requests; the
others are kept (:class:`RowPlan`). A row whose chunks are all stored, in another order,
is renumbered here with no request; one with more than ``max_chunks`` fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import NamedTuple

import psycopg

from vectorfill.errors import DatabaseError
from vectorfill.provider.chunking import TooManyChunks, chunk_fields, chunk_text, render_template
from vectorfill.provider.tokens import TokenCounter, counter_for, max_input_tokens
from vectorfill.storage import sql
from vectorfill.storage.db import LaneConnection, aconnect

from .documents import read_documents, record_documents
from .reuse import Found, find_vectors, mark_reused
from .work import Work, database_url

__all__ = [
    "Claim",
    "Failure",
    "Item",
    "Leased",
    "Plan",
    "Request",
    "RowPlan",
    "claim_rows",
    "keep_claims",
    "lease_rows",
    "pack",
    "plan_rows",
    "release_rows",
    "settle_claim",
    "settle_plans",
]


@dataclass(frozen=True)
class Item:
    key: tuple
    seq: int
    text: str
    input_hash: bytes
    tokens: int
    """Exact when it decided truncation or packing, else an estimate (see :func:`count_tokens`)."""
    counted: bool = False
    """``tokens`` is the tokenizer's count for every text of the claim (a job with a TPM
    budget), or for a truncated text its bound: the embed stage need not count it again."""
    chunk_seq: int = 0
    """Which chunk of its row this input is (0 for a job without a chunker)."""
    reuse: bool = False
    """Not sent: its vector is stored already, or another item of the claim sends the same
    input (:mod:`vectorfill.engine.reuse`); the store copies it."""


@dataclass(frozen=True)
class RowPlan:
    """How one row's chunks are stored: ``chunks`` in all, of which ``kept`` (``chunk_seq``,
    input hash) reuse a stored vector of the row with the same input (no request); the
    others are the row's items."""

    key: tuple
    seq: int
    chunks: int
    kept: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True)
class Request:
    """The inputs of one API request."""

    items: tuple[Item, ...]
    rows: tuple[RowPlan, ...] = ()
    """The plans of the rows with items here (none for rows packed by :func:`pack` alone)."""
    continues: bool = False
    """The last row's chunks go on in the next request (a row too big for one request): the
    two are stored together, so a row's chunks are replaced in one transaction."""

    @property
    def tokens(self) -> int:
        """Tokens sent (items copied from a stored vector are not)."""
        return sum(i.tokens for i in self.items if not i.reuse)

    @property
    def sent(self) -> tuple[Item, ...]:
        """The items the request sends: all but those it copies."""
        return tuple(i for i in self.items if not i.reuse)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class Claim:
    requests: tuple[Request, ...]
    claimed: int = 0
    unchanged: int = 0
    deleted: int = 0
    failed: int = 0
    truncated: int = 0
    failures: tuple[str, ...] = field(default_factory=tuple)
    found: Found = field(default_factory=Found)
    """The vectors stored already for some of its inputs (their items are marked
    :attr:`Item.reuse`)."""
    given_back: int = 0
    """Rows leased and given back at once, unread (a document job's claim over its byte
    bound): the queue is not drained, however few rows the claim kept."""

    @property
    def reused(self) -> int:
        """Inputs copied, not sent (:attr:`Item.reuse`)."""
        return sum(i.reuse for r in self.requests for i in r.items)

    @property
    def derived(self) -> int:
        """Of those, inputs whose vector is derived from another version's (shortened)."""
        return sum(i.reuse and i.input_hash in self.found.derived for r in self.requests for i in r.items)


def key_arrays(work: Work, keys: list[tuple]) -> list[list]:
    """Column-wise key lists, for ``unnest(%s::t1[], ...)`` parameters."""
    return [list(col) for col in zip(*keys, strict=True)] if keys else [[] for _ in work.job.key_columns]


def pack(
    items: list[Item], max_inputs: int, max_tokens: int, plans: dict[tuple, RowPlan] | None = None
) -> list[Request]:
    """Greedy packing in claim order, bounded by input count and by tokens per request.

    The items of one row (its chunks, consecutive in ``items``) go in one request whenever
    they fit in one: a row that does not fit in what is left of a request starts the next.
    A row larger than one request spans consecutive ones (from the start of one, so that
    it shares its store group with no other row), marked :attr:`Request.continues`. Items
    copied rather than sent (:attr:`Item.reuse`) count towards neither bound."""
    plans = plans or {}
    requests: list[Request] = []
    current: list[Item] = []
    tokens = 0

    def flush(continues: bool) -> None:
        keys = dict.fromkeys(i.key for i in current)
        rows = tuple(plans[k] for k in keys if k in plans)
        requests.append(Request(tuple(current), rows, continues))

    group_end = 0
    inputs = 0  # items of ``current`` sent
    for n, item in enumerate(items):
        if n >= group_end and plans:  # the start of a row's items: keep them together if they fit
            group_end = n + 1
            while group_end < len(items) and items[group_end].key == item.key:
                group_end += 1
            size = sum(not i.reuse for i in items[n:group_end])
            group_tokens = sum(i.tokens for i in items[n:group_end] if not i.reuse)
            if current and (inputs + size > max_inputs or tokens + group_tokens > max_tokens):
                flush(False)
                current, tokens, inputs = [], 0, 0
        if not item.reuse and current and (inputs >= max_inputs or tokens + item.tokens > max_tokens):
            flush(bool(plans) and current[-1].key == item.key)
            current, tokens, inputs = [], 0, 0
        current.append(item)
        if not item.reuse:
            tokens += item.tokens
            inputs += 1
    if current:
        flush(False)
    return requests


async def _fail(conn, js: sql.JobSQL, work: Work, rows: list[Failure]) -> None:
    """Record rows as failed."""
    if not rows:
        return
    keys = [r.key for r in rows]
    params = key_arrays(work, keys) + [
        [r.seq for r in rows],
        [r.reason for r in rows],
        [r.status for r in rows],
        [r.message for r in rows],
        work.job.id,
        work.version.version,
    ]
    await conn.execute(js.fail(), params)


class Leased(NamedTuple):
    """One claimed row as the claim read it."""

    key: tuple
    seq: int
    present: bool
    """The source row still exists."""
    text: str | None
    """The row's text (its text columns joined), or None."""
    stored: list | None
    """The input hashes of the row's stored vectors (by ``chunk_seq``), if any."""
    fields: tuple
    """The values of the columns the job's template or chunker names."""
    attempts: int
    last_error: str | None


class Failure(NamedTuple):
    """A row recorded as failed: why (``reason``: ``empty_text``, ``too_long``, ...), the
    provider's HTTP status if it refused it, and the message a person reads."""

    key: tuple
    seq: int
    reason: str
    status: int | None
    message: str


@dataclass(frozen=True)
class Plan:
    """What a claim's rows need, decided before anything is paid for (:func:`plan_rows`)."""

    items: list[Item]
    """The inputs to send, in claim order (a row's chunks consecutive)."""
    rows: dict[tuple, RowPlan]
    """How each row with items is stored."""
    gone: list[tuple[tuple, int]] = field(default_factory=list)
    """(key, seq) of rows deleted from the source: settled (their vectors dropped)."""
    unchanged: list[tuple[tuple, int]] = field(default_factory=list)
    """(key, seq) of rows whose stored vectors are already right: dequeued."""
    moved: list[RowPlan] = field(default_factory=list)
    """Rows whose chunks are all stored already, in another order: renumbered."""
    failed: list[Failure] = field(default_factory=list)
    truncated: int = 0

    @property
    def settles(self) -> bool:
        """Some rows are settled at the claim, with no request."""
        return bool(self.gone or self.unchanged or self.failed or self.moved)


async def claim_rows(work: Work, limit: int, token: uuid.UUID, db: LaneConnection, *, reuse: bool = True) -> Claim:
    """Lease up to ``limit`` rows of ``work``'s queue for the run ``token`` and return them
    packed into requests: claim (:func:`lease_rows`, SQL), plan (:func:`plan_rows`, pure),
    settle what needs no request (:func:`settle_claim`, SQL), and, with ``reuse``, find
    the inputs whose vectors exist already (:mod:`vectorfill.engine.reuse`: one query),
    so that only the others are sent, each distinct one once."""
    js = sql.JobSQL(work.job, work.version)
    s = work.settings
    async with db.translating("claiming rows", job=work.job.name) as conn:
        claimed, leased = await lease_rows(conn, js, work, limit, token)
    if not claimed:
        return Claim(requests=())
    read = await read_documents(work, leased, token, db)  # a document job's URIs → their texts
    plan = plan_rows(work, read.rows)
    plan.failed.extend(Failure(u.key, u.seq, u.reason, None, u.message) for u in read.unreadable)
    plan.unchanged.extend(read.unchanged)  # documents whose bytes their stored chunks were made from
    await record_documents(work, read, plan, db)
    found = Found()
    items = plan.items
    if plan.settles or (reuse and items):
        # (failing, the claims stay leased; their leases expire or the run gives them back)
        async with db.translating("settling claimed rows", job=work.job.name) as conn:
            if plan.settles:
                await settle_claim(conn, js, work, plan)
            if reuse and items:
                found = await find_vectors(conn, work.job, work.version, [i.input_hash for i in items])
                items = mark_reused(items, found.vectors)
    return Claim(
        requests=tuple(pack(items, s.max_inputs, _request_tokens(s), plan.rows)),
        claimed=claimed - read.given_back,
        given_back=read.given_back,
        unchanged=len(plan.unchanged) + len(plan.moved),
        deleted=len(plan.gone),
        failed=len(plan.failed),
        truncated=plan.truncated,
        failures=tuple(f.message for f in plan.failed[:20]),
        found=found,
    )


async def lease_rows(
    conn: psycopg.AsyncConnection, js: sql.JobSQL, work: Work, limit: int, token: uuid.UUID
) -> tuple[int, list[Leased]]:
    """Claim: lease up to ``limit`` free rows of the queue for ``token`` (the changes written
    since the last claim absorbed first) and read their current text; returns the number
    leased and the rows as read."""
    # the changes written since the last claim reach the queues first (a transaction of
    # its own, committed: what it queued is claimable below)
    await conn.execute(sql.absorb(work.job))
    async with conn.transaction():
        claimed = await (
            await conn.execute(js.claim(), {"limit": limit, "lease_s": work.settings.lease_s, "token": token})
        ).fetchall()
        if not claimed:
            return 0, []
        n = len(work.job.key_columns)
        keys = [tuple(r[:n]) for r in claimed]
        seqs = [r[n] for r in claimed]
        attempts = {tuple(r[:n]): (r[n + 1], r[n + 2]) for r in claimed}
        fields = chunk_fields(work.version.chunking)
        rows = await (await conn.execute(js.read_texts(fields), key_arrays(work, keys) + [seqs])).fetchall()
    leased = []
    for row in rows:
        key = tuple(row[:n])
        tries, last_error = attempts.get(key, (0, None))
        leased.append(Leased(key, row[n], row[n + 1], row[n + 2], row[n + 3], tuple(row[n + 4 :]), tries, last_error))
    return len(claimed), leased


def plan_rows(work: Work, rows: list[Leased]) -> Plan:
    """Plan: what each claimed row needs (a pure function, no I/O): deleted from the source,
    unchanged, failed (no text, out of attempts, too long, too many chunks), renumbered
    chunks, or inputs to send (rendered, chunked, counted, truncated)."""
    s = work.settings
    gone: list[tuple[tuple, int]] = []
    unchanged: list[tuple[tuple, int]] = []
    failed: list[Failure] = []
    todo: list[tuple[tuple, int, str, bytes]] = []
    counter = counter_for(work.version.model)
    max_tokens = s.max_input_tokens or max_input_tokens(work.version.model)
    chunking = work.version.chunking
    fields = chunk_fields(chunking)
    chunked: list[Item] = []
    plans: dict[tuple, RowPlan] = {}
    moved: list[RowPlan] = []  # rows whose chunks are all stored already, in another order
    for row in rows:
        key, seq, text = row.key, row.seq, row.text
        if not row.present:
            gone.append((key, seq))
            continue
        if text is None or not text.strip():
            what = "NULL" if text is None else "empty" if not text else "whitespace-only"
            failed.append(
                Failure(
                    key,
                    seq,
                    "empty_text",
                    None,
                    f"row {_show(key)} of {work.job.source} has {what} text in "
                    f"{', '.join(work.job.text_columns)}; it gets no vector until the text is filled",
                )
            )
            continue
        if row.attempts > s.max_attempts:
            failed.append(
                Failure(
                    key,
                    seq,
                    "max_attempts",
                    None,
                    f"row {_show(key)} failed {s.max_attempts} attempts (last error: {row.last_error or 'none recorded'}); "
                    f"fix the cause, then `vectorfill retry {work.job.name} --all`",
                )
            )
            continue
        stored_hashes = [bytes(h) for h in row.stored] if row.stored else []
        if not chunking.enabled:  # the whole text, one input (truncated as before if too long)
            if chunking.template is not None:
                text = render_template(chunking.template, text, dict(zip(fields, row.fields, strict=True)))
            digest = hashlib.sha256(text.encode("utf-8")).digest()
            if stored_hashes == [digest]:
                unchanged.append((key, seq))
                continue
            todo.append((key, seq, text, digest))
            plans[key] = RowPlan(key, seq, 1)
            continue
        try:
            chunks = chunk_text(
                text, chunking, counter, limit=max_tokens, fields=dict(zip(fields, row.fields, strict=True))
            )
        except TooManyChunks as exc:
            failed.append(Failure(key, seq, "too_many_chunks", None, f"row {_show(key)} of {work.job.source} {exc}"))
            continue
        hashes = [hashlib.sha256(c.text.encode("utf-8", "surrogatepass")).digest() for c in chunks]
        if stored_hashes == hashes:
            unchanged.append((key, seq))
            continue
        have = set(stored_hashes)
        kept = tuple((c.seq, h) for c, h in zip(chunks, hashes, strict=True) if h in have)
        plan = RowPlan(key, seq, len(chunks), kept)
        send = [
            Item(key, seq, c.text, h, c.tokens, counter.exact, c.seq)
            for c, h in zip(chunks, hashes, strict=True)
            if h not in have
        ]
        if send:
            plans[key] = plan
            chunked.extend(send)
        else:
            moved.append(plan)

    counted = s.tpm is not None and counter.exact  # then count_tokens counts every text exactly
    tokens = count_tokens(
        counter, [t[2] for t in todo], max_tokens, _request_tokens(s), exact=s.tpm is not None, max_inputs=s.max_inputs
    )
    items: list[Item] = []
    truncated = 0
    for (key, seq, text, digest), tok in zip(todo, tokens, strict=True):
        if max_tokens and counter.exact and tok > max_tokens:
            if s.on_too_long == "fail":
                failed.append(
                    Failure(
                        key,
                        seq,
                        "too_long",
                        None,
                        f"row {_show(key)} of {work.job.source} has {tok} tokens, over the model's "
                        f"limit of {max_tokens}; shorten it, or let vectorfill truncate (on_too_long=truncate), "
                        "or cut it into chunks (--chunker recursive)",
                    )
                )
                del plans[key]
                continue
            text, tok, truncated = counter.truncate(text, max_tokens), max_tokens, truncated + 1
        items.append(Item(key, seq, text, digest, tok, counted))
    items.extend(chunked)
    return Plan(items, plans, gone, unchanged, moved, failed, truncated)


async def settle_claim(conn: psycopg.AsyncConnection, js: sql.JobSQL, work: Work, plan: Plan) -> None:
    """Settle: in one transaction, the rows of ``plan`` that need no request: drop the
    deleted ones (queue row, vectors, failure record), dequeue the unchanged ones, renumber
    the moved chunks, record the failures."""
    async with conn.transaction():
        gone, unchanged = plan.gone, plan.unchanged
        if gone:  # source row deleted: drop the queue row, its vectors and failure record
            await conn.execute(
                js.settle(),
                key_arrays(work, [g[0] for g in gone]) + [[g[1] for g in gone], work.job.id, work.version.version],
            )
        if unchanged:  # the stored vector is already right
            await conn.execute(js.dequeue(), key_arrays(work, [g[0] for g in unchanged]) + [[g[1] for g in unchanged]])
        if plan.moved:  # every chunk has its vector already: renumber them, no request
            await settle_plans(conn, js, work, plan.moved)
        await _fail(conn, js, work, plan.failed)


async def settle_plans(conn, js: sql.JobSQL, work: Work, plans: list[RowPlan]) -> set[tuple]:
    """Settle rows whose queue row is still at its claimed seq (in the caller's transaction):
    their stored chunks listed in ``kept`` move to their new numbers, every other old chunk
    is deleted; returns the settled keys (the caller COPYs their new chunks next)."""
    if not plans:
        return set()
    kept = [(p.key, c, h) for p in plans for c, h in p.kept]
    params = (
        key_arrays(work, [p.key for p in plans])
        + [[p.seq for p in plans]]
        + key_arrays(work, [k[0] for k in kept])
        + [[k[1] for k in kept], [k[2] for k in kept], work.job.id, work.version.version]
    )
    n = len(work.job.key_columns)
    if not kept:  # nothing to keep (every row without a chunker): the plain settle
        params = key_arrays(work, [p.key for p in plans]) + [[p.seq for p in plans], work.job.id, work.version.version]
        return {tuple(r[:n]) for r in await (await conn.execute(js.settle(), params)).fetchall()}
    rows = await (await conn.execute(js.settle_chunks(), params)).fetchall()
    done = {tuple(r[:n]) for r in rows}
    got = rows[0][n] if rows else 0
    want = sum(len(p.kept) for p in plans if p.key in done)
    if got != want:  # the claim saw those chunks stored; nothing but this row's own store may change them
        raise DatabaseError(
            f"{want - got} stored chunks to keep were gone when storing; the request is stored again",
            job=work.job.name,
        )
    if want:
        await conn.execute(js.flip_kept(), key_arrays(work, sorted(done, key=repr)))
    return done


#: Estimated counts pack requests while a claim's estimate stays under this share of the
#: per-request token limit; above it the packing may bind, and the texts are counted exactly.
ESTIMATE_HEADROOM = 0.8


def _request_tokens(s) -> int:
    """Tokens one request may carry: ``max_request_tokens``, and never more than ``tpm``."""
    return min(s.max_request_tokens, s.tpm or s.max_request_tokens)


def count_tokens(
    counter: TokenCounter,
    texts: list[str],
    limit: int | None,
    request_tokens: int,
    *,
    exact: bool = False,
    max_inputs: int | None = None,
) -> list[int]:
    """Tokens per text, for the too-long check and for packing.

    Exact wherever a decision rests on one text (``count > limit`` decides as with exact
    counts), estimated elsewhere (:meth:`~vectorfill.provider.tokens.Cl100k.estimate`); exact for
    all when the estimate of one request (``max_inputs`` texts in a row, as :func:`pack`
    takes them; all the texts without it) comes near ``request_tokens`` and packing may
    split on it, and when ``exact`` (the job has a tokens-per-minute budget: a request
    packed over it could never be sent). The embed stage charges a rate budget exact
    counts in any case.
    """
    if exact:
        return counter.count(texts)
    tokens = counter.estimate(texts, limit if counter.exact else None)
    step = max_inputs or len(tokens) or 1
    if counter.exact and any(
        sum(tokens[i : i + step]) > ESTIMATE_HEADROOM * request_tokens for i in range(0, len(tokens), step)
    ):
        tokens = counter.count(texts)
    return tokens


def _show(key: tuple) -> str:
    return repr(key[0]) if len(key) == 1 else repr(key)


async def release_rows(work: Work, token: uuid.UUID, error: str) -> int:
    """Give back every row the run ``token`` still holds, noting why, so that the next run
    takes them at once instead of waiting for their leases to expire. Opens its own
    connection: the lanes' may be what failed. A plain function, not a task: the flow calls
    it while it stops (an error, Ctrl-C, a cancellation). Best effort: when it fails (the
    database is what stopped the run, or the job was dropped) the leases expire instead, and
    the error that stopped the run is the one reported, not this one."""
    js = sql.JobSQL(work.job, work.version)
    try:
        async with aconnect(database_url()) as conn:
            cur = await conn.execute(js.release(), (error[:2000], token))
            return cur.rowcount
    except DatabaseError as exc:
        logging.getLogger("vectorfill").warning("giving back the claims of %s failed: %s", work.label, exc)
        return 0


async def keep_claims(work: Work, token: uuid.UUID, url: str) -> None:
    """Renew the run's leases every third of ``lease_s`` until cancelled (a background helper
    of the flow, not a task: it runs for the whole run). A failed renewal is only logged: the
    leases then expire, which costs a possible second payment, never a wrong vector."""
    js = sql.JobSQL(work.job, work.version)
    params = {"lease_s": work.settings.lease_s, "token": token}
    while True:
        await asyncio.sleep(work.settings.lease_s / 3)
        try:
            async with aconnect(url) as conn:
                await conn.execute(js.renew(), params)
        except Exception as exc:
            logging.getLogger("vectorfill").warning("renewing the leases of %s failed: %s", work.label, exc)
