"""Stage 2: embed one request's inputs; a request the provider rejects is bisected, when
the rejection is an input's.

A terminal rejection (400/413/422) is first judged by the endpoint's
:class:`~vectorfill.provider.negotiate.Negotiator`: a refusal of the *request* (a cap on
inputs or tokens, ``encoding_format``, ``dimensions``, anything a one-input probe is refused
for too) is negotiated (the request split to the cap, base64 given up for float) or stops the
run with every row still queued (:class:`~vectorfill.errors.RequestRejected`). Only a
refusal of the *inputs* is split in halves until the rejected inputs are isolated, so one
bad input cannot block the others; the isolated inputs come back as failures with the
provider's message. Errors that make every request pointless (401/403, 404, insufficient
quota) stop the run at once; transient errors are raised, and the slice is retried
(``slice.py``) at this stage, after the provider's Retry-After.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass, field

import numpy as np

from vectorfill.errors import InputError, TerminalProviderError, stops_run
from vectorfill.provider.client import EmbeddingsClient
from vectorfill.provider.negotiate import classify
from vectorfill.provider.ratelimit import Throttle
from vectorfill.provider.tokens import SMALLEST_COMMON_LIMIT, counter_for, fit_limit, max_input_tokens

from .claim import Item, Request, pack
from .work import Work

__all__ = ["Embedded", "embed_request"]


@dataclass(frozen=True)
class Embedded:
    """Vectors for ``items`` (row i of ``vectors`` belongs to ``items[i]``), and the inputs
    the provider rejected with its reason."""

    items: tuple[Item, ...]
    vectors: np.ndarray
    model: str
    tokens: int
    requests: int
    rejected: tuple[tuple[Item, int | None, str], ...] = field(default_factory=tuple)
    truncated: int = 0
    """Inputs shortened after the provider said they were too long."""


_TOO_LONG = re.compile(r"context.length|too long|maximum.*tokens|tokens.*maximum|exceeds", re.I)


def _too_long(exc: TerminalProviderError) -> bool:
    return exc.code == "context_length_exceeded" or bool(_TOO_LONG.search(str(exc))) or classify(exc).kind == "too_long"


def _shorter(text: str, message: str) -> str:
    """Cut ``text`` by the ratio of the limit to the count the provider names ("maximum
    context length is 256 tokens, however input[0] has 300"), or by half."""
    numbers = sorted(int(a or b) for a, b in re.findall(r"(\d+) tokens|has (\d+)", message))
    ratio = numbers[0] / numbers[-1] if len(numbers) >= 2 and numbers[-1] else 0.5
    return text[: max(1, int(len(text) * min(ratio, 0.95) * 0.9))]


async def _send(client: EmbeddingsClient, items: tuple[Item, ...], throttle: Throttle | None):
    """One request; through ``throttle`` (counted tokens in, billed tokens and headers out)."""
    texts = [i.text for i in items]
    if throttle is None:
        return await client.embed(texts)
    return await throttle.send(_budget_tokens(client.model, items, throttle), lambda: client.embed(texts))


def _budget_tokens(model: str, items: tuple[Item, ...], throttle: Throttle) -> int:
    """The tokens to charge the rate budget for ``items``: counted exactly when it has a
    tokens-per-minute limit (configured, or announced by the provider) and the model's
    tokenizer is known; otherwise the claim's counts (estimates, corrected by ``usage``).
    Items the claim counted already (:attr:`Item.counted`) are not counted again."""
    if throttle.limiter.tpm is not None:
        counter = counter_for(model)
        if counter.exact:
            guessed = [i.text for i in items if not i.counted]
            return sum(i.tokens for i in items if i.counted) + sum(counter.count(guessed))
    return sum(i.tokens for i in items)


def _merge(parts: list[Embedded], model: str, requests: int = 0) -> Embedded:
    """Several answers for consecutive items as one (``requests`` more were sent for them)."""
    answered = [e for e in parts if len(e.items)]
    vectors = np.vstack([e.vectors for e in answered]) if answered else np.zeros((0, 0), np.float32)
    return Embedded(
        tuple(i for e in parts for i in e.items),
        vectors,
        answered[0].model if answered else model,
        sum(e.tokens for e in parts),
        sum(e.requests for e in parts) + requests,
        tuple(r for e in parts for r in e.rejected),
        sum(e.truncated for e in parts),
    )


def _fit(model: str, items: tuple[Item, ...], limit: int, ratio: float | None) -> tuple[tuple[Item, ...], int]:
    """``items`` with every input over the model's ``limit`` cut to it (by the model's
    tokenizer, or an estimate: scaled by ``ratio``, the server's own count of a refused input,
    when one was learnt, else a conservative one); and how many were cut. The stored text is
    the text sent, so it stays exactly what its vector was made from."""
    counter = counter_for(model, ratio)
    budget = fit_limit(counter, limit)
    counts = counter.estimate([i.text for i in items], budget)
    if all(n <= budget for n in counts):
        return items, 0
    fitted = tuple(
        dataclasses.replace(i, text=counter.truncate(i.text, budget), tokens=min(i.tokens, limit)) if n > budget else i
        for i, n in zip(items, counts, strict=True)
    )
    return fitted, sum(1 for n in counts if n > budget)


async def _fit_by_server(
    client: EmbeddingsClient, items: tuple[Item, ...], limit: int
) -> tuple[tuple[Item, ...], int] | None:
    """:func:`_fit` by the server's own ``/tokenize`` (exact: inputs are cut to the limit
    itself); None when it fails (the estimate is used instead). Only inputs that could be over
    the limit are counted: a token stands for at least one UTF-8 byte, besides the few special
    tokens a model adds."""
    tokenizer = client.tokenizer
    assert tokenizer is not None
    maybe = [k for k, i in enumerate(items) if len(i.text.encode("utf-8", "surrogatepass")) + 8 > limit]
    counts = await tokenizer.count([items[k].text for k in maybe])
    if counts is None:
        return None
    fitted = list(items)
    cut = 0
    for k, n in zip(maybe, counts, strict=True):
        if n > limit:
            shorter = await tokenizer.truncate(items[k].text, limit, n)
            if shorter is None:
                return None
            fitted[k] = dataclasses.replace(items[k], text=shorter[0], tokens=shorter[1])
            cut += 1
    return tuple(fitted), cut


def _limit(client: EmbeddingsClient, set_limit: int | None) -> int | None:
    """The model's limit on one input: the one learnt from the server, or the job's (the lower;
    the job's only where the tokenizer is not known here: claims cut exactly to it otherwise)."""
    if set_limit and counter_for(client.model).exact:
        set_limit = None
    limits = [n for n in (set_limit, client.negotiator.max_input_tokens) if n]
    return min(limits) if limits else None


async def _embed(
    client: EmbeddingsClient,
    items: tuple[Item, ...],
    truncate: bool,
    throttle: Throttle | None = None,
    set_limit: int | None = None,
) -> Embedded:
    negotiator = client.negotiator
    limit = _limit(client, set_limit) if truncate else None
    if limit:  # the model's limit, set or learnt: cut to it before sending
        fitted = await _fit_by_server(client, items, limit) if client.tokenizer is not None else None
        items, cut = fitted or _fit(client.model, items, limit, negotiator.input_token_ratio)
        if cut:
            sent = await _embed(client, items, truncate, throttle, set_limit)
            return dataclasses.replace(sent, truncated=sent.truncated + cut)
    cap, cap_tokens = negotiator.max_inputs, negotiator.max_request_tokens
    if len(items) > 1 and ((cap and len(items) > cap) or (cap_tokens and sum(i.tokens for i in items) > cap_tokens)):
        # a cap learnt since the request was packed: split to it (as a claim packs)
        chunks = [b.items for b in pack(list(items), cap or len(items), cap_tokens or sys.maxsize)]
        if len(chunks) > 1:
            return _merge(
                [await _embed(client, chunk, truncate, throttle, set_limit) for chunk in chunks], client.model
            )
    generation = negotiator.generation
    try:
        result = await _send(client, items, throttle)
    except InputError as exc:
        # the client found one input it cannot send (it says which): that row is recorded as
        # failed with the reason, the others are sent without it
        bad = exc.row if isinstance(exc.row, int) and 0 <= exc.row < len(items) else 0
        rest = items[:bad] + items[bad + 1 :]
        rejected = ((items[bad], None, str(exc)),)
        if not rest:
            return Embedded((), np.zeros((0, 0), np.float32), client.model, 0, 0, rejected)
        sent = await _embed(client, rest, truncate, throttle, set_limit)
        return dataclasses.replace(sent, rejected=sent.rejected + rejected)
    except TerminalProviderError as exc:
        if stops_run(exc):
            raise
        # the request's fault (negotiated, or the run stops) or the inputs' (bisect)?
        if await negotiator.judge(exc, len(items), generation, [i.text for i in items]) == "retry":
            return _merge([await _embed(client, items, truncate, throttle, set_limit)], client.model, requests=1)
        if len(items) == 1:
            item = items[0]
            if truncate and _too_long(exc) and len(item.text) > 1:
                # the tokenizer is not known here: shorten as the provider's message says, retry
                shorter = dataclasses.replace(item, text=_shorter(item.text, str(exc)))
                retried = await _embed(client, (shorter,), truncate, throttle, set_limit)
                return dataclasses.replace(retried, requests=retried.requests + 1, truncated=retried.truncated + 1)
            await negotiator.single_refused(exc, item.text, generation)  # the same refusal for all?
            return Embedded((), np.zeros((0, 0), np.float32), client.model, 0, 1, ((item, exc.status, str(exc)),))
        mid = len(items) // 2
        left = await _embed(client, items[:mid], truncate, throttle, set_limit)
        right = await _embed(client, items[mid:], truncate, throttle, set_limit)
        if not (left.rejected or right.rejected or left.truncated or right.truncated) and not _too_long(exc):
            # refused whole, accepted in halves: the request was too big for the endpoint
            await negotiator.size_refused(max(mid, len(items) - mid))
        return _merge([left, right], client.model, requests=1)
    negotiator.succeeded(generation)
    counted = sum(i.tokens for i in items)
    if result.prompt_tokens is not None and client.usage_believed(
        result.prompt_tokens, [i.text for i in items], counted
    ):
        tokens = result.prompt_tokens
    else:  # no usage in the answer, or not tokens: the claim's counts, marked as estimated in the summary
        tokens = counted
        client.tokens_estimated += tokens
    return Embedded(items, result.vectors, result.model, tokens, 1)


async def embed_request(
    work: Work, client: EmbeddingsClient, request: Request, throttle: Throttle | None = None
) -> Embedded:
    """Embed one request's inputs with one request (more only when bisecting a rejected one), through
    the run's ``throttle`` for the endpoint when given: it waits for the rate budget and
    retries 429s itself, after a pause shared by every lane. Only the items the request
    sends are embedded (:attr:`Request.sent`: not those it copies); a request that copies
    all its items sends nothing."""
    sent = request.sent
    if not sent:
        return Embedded((), np.zeros((0, 0), np.float32), client.model, 0, 0)
    embedded = await _embed(
        client, sent, work.settings.on_too_long == "truncate", throttle, work.settings.max_input_tokens
    )
    client.maybe_truncated += _maybe_truncated(work, client, embedded.items)
    return embedded


def _maybe_truncated(work: Work, client: EmbeddingsClient, items: tuple[Item, ...]) -> int:
    """How many of ``items`` (sent and embedded) may have been cut by the server without a
    word: the model's limit is not known here (no tokenizer, none set, learnt or well
    known) and the estimate puts them over the smallest common limit."""
    model = client.model
    if work.settings.max_input_tokens or client.negotiator.max_input_tokens or max_input_tokens(model):
        return 0
    counter = counter_for(model)
    if counter.exact:
        return 0
    return sum(1 for n in counter.estimate([i.text for i in items]) if n > SMALLEST_COMMON_LIMIT)
