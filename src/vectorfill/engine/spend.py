"""A daily spend cap, checked before each request (``max_usd_per_day``).

:class:`SpendCap` charges the request's cost (its counted tokens at the job's price, or
the Batch API's price for a batch) to the day's ledger (``vectorfill.spend``, one row per
scope and UTC day: the job's, and the endpoint's when it has a shared cap) *before* the
request is sent; the charge is refused, and :class:`~vectorfill.errors.SpendCapReached`
raised, when it would pass a cap. After the answer the charge is corrected to the tokens
billed. The run then stops like after any error that stops a run: nothing more is sent,
its claims are given back, the rows stay queued. The day is the UTC date of ``clock()``
(seconds since the epoch, injectable), so a cap reached resets at the next midnight UTC.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from vectorfill.errors import ConfigError, SpendCapReached
from vectorfill.provider.budgets import endpoint_key
from vectorfill.provider.prices import batch_price_per_million, price_per_million
from vectorfill.provider.tokens import counter_for
from vectorfill.storage import sql
from vectorfill.storage.db import LaneConnection

from .work import Work

__all__ = ["Charge", "SpendCap", "day_of", "resets_at", "wall_clock"]


def wall_clock() -> float:
    """Seconds since the epoch: the clock a run's cap reads unless one is given."""
    return time.time()


def day_of(now: float) -> date:
    """The UTC day of ``now`` (seconds since the epoch)."""
    return datetime.fromtimestamp(now, UTC).date()


def resets_at(now: float) -> datetime:
    """When the day of ``now`` ends: the next midnight UTC."""
    return datetime.combine(day_of(now) + timedelta(days=1), datetime.min.time(), UTC)


@dataclass(frozen=True)
class Charge:
    """What one request was charged, to correct it once its tokens are billed."""

    day: date
    usd: float
    price: float


@dataclass
class SpendCap:
    """The caps of one job version's run (see the module docstring)::

    cap = SpendCap.for_work(work, url)      # None when the job has no cap
    charge = await cap.charge(tokens)       # raises SpendCapReached
    ... send ...
    await cap.billed(charge, billed_tokens)
    """

    job: str
    price: float
    """USD per million tokens (the online price, or the Batch API's for a batch run)."""
    scopes: tuple[tuple[str, str, float], ...]
    """(ledger scope, setting name, cap) for each cap that applies."""
    db: LaneConnection
    clock: Callable[[], float] = field(default=time.time)
    spent: float = field(default=0.0)
    """Charged by this run (corrected to what was billed)."""

    @classmethod
    def for_work(
        cls, work: Work, url: str, *, batch: bool = False, clock: Callable[[], float] | None = None
    ) -> SpendCap | None:
        """The caps of ``work``'s job, or None when it has none. A model with no known price
        cannot be held to a cap: its runs are refused (set ``prices``)."""
        s = work.settings
        scopes = []
        if s.max_usd_per_day is not None:
            scopes.append((f"job:{work.job.name}", "max_usd_per_day", s.max_usd_per_day))
        if s.endpoint_max_usd_per_day is not None:
            key = endpoint_key(work.version.base_url, work.version.model)
            scopes.append((f"endpoint:{key}", "endpoint_max_usd_per_day", s.endpoint_max_usd_per_day))
        if not scopes:
            return None
        model = work.version.model
        price = batch_price_per_million(model, s) if batch else price_per_million(model, s)
        if price is None:
            raise ConfigError(
                f"{scopes[0][1]} is set but the price of {model} is not known; "
                f"give it with --price {model}=USD_PER_1M_TOKENS",
                job=work.job.name,
            )
        return cls(work.job.name, price, tuple(scopes), LaneConnection(url), clock or wall_clock)

    def tokens(self, model: str, items) -> int:
        """The tokens ``items`` will be billed: counted exactly where the model's tokenizer is
        known (an estimate could let a charge under-run the cap), else the claim's counts."""
        counter = counter_for(model)
        if not counter.exact:
            return sum(i.tokens for i in items)
        guessed = [i.text for i in items if not i.counted]
        return sum(i.tokens for i in items if i.counted) + sum(counter.count(guessed))

    async def charge(self, tokens: int) -> Charge:
        """Charge ``tokens`` at the price to every scope, or raise
        :class:`~vectorfill.errors.SpendCapReached` (having charged none) when one would pass
        its cap."""
        now = self.clock()
        day = day_of(now)
        usd = tokens * self.price / 1_000_000
        done: list[str] = []
        for scope, setting, cap in self.scopes:
            row = await self.db.execute(
                sql.SPEND_CHARGE, {"scope": scope, "day": day, "usd": usd, "cap": cap}, doing="charging the spend cap"
            )
            if row is None:
                for charged in done:  # undo the scopes charged before this one
                    await self._adjust(charged, day, -usd)
                today = await self.db.execute(sql.SPEND_TODAY, {"scope": scope, "day": day})
                raise SpendCapReached(
                    job=self.job,
                    setting=setting,
                    cap=cap,
                    spent=float(today[0]) if today else 0.0,
                    cost=usd,
                    resets_at=resets_at(now),
                )
            done.append(scope)
        self.spent += usd
        return Charge(day, usd, self.price)

    async def billed(self, charge: Charge, tokens: int) -> None:
        """Correct ``charge`` to the cost of the ``tokens`` billed (after the answer)."""
        delta = tokens * charge.price / 1_000_000 - charge.usd
        if abs(delta) < 1e-12:
            return
        self.spent += delta
        for scope, _setting, _cap in self.scopes:
            await self._adjust(scope, charge.day, delta)

    async def _adjust(self, scope: str, day: date, usd: float) -> None:
        await self.db.execute(
            sql.SPEND_ADJUST, {"scope": scope, "day": day, "usd": usd}, doing="charging the spend cap"
        )

    async def aclose(self) -> None:
        await self.db.aclose()
