"""Cost before spending: the tokens a backfill or a re-embed would send, and their price.

The rows are read, never claimed (nothing changes and no request is made), and judged by
the rules a run applies (:mod:`vectorfill.engine.claim`): rows with no text are skipped, a
row whose text still hashes to its stored vector's input is not sent again, an input
whose vector exists (in the version, or in the active version it may reuse:
:func:`vectorfill.jobs.reuse.sources`) or that another row sends is not counted (it is
copied), and an input over the model's limit is counted at the limit
(``on_too_long=truncate``) or not at all (``fail``). Tokens are counted with the run's counter (:func:`vectorfill.provider.tokens.counter_for`):
exact for OpenAI's models, a byte-based over-estimate for tokenizers not known here.
A document job's pending documents are read and parsed, as the claim will read them.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass

import psycopg

from vectorfill.documents import Loader, read_document
from vectorfill.errors import DocumentError, JobError
from vectorfill.jobs.registry import absorb, load_job
from vectorfill.jobs.reuse import sources
from vectorfill.provider.chunking import TooManyChunks, chunk_fields, chunk_text, render_template
from vectorfill.provider.prices import batch_price_per_million, cost_usd, price_per_million
from vectorfill.provider.tokens import counter_for, max_input_tokens
from vectorfill.records import Job, Version
from vectorfill.storage import sql

__all__ = ["Estimate", "estimate"]

_CHUNK = 2000


@dataclass(frozen=True)
class Estimate:
    job: str
    model: str
    version: int | None
    """The version whose queue was counted; None for a re-embed not started yet."""
    rows: int
    """Rows that would be sent (all or some of their chunks)."""
    unchanged: int
    empty: int
    too_long: int
    """Rows over the model's input limit (truncated, or failed under on_too_long=fail)."""
    tokens: int
    exact: bool
    """True when the model's tokenizer is known here (else tokens are an over-estimate)."""
    price_per_million: float | None
    cost_usd: float | None
    chunks: int = 0
    """Inputs that would be sent: one per row without a chunker; for a chunked job the
    chunks whose input the row has no vector for (unchanged chunks keep theirs)."""
    failing: int = 0
    """Rows that would fail before any request (more chunks than ``max_chunks``; a document
    job's documents that cannot be used)."""
    batch_price_per_million: float | None = None
    """Through the Batch API (half the online price for OpenAI's models); None: unknown."""
    batch_cost_usd: float | None = None
    reused: int = 0
    """Inputs not counted above: their vector exists already, or another row sends the
    same input (the run copies them)."""
    derived: int = 0
    """Of those, inputs whose vector would be derived from the active version's (shortened)."""
    days_under_cap: int | None = None
    """UTC days the sending takes under the job's daily spend cap (the lower of
    ``max_usd_per_day`` and ``endpoint_max_usd_per_day``; the batch price when the job
    backfills through the Batch API); None without a cap or a price."""

    def as_dict(self) -> dict:
        return asdict(self)


def estimate(
    conn: psycopg.Connection,
    name: str,
    *,
    model: str | None = None,
    price: float | None = None,
    batch_price: float | None = None,
) -> list[Estimate]:
    """What the next backfill of ``name`` would send, per version it would fill; or, with
    ``model``, what re-embedding every row with that model would send."""
    job = load_job(conn, name)
    if absorb(conn, job):  # the queues as the next claim will see them
        conn.commit()
    if model is None:
        versions = [v for v in job.versions if v.state in ("active", "filling", "paused")]
        if not versions:
            raise JobError("has no version to fill", job=name)
        return [_count(conn, job, v, v.model, price, batch_price, pending=True) for v in versions]
    target = next((v for v in job.live_versions if v.model == model), None)
    if target is not None and target.state != "active":  # that re-embed has started: its queue
        return [_count(conn, job, target, model, price, batch_price, pending=True)]
    basis = job.active or job.versions[-1]
    return [_count(conn, job, basis, model, price, batch_price, pending=False)]


def _count(
    conn,
    job: Job,
    version: Version,
    model: str,
    price: float | None,
    batch_price: float | None,
    *,
    pending: bool,
    chunking=None,
) -> Estimate:
    js = sql.JobSQL(job, version)
    s = job.settings
    counter = counter_for(model)
    limit = s.max_input_tokens or max_input_tokens(model)
    chunking = chunking or version.chunking
    fields = chunk_fields(chunking)
    whole = not chunking.enabled
    rows = unchanged = empty = too_long = tokens = chunks = failing = 0
    reuse = _Reuse(conn, job, version if pending else None)
    docs = s.documents  # a document job's rows are read and parsed as the claim reads them
    loader = Loader(max_bytes=docs.max_document_bytes, timeout_s=s.timeout_s) if docs is not None else None
    with conn.cursor(name="vectorfill_estimate") as cur:  # server-side: any table size
        cur.itersize = _CHUNK
        cur.execute(js.pending_texts(fields) if pending else js.all_texts(fields))
        while page := cur.fetchmany(_CHUNK):
            whole_texts: list[tuple[str, bytes]] = []
            pieces_of: list[tuple[list, list[bytes]]] = []
            for text, stored, *values in page:
                stored_hashes = [bytes(h) for h in stored] if stored else []
                if loader is not None and text is not None and text.strip():  # a document job: its text
                    try:
                        text = read_document(loader, text).text
                    except DocumentError:
                        failing += 1  # as the claim will fail it
                        continue
                if text is None or not text.strip():
                    empty += 1
                elif whole:
                    if chunking.template is not None:
                        text = render_template(chunking.template, text, dict(zip(fields, values, strict=True)))
                    digest = hashlib.sha256(text.encode("utf-8")).digest()
                    if stored_hashes == [digest]:
                        unchanged += 1
                    else:
                        whole_texts.append((text, digest))
                else:  # as the claim: chunk, and count only the chunks with no stored vector
                    try:
                        pieces = chunk_text(
                            text, chunking, counter, limit=limit, fields=dict(zip(fields, values, strict=True))
                        )
                    except TooManyChunks:
                        failing += 1
                        continue
                    hashes = [hashlib.sha256(c.text.encode("utf-8", "surrogatepass")).digest() for c in pieces]
                    if hashes == stored_hashes:
                        unchanged += 1
                        continue
                    have = set(stored_hashes)
                    pieces_of.append(
                        ([(c.tokens, h) for c, h in zip(pieces, hashes, strict=True) if h not in have], [])
                    )
                    rows += 1
            # inputs whose vector exists, or that another row sends, are copied: not counted
            sent = reuse.new([h for _, h in whole_texts] + [h for p, _ in pieces_of for _, h in p])
            for piece, _ in pieces_of:
                send = [n for n, h in piece if _take(sent, h)]
                chunks += len(send)
                tokens += sum(send)
            texts = [t for t, h in whole_texts if _take(sent, h)]
            for n in counter.count(texts):
                if limit and counter.exact and n > limit:  # as the run: only cut when exact
                    too_long += 1
                    if s.on_too_long == "fail":
                        continue
                    n = limit
                rows += 1
                chunks += 1
                tokens += n
    unit = price_per_million(model, s, price)
    return Estimate(
        job=job.name,
        model=model,
        version=version.version if pending else None,
        rows=rows,
        unchanged=unchanged,
        empty=empty,
        too_long=too_long,
        tokens=tokens,
        exact=counter.exact,
        price_per_million=unit,
        cost_usd=cost_usd(tokens, unit),
        chunks=chunks,
        failing=failing,
        batch_price_per_million=(batch_unit := batch_price_per_million(model, s, batch_price)),
        batch_cost_usd=cost_usd(tokens, batch_unit),
        reused=reuse.reused,
        derived=reuse.derived,
        days_under_cap=days_under_cap(cost_usd(tokens, batch_unit if s.batch else unit), s),
    )


def days_under_cap(cost: float | None, settings) -> int | None:
    """UTC days it takes to spend ``cost`` under the settings' daily cap (a day's last
    request may not fit, so this is a lower bound by at most one day)."""
    caps = [c for c in (settings.max_usd_per_day, settings.endpoint_max_usd_per_day) if c is not None]
    if not caps or cost is None:
        return None
    return max(1, math.ceil(cost / min(caps))) if cost > 0 else 0


def _take(sent: set[bytes], h: bytes) -> bool:
    """Whether ``h`` is sent, by this input: the first to ask (it is taken off ``sent``)."""
    if h in sent:
        sent.discard(h)
        return True
    return False


class _Reuse:
    """The inputs of an estimate that a run would copy rather than send: those already
    seen in the scan, and those with a vector in a :func:`~vectorfill.jobs.reuse.sources`
    version (looked up a page at a time)."""

    def __init__(self, conn, job: Job, version: Version | None) -> None:
        self.conn = conn
        self.job = job
        self.sources = sources(job, version) if version is not None else ()
        self.seen: set[bytes] = set()
        self.reused = self.derived = 0

    def new(self, hashes: list[bytes]) -> set[bytes]:
        """Of ``hashes`` (with repeats), the distinct ones a run would send; counts the rest."""
        fresh = [h for h in dict.fromkeys(hashes) if h not in self.seen]
        self.seen.update(fresh)
        found: set[bytes] = set()
        derived: set[bytes] = set()
        for source in self.sources:
            want = [h for h in fresh if h not in found]
            if not want:
                break
            statement = sql.JobSQL(self.job, source.version).known_hashes()
            rows = self.conn.execute(statement, {"hashes": sql.digests(want)}).fetchall()
            got = {bytes(r[0]) for r in rows}
            if source.shorten_to is not None:
                derived |= got
            found |= got
        sent = set(fresh) - found
        self.reused += len(hashes) - len(sent)
        self.derived += sum(h in derived for h in hashes)
        return sent
