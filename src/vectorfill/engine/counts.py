"""One typed record of what a run did: :class:`Counts`, and the run's :class:`RunSummary`.

A batch's result, the live tally of a run, the Batch API's collected and submitted figures,
a sync window and the fan-out's total are all :class:`Counts`, added with ``+``; the
summary is the run's counts with what was found after it (rows still pending, failed).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["Counts", "RunSummary"]


def _add_cost(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


@dataclass(frozen=True)
class Counts:
    """What a run (or a part of one: a batch, a cycle, a Batch API collect) did.

    Every figure adds up; a cost of None means unknown (a model with no known price), and
    stays unknown in any sum it is part of."""

    embedded: int = 0
    """Vectors written."""
    unchanged: int = 0
    """Queued rows whose text was unchanged: nothing sent."""
    deleted: int = 0
    failed: int = 0
    truncated: int = 0
    """Inputs cut to the model's limit (job setting on_too_long=truncate)."""
    stale: int = 0
    """Rows edited while in flight: their old vector was discarded, they stay queued."""
    requests: int = 0
    sent: int = 0
    """Inputs sent to the provider (each distinct input of a claim once)."""
    reused: int = 0
    """Inputs not sent because their vector existed (stored in this version or the active
    one, or sent for another row of the same claim): copied, not paid for."""
    derived: int = 0
    """Of those, inputs whose vector was derived from the active version's (shortened)."""
    derived_from: int | None = None
    """The version they were derived from (a sum keeps the first one known)."""
    tokens: int = 0
    """Tokens billed, as the provider reported them (``usage``), else as counted."""
    tokens_estimated: int = 0
    """Of those, tokens counted here because the endpoint's answers had no ``usage`` (an
    estimate where the model's tokenizer is not known)."""
    cost_usd: float | None = 0.0
    """Those tokens at the model's price (:mod:`vectorfill.provider.prices`); None when unknown."""
    # -- the Batch API (submit.py, collect.py); included in the figures above
    batches_submitted: int = 0
    batch_rows_submitted: int = 0
    batches_collected: int = 0
    batches_open: int = 0
    """Batches still running at the provider after the run (collected by a later run)."""
    batch_rows: int = 0
    """Vectors written from batch results (part of ``embedded``)."""
    batch_tokens: int = 0
    batch_cost_usd: float | None = 0.0
    """Those tokens at the batch price (part of ``cost_usd``)."""
    batch_retried: int = 0
    """Rows a batch did not embed (expired, failed lines, refused batch), queued again."""
    maybe_truncated: int = 0
    """Inputs sent whole that may be over the model's limit, which is not known here (no
    tokenizer, no limit learnt or set): a server that cuts long inputs silently (Infinity,
    TEI with auto-truncate) may have embedded only their start."""

    def __add__(self, other: Counts) -> Counts:
        if not isinstance(other, Counts):
            return NotImplemented
        a, b = self.__dict__, other.__dict__
        added: dict[str, Any] = {
            n: _add_cost(a[n], b[n])
            if n in _COSTS
            else (a[n] if a[n] is not None else b[n])
            if n in _FIRST
            else a[n] + b[n]
            for n in _NAMES
        }
        return Counts(**added)

    def billed(self, tokens: int, price: float | None) -> Counts:
        """These counts with ``tokens`` billed at ``price`` (USD per million; None: unknown)."""
        cost = None if price is None else tokens * price / 1_000_000
        return dataclasses.replace(self, tokens=self.tokens + tokens, cost_usd=_add_cost(self.cost_usd, cost))

    def as_dict(self) -> dict:
        return asdict(self)


_FIELDS = fields(Counts)
_NAMES = tuple(f.name for f in _FIELDS)
_COSTS = frozenset({"cost_usd", "batch_cost_usd"})
_FIRST = frozenset({"derived_from"})


@dataclass(frozen=True)
class RunSummary:
    """A run's figures (its :class:`Counts`, flattened: the names are the artifact's) and
    what the job looked like after it."""

    job: str
    embedded: int
    """Vectors written."""
    unchanged: int
    """Queued rows whose text was unchanged: nothing sent."""
    deleted: int
    failed: int
    truncated: int
    """Inputs cut to the model's limit (job setting on_too_long=truncate)."""
    stale: int
    """Rows edited while in flight: their old vector was discarded, they stay queued."""
    requests: int
    tokens: int
    """Tokens billed, as the provider reported them (``usage``), else as counted."""
    tokens_estimated: int
    """Of those, tokens counted here because the endpoint's answers had no ``usage``."""
    cost_usd: float | None
    """Those tokens at the model's price; None when unknown."""
    duration_s: float
    pending: int
    """Rows still queued after the run (all versions)."""
    failed_total: int
    """Rows in the failures table after the run."""
    switched_to: int | None = None
    """The version this run made active (a new model's, now complete), if any."""
    derived_from: int | None = None
    """The version the ``derived`` vectors were derived from, if any."""
    # -- the Batch API; included in the figures above (see Counts)
    batches_submitted: int = 0
    batch_rows_submitted: int = 0
    batches_collected: int = 0
    batches_open: int = 0
    batch_rows: int = 0
    batch_tokens: int = 0
    batch_cost_usd: float | None = 0.0
    batch_retried: int = 0
    # -- reuse (vectorfill.engine.reuse); see Counts
    sent: int = 0
    """Inputs sent to the provider."""
    reused: int = 0
    """Inputs copied from a vector that existed, not sent."""
    derived: int = 0
    """Of those, inputs whose vector was derived from the active version's (shortened)."""
    maybe_truncated: int = 0
    """Inputs that the server may have cut silently (see :attr:`Counts.maybe_truncated`)."""

    @classmethod
    def of(
        cls,
        job: str,
        counts: Counts,
        *,
        duration_s: float,
        pending: int,
        failed_total: int,
        switched_to: int | None = None,
    ) -> RunSummary:
        return cls(
            job=job,
            duration_s=duration_s,
            pending=pending,
            failed_total=failed_total,
            switched_to=switched_to,
            **counts.as_dict(),
        )

    @property
    def counts(self) -> Counts:
        """The run's figures as a :class:`Counts`."""
        return Counts(**{n: getattr(self, n) for n in _NAMES})

    @property
    def rows_per_s(self) -> float:
        return self.embedded / self.duration_s if self.duration_s > 0 else 0.0

    def as_dict(self) -> dict:
        d = {**asdict(self), "rows_per_s": round(self.rows_per_s, 1)}
        for key in ("cost_usd", "batch_cost_usd"):
            if d[key] is not None:
                d[key] = round(d[key], 6)
        return d

    def log_line(self) -> str:
        """The run's summary as one line, for the run's logs (counts only: no URL, no text)."""
        cost = "unknown cost" if self.cost_usd is None else f"${self.cost_usd:,.4f}"
        switched = f"; switched readers to version {self.switched_to}" if self.switched_to is not None else ""
        return (
            f"{self.job}: {self.embedded:,} rows embedded in {self.duration_s:,.1f} s ({self.rows_per_s:,.0f} rows/s), "
            f"{self.tokens:,} tokens in {self.requests:,} requests ({cost}); {self.reuse_line()}{self.unchanged:,} unchanged, "
            f"{self.deleted:,} deleted, {self.failed:,} failed, {self.truncated:,} truncated, {self.stale:,} stale; "
            f"{self.pending:,} still pending, {self.failed_total:,} failed in all{switched}"
        )

    def reuse_line(self) -> str:
        """What was not paid for ("1,000 inputs reused, 12 sent; derived from version 1: 0
        requests, $0; "), or nothing when every input was sent."""
        if not self.reused:
            return ""
        sent = f"{self.reused:,} inputs reused, {self.sent:,} sent; "
        if self.derived and self.derived_from is not None:
            cost = (
                "$0" if self.requests == 0 else ("unknown cost" if self.cost_usd is None else f"${self.cost_usd:,.4f}")
            )
            sent += f"derived from version {self.derived_from}: {self.requests:,} requests, {cost}; "
        return sent

    def table(self) -> list[dict]:
        """The figures as artifact rows (``vectorfill runs`` reads them back by name)."""
        return [{"figure": k, "value": v} for k, v in self.as_dict().items()]
