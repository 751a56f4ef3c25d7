"""Client-side rate limiting: stay inside an endpoint's per-minute budgets.

Providers such as OpenAI enforce requests per minute (RPM) and tokens per minute (TPM) as
token buckets: the capacity is the per-minute limit, it refills continuously at limit/60
per second, and a request that does not fit gets a 429. :class:`RateLimiter` keeps the
same two buckets on the client, so that requests wait here instead of being refused:

* before a request, :meth:`RateLimiter.acquire` waits, first come first served, until one
  request and the request's tokens (counted with :mod:`vectorfill.provider.tokens`) are available,
  and charges them;
* after the response, :meth:`Permit.settle` corrects the charge with the tokens the
  provider billed (``usage.prompt_tokens``) and lowers the buckets to the provider's own
  view (``x-ratelimit-remaining-*``, else ``x-ratelimit-reset-*``) when that is lower,
  because another process may be spending the same budget. A lower
  ``x-ratelimit-limit-*`` than the configured one (or a limit where none is configured)
  becomes the budget;
* after a 429 anyway, :meth:`RateLimiter.on_429` pauses *every* acquirer until the
  provider's ``Retry-After``.

:class:`Concurrency` decides how many requests are in flight, additive increase and
multiplicative decrease (AIMD): one more slot per round of requests that found budget to
spare while other requests were waiting for a slot (latency, not budget, was the
bottleneck), half the slots after a 429.

:class:`Throttle` puts the two together around one request::

    throttle = Throttle(RateLimiter(rpm=3_000, tpm=1_000_000, job="docs"), Concurrency(4, max_limit=16))
    result = await throttle.send(request.tokens, lambda: client.embed(texts))

which is, spelled out::

    async with slots.slot() as slot:
        permit = await limiter.acquire(tokens)
        try:
            result = await client.embed(texts)
        except TransientProviderError as exc:
            permit.settle()                    # keep the charge: providers count failures
            if exc.status == 429:
                limiter.on_429(exc.retry_after)
                slot.throttled(waited=permit.waited)
            raise                              # (Throttle.send retries a 429 itself)
        permit.settle(result.prompt_tokens, result.headers)
        slot.succeeded(waited=permit.waited)

Time is injectable (``clock``, ``sleep``) so that tests move a fake clock instead of
sleeping.

One limiter belongs to one run and one endpoint (it is not a module-level singleton):
every lane and every job of the run that talks to that endpoint shares it.

Across processes and machines, the budget is shared through a :class:`SharedBudget`
(:class:`vectorfill.storage.budgets.PostgresBudget`: a row of ``vectorfill.budgets``). With one,
the limiter's buckets do not refill with time; they hold chunks **leased** from the shared
buckets, which do::

    limiter = RateLimiter(3_000, 1_000_000, job="docs", shared=PostgresBudget(url, endpoint_key(base_url, model)))
    ...
    await limiter.aclose()   # gives back what was leased and not spent

* a lease asks for a chunk (``chunk``, 1/20 of a minute's budget: 3 s of refill) and
  gets it, or what the shared bucket holds; an acquirer that still lacks budget sleeps
  until the shared bucket should have refilled enough (at most a second) and tries again;
* when less than half a chunk is left after a charge, the next one is leased in the
  background: a request waits for the database only when budget is short anyway;
* corrections (``usage``) and headers adjust the leased budget as they would the local
  one; a 429 also pauses the other processes (from their next lease) and empties the
  shared buckets.

Processes that share an endpoint can each be configured with the whole budget: together
they stay within it (``bench/bench_ratelimit.py --runs 2``). Without a shared budget,
other processes show up only in the provider's headers, each process refills at the full
rate, and together they overspend.
"""

from __future__ import annotations

import asyncio
import collections
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from vectorfill.errors import ConfigError, TransientProviderError
from vectorfill.records import Grant  # a record of the budgets table; named here too

__all__ = [
    "Concurrency",
    "Grant",
    "LimiterStats",
    "Permit",
    "RateLimiter",
    "SharedBudget",
    "Slot",
    "Throttle",
    "parse_duration",
]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[object]]
R = TypeVar("R")

#: Waits shorter than this are rounding noise, not waits.
_EPSILON_S = 1e-9
#: Issued charges remembered for header syncing, at most (permits never settled age out).
_HISTORY = 4096
#: A shared budget is leased in chunks of this share of a minute's budget (3 s of refill).
CHUNK = 1 / 20
#: Waiting for a drained shared budget to refill, poll at most this often, at least this rarely.
_POLL_MIN_S, _POLL_MAX_S = 0.02, 1.0
#: Closing, wait this long at most for a lease or pause still on its way.
_CLOSE_WAIT_S = 10.0

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|h|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(text: str) -> float:
    """Seconds in a duration as rate-limit headers write it: ``6m0s``, ``1s``, ``20ms``,
    ``1h2m3.5s``, or a bare number of seconds (``0.5``). Raises ValueError otherwise."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"not a duration: {text!r}")
        return seconds
    total, pos = 0.0, 0
    for match in _DURATION_PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(value):
        raise ValueError(f"not a duration: {text!r}")
    return total


class _Bucket:
    """A continuous token bucket: ``capacity`` per minute, refilling at capacity/60 per second.

    ``level`` may go negative (a correction after the fact); it then takes longer to refill.
    A ``leased`` bucket does not refill with time: it starts empty and holds what was leased
    from a :class:`SharedBudget`, which is where the time-based refill happens.
    """

    def __init__(self, per_minute: float, now: float, *, leased: bool = False) -> None:
        self.capacity = float(per_minute)
        self.rate = self.capacity / 60.0
        self.level = 0.0 if leased else self.capacity
        self.updated = now
        self.leased = leased

    def refill(self, now: float) -> None:
        if now > self.updated and not self.leased:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait_for(self, amount: float) -> float:
        missing = amount - self.level
        return 0.0 if missing <= _EPSILON_S * self.rate else missing / self.rate

    def set_limit(self, per_minute: float) -> None:
        self.capacity = float(per_minute)
        self.rate = self.capacity / 60.0
        self.level = min(self.level, self.capacity)


@dataclass(frozen=True)
class LimiterStats:
    """What a :class:`RateLimiter` did so far."""

    acquired: int
    """Permits handed out."""
    waited_s: float
    """Seconds acquirers spent waiting for budget or a pause, summed over acquirers."""
    throttled: int
    """429s reported with :meth:`RateLimiter.on_429`."""
    synced: int
    """Times the provider's headers lowered a bucket."""
    tokens_corrected: int
    """Billed minus estimated tokens, summed over settled permits."""
    leases: int = 0
    """Round trips to the :class:`SharedBudget` to lease budget (0 without one)."""
    lease_waits: int = 0
    """Permits whose acquirer waited for a lease at least once: the budget it had in hand
    did not cover it (when the shared budget is drained, most acquirers do)."""
    lease_s: float = 0.0
    """Seconds spent in lease round trips, summed (in the background or not)."""
    lease_wait_s: float = 0.0
    """Seconds acquirers spent waiting for lease round trips (not for the refill), summed."""


class SharedBudget(Protocol):
    """An endpoint's budget shared with other processes (:class:`vectorfill.storage.budgets.PostgresBudget`).

    It is a pair of token buckets kept by the store, refilled with time; a
    :class:`RateLimiter` takes chunks of them (leases) and spends those locally.
    """

    async def lease(self, rpm: float | None, tpm: float | None, requests: float, tokens: float) -> Grant:
        """Take up to ``requests`` and ``tokens``, asserting the caller's limits ``rpm``/``tpm``."""
        ...

    async def give_back(self, requests: float, tokens: float) -> None:
        """Return unspent budget (a negative amount is a debt)."""
        ...

    async def pause(self, seconds: float) -> None:
        """Record a 429's pause for every process sharing the budget."""
        ...

    async def aclose(self) -> None: ...


class Permit:
    """One request's admission: ``tokens`` were charged after waiting ``waited`` seconds.

    Call :meth:`settle` once, when the request is over, whatever its outcome.
    """

    __slots__ = ("_limiter", "_seq", "_settled", "tokens", "waited")

    def __init__(self, limiter: RateLimiter, seq: int, tokens: int, waited: float) -> None:
        self.tokens = tokens
        self.waited = waited
        self._limiter = limiter
        self._seq = seq
        self._settled = False

    def settle(self, actual_tokens: int | None = None, headers: Mapping[str, str] | None = None) -> None:
        """Correct the charge to ``actual_tokens`` (the response's ``usage``; None keeps the
        estimate, as for a failed request) and sync to the provider's ``headers``."""
        if self._settled:
            return
        self._settled = True
        self._limiter._settle(self, actual_tokens, headers)

    def __repr__(self) -> str:
        return f"Permit(tokens={self.tokens}, waited={self.waited:.3f})"


class RateLimiter:
    """Requests-per-minute and tokens-per-minute budgets for one endpoint.

    ``rpm``/``tpm`` None (or 0) means no budget of that kind, unless the provider's
    ``x-ratelimit-limit-*`` headers announce one and ``learn_limits`` is true.
    ``max_pause_s`` caps one 429 pause (longer waits are left to the task's retries).

    With a ``shared`` budget, the configured kinds are not refilled here: they are leased
    from ``shared`` in chunks of ``chunk`` of a minute's budget (the next one in the
    background when less than half a chunk is left), and what was leased and not spent is
    given back by :meth:`aclose`.
    """

    def __init__(
        self,
        rpm: int | None,
        tpm: int | None,
        *,
        job: str | None = None,
        learn_limits: bool = True,
        max_pause_s: float = 120.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        shared: SharedBudget | None = None,
        chunk: float = CHUNK,
    ) -> None:
        if not 0 < chunk <= 1:
            raise ConfigError(f"a lease chunk is a share of a minute's budget, 0 < chunk <= 1, not {chunk}", job=job)
        for name, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be a positive number per minute, not {value}", job=job)
        self.job = job
        self.learn_limits = learn_limits
        self.max_pause_s = max_pause_s
        self._clock = clock
        self._sleep = sleep
        now = clock()
        leased = shared is not None
        self._buckets: dict[str, _Bucket | None] = {
            "requests": _Bucket(rpm, now, leased=leased) if rpm else None,
            "tokens": _Bucket(tpm, now, leased=leased) if tpm else None,
        }
        self._shared = shared if any(self._buckets.values()) else None
        self._chunk = chunk
        self._leasing: asyncio.Task[Grant] | None = None  # one lease in flight at most
        self._background: set[asyncio.Task[None]] = set()  # 429 pauses being recorded
        self._leases = 0
        self._lease_waits = 0
        self._lease_s = 0.0
        self._lease_wait_s = 0.0
        self._paused_until = now
        self._lock = asyncio.Lock()  # FIFO: the head acquirer waits, the others queue behind it
        self._seq = 0
        self._issued: collections.deque[tuple[int, int]] = collections.deque(maxlen=_HISTORY)
        self._open: set[int] = set()
        self._acquired = 0
        self._waited = 0.0
        self._throttled = 0
        self._synced = 0
        self._corrected = 0

    # ------------------------------------------------------------------ budgets

    @property
    def rpm(self) -> int | None:
        """The requests-per-minute budget in force (configured or learned), or None."""
        b = self._buckets["requests"]
        return int(b.capacity) if b else None

    @property
    def tpm(self) -> int | None:
        """The tokens-per-minute budget in force (configured or learned), or None."""
        b = self._buckets["tokens"]
        return int(b.capacity) if b else None

    def available(self) -> tuple[float | None, float | None]:
        """(requests, tokens) the buckets hold now; None for a kind without a budget."""
        now = self._clock()
        out = []
        for kind in ("requests", "tokens"):
            b = self._buckets[kind]
            if b is not None:
                b.refill(now)
            out.append(b.level if b is not None else None)
        return out[0], out[1]

    def stats(self) -> LimiterStats:
        return LimiterStats(
            self._acquired,
            self._waited,
            self._throttled,
            self._synced,
            self._corrected,
            self._leases,
            self._lease_waits,
            self._lease_s,
            self._lease_wait_s,
        )

    # ------------------------------------------------------------------ acquiring

    async def acquire(self, tokens: int) -> Permit:
        """Wait until one request and ``tokens`` fit both budgets, then charge them.

        Raises :class:`~vectorfill.errors.ConfigError` for a request larger than the whole
        tokens-per-minute budget: it could never be sent.
        """
        tokens = max(0, int(tokens))
        self._check_fits(tokens)
        start = self._clock()
        leased = False
        async with self._lock:
            while True:
                now = self._clock()
                wait = self._paused_until - now
                short: dict[str, float] = {}
                for kind, amount in (("requests", 1), ("tokens", tokens)):
                    bucket = self._buckets[kind]
                    if bucket is None:
                        continue
                    if bucket.leased:
                        if bucket.level < amount - _EPSILON_S:
                            short[kind] = amount
                    else:
                        bucket.refill(now)
                        wait = max(wait, bucket.wait_for(amount))
                if wait > _EPSILON_S:
                    await self._sleep(wait)
                elif short:
                    leased = True
                    await self._top_up(short)
                else:
                    break
                self._check_fits(tokens)  # a learned limit may have shrunk meanwhile
            for kind, amount in (("requests", 1), ("tokens", tokens)):
                bucket = self._buckets[kind]
                if bucket is not None:
                    bucket.level -= amount
            self._seq += 1
            seq = self._seq
            self._issued.append((seq, tokens))
            self._open.add(seq)
        waited = max(0.0, now - start)
        self._acquired += 1
        self._waited += waited
        self._lease_waits += leased
        self._prefetch()
        return Permit(self, seq, tokens, waited)

    def _check_fits(self, tokens: int) -> None:
        bucket = self._buckets["tokens"]
        if bucket is not None and tokens > bucket.capacity:
            raise ConfigError(
                f"a request of {tokens:,} tokens can never fit the endpoint's budget of "
                f"{int(bucket.capacity):,} tokens per minute; lower the job's max_request_tokens "
                f"setting to at most {int(bucket.capacity):,} (or its tpm, if the account allows more)",
                job=self.job,
            )

    def on_429(self, retry_after: float | None, *, default_s: float = 1.0) -> float:
        """The provider refused a request: pause every acquirer for ``retry_after`` seconds
        (``default_s`` when the 429 said nothing, at most ``max_pause_s``). Returns the pause."""
        pause = min(self.max_pause_s, retry_after if retry_after is not None else default_s)
        pause = max(0.0, pause)
        self._paused_until = max(self._paused_until, self._clock() + pause)
        self._throttled += 1
        if self._shared is not None and pause > 0:
            # the other processes pause from their next lease on (best effort: never raises)
            task = asyncio.get_running_loop().create_task(self._shared.pause(pause))
            self._background.add(task)
            task.add_done_callback(self._forget)
        return pause

    # ------------------------------------------------------------------ the shared budget

    def _chunk_of(self, bucket: _Bucket, kind: str) -> float:
        chunk = bucket.capacity * self._chunk
        return max(1.0, math.floor(chunk)) if kind == "requests" else chunk

    def _leased(self) -> Iterator[tuple[str, _Bucket]]:
        for kind in ("requests", "tokens"):
            bucket = self._buckets[kind]
            if bucket is not None and bucket.leased:
                yield kind, bucket

    def _start_lease(self, want: dict[str, float]) -> asyncio.Task[Grant]:
        self._leasing = asyncio.get_running_loop().create_task(self._lease(want))
        self._leasing.add_done_callback(self._forget)
        return self._leasing

    async def _lease(self, want: dict[str, float]) -> Grant:
        """One round trip to the shared budget; what it grants goes into the buckets."""
        assert self._shared is not None
        limits = {kind: (b.capacity if b is not None and b.leased else None) for kind, b in self._buckets.items()}
        started = time.perf_counter()
        try:
            grant = await self._shared.lease(
                limits["requests"], limits["tokens"], want.get("requests", 0.0), want.get("tokens", 0.0)
            )
        finally:
            self._leases += 1
            self._lease_s += time.perf_counter() - started
        for kind, bucket in self._leased():
            bucket.level += grant.requests if kind == "requests" else grant.tokens
        if grant.paused_s > 0:
            self._paused_until = max(self._paused_until, self._clock() + grant.paused_s)
        return grant

    def _prefetch(self) -> None:
        """After a charge: lease the next chunk in the background if less than half is left."""
        if self._shared is None or (self._leasing is not None and not self._leasing.done()):
            return
        want = {kind: self._chunk_of(b, kind) - b.level for kind, b in self._leased()}
        if any(b.level < self._chunk_of(b, kind) / 2 for kind, b in self._leased()):
            self._start_lease({kind: max(0.0, w) for kind, w in want.items()})

    async def _top_up(self, needed: dict[str, float]) -> None:
        """The head acquirer needs the buckets to hold ``needed`` (per short kind): wait for
        the lease in flight, or lease now; when the shared budget is drained, sleep until it
        should have refilled enough (the other processes may take it first: then again)."""
        task, mine = self._leasing, False
        if task is None or task.done():
            want = {kind: max(needed.get(kind, 0.0), self._chunk_of(b, kind)) - b.level for kind, b in self._leased()}
            task, mine = self._start_lease({kind: max(0.0, w) for kind, w in want.items()}), True
        # not `await task`: an acquirer cancelled meanwhile must not cancel the lease, whose
        # grant would then be lost; the lease finishes and fills the buckets anyway
        started = time.perf_counter()
        try:
            await asyncio.wait({task})
        finally:
            self._lease_wait_s += time.perf_counter() - started
        failure = task.exception()
        if failure is not None:
            if mine:
                raise failure
            return  # a background lease failed: try again with one of our own
        if not mine:
            return  # a background lease's grant: see whether it was enough
        grant, wait = task.result(), 0.0
        for kind, bucket in self._leased():
            missing = needed.get(kind, 0.0) - bucket.level
            left, limit = (grant.left_requests, grant.rpm) if kind == "requests" else (grant.left_tokens, grant.tpm)
            if missing <= _EPSILON_S or not limit:
                continue
            # until the shared bucket should hold what is missing, or a chunk if that is less
            # (a big request is put together from several leases rather than starved)
            target = min(missing, self._chunk_of(bucket, kind))
            wait = max(wait, (target - max(0.0, left or 0.0)) / (limit / 60.0))
        if wait > 0:
            await self._sleep(min(_POLL_MAX_S, max(_POLL_MIN_S, wait)))

    async def aclose(self) -> None:
        """Give back what was leased and not spent (best effort: a failure only loses it
        until the shared budget refills), and close the shared budget's connection."""
        if self._shared is None:
            return
        pending = [t for t in (self._leasing, *self._background) if t is not None and not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=_CLOSE_WAIT_S)
        requests = tokens = 0.0
        for kind, bucket in self._leased():
            if kind == "requests":
                requests = bucket.level
            else:
                tokens = bucket.level
            bucket.level = 0.0
        try:
            if requests or tokens:
                await self._shared.give_back(requests, tokens)
        except Exception:
            pass
        finally:
            await self._shared.aclose()

    def _forget(self, task: asyncio.Task[object]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved here; a failed lease is raised by _top_up

    # ------------------------------------------------------------------ settling

    def _settle(self, permit: Permit, actual: int | None, headers: Mapping[str, str] | None) -> None:
        now = self._clock()
        self._open.discard(permit._seq)
        tokens = self._buckets["tokens"]
        if actual is not None and actual >= 0:
            delta = int(actual) - permit.tokens
            self._corrected += delta
            if tokens is not None and delta:
                tokens.refill(now)
                tokens.level = min(tokens.capacity, tokens.level - delta)
            self._amend(permit._seq, int(actual))
        if headers:
            self._sync(permit._seq, {k.lower(): v for k, v in headers.items()}, now)
        self._prune()

    def _amend(self, seq: int, actual: int) -> None:
        for i in range(len(self._issued) - 1, -1, -1):
            if self._issued[i][0] == seq:
                self._issued[i] = (seq, actual)
                return
            if self._issued[i][0] < seq:
                return

    def _prune(self) -> None:
        oldest = min(self._open, default=self._seq + 1)
        while self._issued and self._issued[0][0] < oldest:
            self._issued.popleft()

    def _sync(self, seq: int, headers: dict[str, str], now: float) -> None:
        """Lower the buckets to the provider's view, never raise them.

        The provider's ``remaining`` counts every request it admitted up to this one. The
        requests issued after this one are not in it (most arrive later), so they are
        subtracted; one that overtook this one is counted twice, which errs on the safe
        side, as does taking the count as of now rather than as of its admission.
        """
        later_requests = later_tokens = 0
        for s, t in reversed(self._issued):
            if s <= seq:
                break
            later_requests += 1
            later_tokens += t
        for kind, later in (("requests", later_requests), ("tokens", later_tokens)):
            limit = _number(headers.get(f"x-ratelimit-limit-{kind}"))
            remaining = _number(headers.get(f"x-ratelimit-remaining-{kind}"))
            reset = _seconds(headers.get(f"x-ratelimit-reset-{kind}"))
            bucket = self._buckets[kind]
            if limit and limit > 0 and self.learn_limits and (bucket is None or limit < bucket.capacity):
                if bucket is None:
                    bucket = self._buckets[kind] = _Bucket(limit, now)
                else:
                    bucket.refill(now)
                    bucket.set_limit(limit)
            if bucket is None:
                continue
            if remaining is not None:
                estimate = remaining - later
            elif reset is not None and reset <= 60.0:
                # time until the bucket is full again; longer resets belong to longer windows
                estimate = bucket.capacity - reset * bucket.rate - later
            else:
                continue
            bucket.refill(now)
            if estimate < bucket.level:
                bucket.level = estimate
                self._synced += 1


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError:
        return None


# --------------------------------------------------------------------------- concurrency


class Slot:
    """One request's place among those in flight; report how it went before leaving."""

    __slots__ = ("_owner", "_reported", "_started")

    def __init__(self, owner: Concurrency) -> None:
        self._owner = owner
        self._started = owner._clock()
        self._reported = False

    def succeeded(self, *, waited: float = 0.0) -> None:
        """The request succeeded after waiting ``waited`` seconds for budget (``Permit.waited``)."""
        if not self._reported:
            self._reported = True
            self._owner._succeeded(waited, self._owner._clock() - self._started - waited)

    def throttled(self, *, waited: float = 0.0) -> None:
        """The request, sent after waiting ``waited`` seconds for budget, got a 429."""
        if not self._reported:
            self._reported = True
            self._owner._throttled(sent_at=self._started + waited)

    async def __aenter__(self) -> Slot:
        await self._owner._enter()
        self._started = self._owner._clock()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._owner._release()


class Concurrency:
    """How many requests are in flight, adapted AIMD-style between ``min_limit`` and ``max_limit``.

    * A request that succeeds while others wait for a slot, having found budget to spare
      (it waited at most ``spare_wait_s`` for the rate limiter, less than its latency), adds
      ``1/limit``: about one slot per round of requests. Latency, not budget, held it back.
    * A 429 halves the limit, once per round: a 429 for a request sent before the limit was
      last cut does not cut it again.

    Usage::

        slots = Concurrency(initial=4, max_limit=32)
        async with slots.slot() as slot:
            ...
            slot.succeeded(waited=permit.waited)   # or slot.throttled(waited=...) after a 429
    """

    def __init__(
        self,
        initial: int = 4,
        *,
        min_limit: int = 1,
        max_limit: int = 64,
        spare_wait_s: float = 0.001,
        clock: Clock = time.monotonic,
    ) -> None:
        if not 1 <= min_limit <= max_limit:
            raise ConfigError(f"concurrency bounds must satisfy 1 <= min <= max, not {min_limit}..{max_limit}")
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.spare_wait_s = spare_wait_s
        self._clock = clock
        self._limit = float(min(max(initial, min_limit), max_limit))
        self._in_flight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._started = clock()
        self._cut_at = -math.inf
        self._mark = self._started
        self._area = 0.0
        self._peak = 0

    @property
    def limit(self) -> int:
        """Requests allowed in flight now."""
        return int(self._limit)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return sum(1 for f in self._waiters if not f.done())

    @property
    def peak(self) -> int:
        """Most requests in flight at once so far."""
        return self._peak

    def mean_in_flight(self) -> float:
        """Requests in flight, averaged over time since this controller was made."""
        now = self._clock()
        area = self._area + self._in_flight * (now - self._mark)
        return area / (now - self._started) if now > self._started else float(self._in_flight)

    def slot(self) -> Slot:
        """An async context manager holding one in-flight slot."""
        return Slot(self)

    # ------------------------------------------------------------------ internals

    def _account(self) -> None:
        now = self._clock()
        self._area += self._in_flight * (now - self._mark)
        self._mark = now

    def _take(self) -> None:
        self._account()
        self._in_flight += 1
        self._peak = max(self._peak, self._in_flight)

    async def _enter(self) -> None:
        if self._in_flight < self.limit and not self.waiting:
            self._take()
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # granted as we were cancelled: hand it on
            raise
        finally:
            try:
                self._waiters.remove(future)
            except ValueError:
                pass

    def _release(self) -> None:
        self._account()
        self._in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        for future in list(self._waiters):
            if self._in_flight >= self.limit:
                break
            if not future.done():
                self._take()
                future.set_result(None)

    def _succeeded(self, waited: float, latency: float) -> None:
        if self.waiting and waited <= self.spare_wait_s and latency > waited:
            self._limit = min(float(self.max_limit), self._limit + 1.0 / self._limit)
            self._wake()

    def _throttled(self, sent_at: float) -> None:
        if sent_at >= self._cut_at:
            self._limit = max(float(self.min_limit), self._limit / 2.0)
            self._cut_at = self._clock()


# --------------------------------------------------------------------------- both


class Throttle:
    """One run's way to one endpoint: a :class:`RateLimiter` and a :class:`Concurrency`.

    :meth:`send` holds a slot, waits for budget, makes the request, settles the permit with
    the response's ``prompt_tokens`` and ``headers`` (an :class:`~vectorfill.provider.client.Embeddings`)
    and reports to the concurrency controller. A rate-limit 429
    (:class:`~vectorfill.errors.TransientProviderError` with status 429) pauses every
    request of the throttle and is retried here, through the limiter, up to
    ``max_429_retries`` times; every other error is raised as it is.
    """

    def __init__(self, limiter: RateLimiter, slots: Concurrency, *, max_429_retries: int = 8) -> None:
        self.limiter = limiter
        self.slots = slots
        self.max_429_retries = max_429_retries

    async def aclose(self) -> None:
        """Give back the shared budget leased and not spent (:meth:`RateLimiter.aclose`)."""
        await self.limiter.aclose()

    async def send(self, tokens: int, request: Callable[[], Awaitable[R]]) -> R:
        """``await request()`` once the budget allows ``tokens`` more; see the class."""
        throttled = 0
        while True:
            async with self.slots.slot() as slot:
                permit = await self.limiter.acquire(tokens)
                try:
                    result = await request()
                except TransientProviderError as exc:
                    permit.settle()
                    if exc.status != 429:
                        raise
                    self.limiter.on_429(exc.retry_after)
                    slot.throttled(waited=permit.waited)
                    if throttled >= self.max_429_retries:
                        raise
                    throttled += 1
                    continue
                except BaseException:
                    permit.settle()
                    raise
                permit.settle(getattr(result, "prompt_tokens", None), getattr(result, "headers", None))
                slot.succeeded(waited=permit.waited)
                return result
