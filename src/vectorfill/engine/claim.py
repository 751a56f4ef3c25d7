"""Stage 1: lease queued rows, read their current text, and pack them into requests.

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

import psycopg

from vectorfill.errors import DatabaseError
from vectorfill.provider.chunking import TooManyChunks, chunk_fields, chunk_text, render_template
from vectorfill.provider.tokens import KNOWN_MAX_INPUT_TOKENS, TokenCounter, counter_for
from vectorfill.storage import sql
from vectorfill.storage.db import LaneConnection, aconnect, lane_error

from .work import Work, database_url

__all__ = ["Batch", "Claim", "Item", "RowPlan", "claim_rows", "keep_claims", "pack", "release_rows", "settle_plans"]


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
class Batch:
    """The inputs of one API request."""

    items: tuple[Item, ...]
    rows: tuple[RowPlan, ...] = ()
    """The plans of the rows with items here (none for rows packed by :func:`pack` alone)."""
    continues: bool = False
    """The last row's chunks go on in the next batch (a row too big for one request): the
    two are stored together, so a row's chunks are replaced in one transaction."""

    @property
    def tokens(self) -> int:
        return sum(i.tokens for i in self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class Claim:
    batches: tuple[Batch, ...]
    claimed: int = 0
    unchanged: int = 0
    deleted: int = 0
    failed: int = 0
    truncated: int = 0
    failures: tuple[str, ...] = field(default_factory=tuple)


def key_arrays(work: Work, keys: list[tuple]) -> list[list]:
    """Column-wise key lists, for ``unnest(%s::t1[], ...)`` parameters."""
    return [list(col) for col in zip(*keys, strict=True)] if keys else [[] for _ in work.job.key_columns]


def pack(items: list[Item], max_inputs: int, max_tokens: int, plans: dict[tuple, RowPlan] | None = None) -> list[Batch]:
    """Greedy packing in claim order, bounded by input count and by tokens per request.

    The items of one row (its chunks, consecutive in ``items``) go in one request whenever
    they fit in one: a row that does not fit in what is left of a request starts the next.
    A row larger than one request spans consecutive ones (from the start of one, so that
    it shares its store group with no other row), marked :attr:`Batch.continues`."""
    plans = plans or {}
    batches: list[Batch] = []
    current: list[Item] = []
    tokens = 0

    def flush(continues: bool) -> None:
        keys = dict.fromkeys(i.key for i in current)
        rows = tuple(plans[k] for k in keys if k in plans)
        batches.append(Batch(tuple(current), rows, continues))

    group_end = 0
    for n, item in enumerate(items):
        if n >= group_end and plans:  # the start of a row's items: keep them together if they fit
            group_end = n + 1
            while group_end < len(items) and items[group_end].key == item.key:
                group_end += 1
            size = group_end - n
            group_tokens = sum(i.tokens for i in items[n:group_end])
            if current and (len(current) + size > max_inputs or tokens + group_tokens > max_tokens):
                flush(False)
                current, tokens = [], 0
        if current and (len(current) >= max_inputs or tokens + item.tokens > max_tokens):
            flush(bool(plans) and current[-1].key == item.key)
            current, tokens = [], 0
        current.append(item)
        tokens += item.tokens
    if current:
        flush(False)
    return batches


async def _fail(conn, js: sql.JobSQL, work: Work, rows: list[tuple[tuple, int, str, int | None, str]]) -> None:
    """Record rows as failed. rows: (key, seq, reason, HTTP status or None, message)."""
    if not rows:
        return
    keys = [r[0] for r in rows]
    params = key_arrays(work, keys) + [
        [r[1] for r in rows],
        [r[2] for r in rows],
        [r[3] for r in rows],
        [r[4] for r in rows],
        work.job.id,
        work.version.version,
    ]
    await conn.execute(js.fail(), params)


async def claim_rows(work: Work, limit: int, token: uuid.UUID, db: LaneConnection) -> Claim:
    """Lease up to ``limit`` rows of ``work``'s queue for the run ``token`` and return them
    packed into batches."""
    js = sql.JobSQL(work.job, work.version)
    s = work.settings
    try:
        conn = await db.get()
        # the changes written since the last claim reach the queues first (a transaction of
        # its own, committed: what it queued is claimable below)
        await conn.execute(sql.absorb(work.job))
        async with conn.transaction():
            claimed = await (
                await conn.execute(js.claim(), {"limit": limit, "lease_s": s.lease_s, "token": token})
            ).fetchall()
            if not claimed:
                return Claim(batches=())
            n = len(work.job.key_columns)
            keys = [tuple(r[:n]) for r in claimed]
            seqs = [r[n] for r in claimed]
            attempts = {tuple(r[:n]): (r[n + 1], r[n + 2]) for r in claimed}
            chunking = work.version.chunking
            fields = chunk_fields(chunking)
            rows = await (await conn.execute(js.read_texts(fields), key_arrays(work, keys) + [seqs])).fetchall()
    except psycopg.Error as exc:
        raise await lane_error(db, exc, "claiming rows", job=work.job.name) from None

    gone: list[tuple] = []
    unchanged: list[tuple] = []
    failed: list[tuple[tuple, int, str, int | None, str]] = []
    todo: list[tuple[tuple, int, str, bytes]] = []
    counter = counter_for(work.version.model)
    max_tokens = s.max_input_tokens or KNOWN_MAX_INPUT_TOKENS.get(work.version.model)
    chunked: list[Item] = []
    plans: dict[tuple, RowPlan] = {}
    moved: list[RowPlan] = []  # rows whose chunks are all stored already, in another order
    for row in rows:
        key, seq, present, text, stored = tuple(row[:n]), row[n], row[n + 1], row[n + 2], row[n + 3]
        if not present:
            gone.append((key, seq))
            continue
        if text is None or not text.strip():
            what = "NULL" if text is None else "empty" if not text else "whitespace-only"
            failed.append(
                (
                    key,
                    seq,
                    "empty_text",
                    None,
                    f"row {_show(key)} of {work.job.source} has {what} text in "
                    f"{', '.join(work.job.text_columns)}; it gets no vector until the text is filled",
                )
            )
            continue
        tries, last_error = attempts[key]
        if tries > s.max_attempts:
            failed.append(
                (
                    key,
                    seq,
                    "max_attempts",
                    None,
                    f"row {_show(key)} failed {s.max_attempts} attempts (last error: {last_error or 'none recorded'}); "
                    f"fix the cause, then `vectorfill retry {work.job.name} --all`",
                )
            )
            continue
        stored_hashes = [bytes(h) for h in stored] if stored else []
        if not chunking.enabled:  # the whole text, one input (truncated as before if too long)
            if chunking.template is not None:
                text = render_template(chunking.template, text, dict(zip(fields, row[n + 4 :], strict=True)))
            digest = hashlib.sha256(text.encode("utf-8")).digest()
            if stored_hashes == [digest]:
                unchanged.append((key, seq))
                continue
            todo.append((key, seq, text, digest))
            plans[key] = RowPlan(key, seq, 1)
            continue
        try:
            chunks = chunk_text(
                text, chunking, counter, limit=max_tokens, fields=dict(zip(fields, row[n + 4 :], strict=True))
            )
        except TooManyChunks as exc:
            failed.append((key, seq, "too_many_chunks", None, f"row {_show(key)} of {work.job.source} {exc}"))
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
                    (
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

    if gone or unchanged or failed or moved:
        try:
            async with conn.transaction():
                if gone:  # source row deleted: drop the queue row, its vectors and failure record
                    await conn.execute(
                        js.settle(),
                        key_arrays(work, [g[0] for g in gone])
                        + [[g[1] for g in gone], work.job.id, work.version.version],
                    )
                if unchanged:  # the stored vector is already right
                    await conn.execute(
                        js.dequeue(), key_arrays(work, [g[0] for g in unchanged]) + [[g[1] for g in unchanged]]
                    )
                if moved:  # every chunk has its vector already: renumber them, no request
                    await settle_plans(conn, js, work, moved)
                await _fail(conn, js, work, failed)
        except psycopg.Error as exc:  # the claims stay leased; their leases expire or the run gives them back
            raise await lane_error(db, exc, "settling claimed rows", job=work.job.name) from None

    return Claim(
        batches=tuple(pack(items, s.max_inputs, _request_tokens(s), plans)),
        claimed=len(claimed),
        unchanged=len(unchanged) + len(moved),
        deleted=len(gone),
        failed=len(failed),
        truncated=truncated,
        failures=tuple(f[4] for f in failed[:20]),
    )


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
            f"{want - got} stored chunks to keep were gone when storing; the batch is stored again",
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
    except (psycopg.Error, DatabaseError) as exc:
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
