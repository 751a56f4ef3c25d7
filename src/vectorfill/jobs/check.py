"""``vectorfill check``: one small request through a job's real path, before a long run.

It sends two short inputs the way a backfill would (the job's endpoint, key, model,
``dimensions``, encoding, Azure's header and query), through the same negotiation
(:mod:`vectorfill.provider.negotiate`): a refused base64 falls back to float, a cap the
server names is learnt, and both are remembered for the endpoint. The report says what
works and what to change; :attr:`CheckReport.ok` is True only when a backfill would work.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import asdict, dataclass

import numpy as np

from vectorfill.config import JobSettings, read_api_key
from vectorfill.errors import (
    AuthenticationError,
    ModelNotFound,
    ProviderError,
    QuotaExceeded,
    RequestRejected,
    TransientProviderError,
    VectorfillError,
)
from vectorfill.jobs.registry import load_job
from vectorfill.provider.budgets import endpoint_key
from vectorfill.provider.client import EmbeddingsClient
from vectorfill.provider.negotiate import Negotiator
from vectorfill.provider.tokens import counter_for, max_input_tokens
from vectorfill.records import Caps
from vectorfill.storage import sql
from vectorfill.storage.caps import load_caps, remembering
from vectorfill.storage.db import connect

__all__ = ["CHECK_TEXTS", "CheckLine", "CheckReport", "check_endpoint", "check_job", "other_base_url"]

#: The two inputs of a check: short, plain, different (two vectors must come back, differing).
CHECK_TEXTS = ("vectorfill check: a first short input", "and a second, different one, to see two inputs in one request")


@dataclass(frozen=True)
class CheckLine:
    what: str
    ok: bool
    detail: str
    note: bool = False
    """Worth saying even when the check passes (``job create`` prints it): something learnt
    or found out about the endpoint."""


@dataclass(frozen=True)
class CheckReport:
    job: str
    version: int | None
    model: str
    base_url: str
    lines: tuple[CheckLine, ...]

    @property
    def ok(self) -> bool:
        return all(line.ok for line in self.lines)

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def other_base_url(base_url: str) -> str:
    """The other form of ``base_url``: without its ``/v1`` if it ends in one, else with it
    (Infinity serves ``/embeddings`` at its root by default, most servers under ``/v1``)."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else f"{url}/v1"


async def check_endpoint(
    *,
    job: str,
    base_url: str,
    model: str,
    api_key_env: str | None,
    dimensions: int | None,
    settings: JobSettings,
    expected_dims: int | None = None,
    version: int | None = None,
    db_url: str | None = None,
    transport=None,
    adopt_base_url: bool = False,
) -> CheckReport:
    """Check one endpoint as a job's version would use it (see the module docstring).

    A 404 for ``/embeddings`` is tried again at the other form of the base URL (with or
    without ``/v1``). When that one answers, the report's ``base_url`` is it and a "base URL"
    line says so: accepted when ``adopt_base_url`` (``job create`` then stores that URL),
    otherwise a failed line naming the URL that works (an existing job's is not changed)."""
    kw = dict(
        job=job, model=model, api_key_env=api_key_env, dimensions=dimensions, settings=settings,
        expected_dims=expected_dims, version=version, db_url=db_url, transport=transport,
    )  # fmt: skip
    report, not_found = await _check_one(base_url=base_url, **kw)
    if not not_found:
        return report
    other = other_base_url(base_url)
    alternative, still_not_found = await _check_one(base_url=other, **kw)
    if still_not_found or not alternative.ok:
        return report
    given = base_url.rstrip("/")
    if adopt_base_url:
        line = CheckLine(
            "base URL", True, f"{given}/embeddings answered 404 but {other}/embeddings answers: {other} is used", True
        )
    else:
        line = CheckLine(
            "base URL",
            False,
            f"{given}/embeddings answered 404 but {other}/embeddings answers: the base URL should be {other} "
            f"(`vectorfill job set-model {job} --model {model} --base-url {other}`)",
        )
    return dataclasses.replace(alternative, lines=(line, *alternative.lines))


async def _check_one(
    *,
    job: str,
    base_url: str,
    model: str,
    api_key_env: str | None,
    dimensions: int | None,
    settings: JobSettings,
    expected_dims: int | None,
    version: int | None,
    db_url: str | None,
    transport,
) -> tuple[CheckReport, bool]:
    """The check at ``base_url``, and whether it ended on a 404."""
    lines: list[CheckLine] = []

    def report() -> CheckReport:
        return CheckReport(job, version, model, base_url, tuple(lines))

    try:
        key = read_api_key(api_key_env, job=job)
    except VectorfillError as exc:
        lines.append(CheckLine("API key", False, str(exc)))
        return report(), False
    endpoint = endpoint_key(base_url, model)
    caps = Caps()
    if db_url:
        try:
            caps = await load_caps(db_url, endpoint)
        except VectorfillError:
            pass  # the check works without the database; it just remembers nothing
    try:
        client = EmbeddingsClient(
            base_url=base_url,
            model=model,
            api_key=key,
            key_hint=api_key_env,
            dimensions=dimensions,
            expected_dims=expected_dims,
            encoding_format=settings.encoding_format,
            timeout_s=min(settings.timeout_s, 30.0),
            job=job,
            api_key_header=settings.api_key_header,
            api_version=settings.api_version,
            transport=transport,
        )
    except VectorfillError as exc:
        lines.append(CheckLine("base URL", False, str(exc)))
        return report(), False
    async with client:
        negotiator = Negotiator(client, caps=caps, remember=remembering(db_url, endpoint))
        remembered = client.encoding_format
        try:
            result = await negotiator.embed(list(CHECK_TEXTS))
        except AuthenticationError as exc:
            lines.append(CheckLine("API key", False, str(exc)))
            return report(), False
        except ModelNotFound as exc:
            lines.append(CheckLine("model", False, str(exc)))
            return report(), exc.status == 404
        except QuotaExceeded as exc:
            lines.append(CheckLine("quota", False, str(exc)))
            return report(), False
        except RequestRejected as exc:
            lines.append(CheckLine(exc.setting or "request", False, str(exc)))
            return report(), False
        except TransientProviderError as exc:
            what = "dimensions" if exc.code == "dimension_mismatch" else "endpoint"
            if exc.status == 500 and not api_key_env:
                what = "API key"  # no key sent, and a bare 500 back (LiteLLM's proxy)
            lines.append(CheckLine(what, False, str(exc)))
            return report(), False
        except ProviderError as exc:
            lines.append(CheckLine("request", False, str(exc)))
            return report(), False
        except VectorfillError as exc:
            lines.append(CheckLine("request", False, str(exc)))
            return report(), False
        if not (negotiator.max_input_tokens or max_input_tokens(model)):
            announced = await client.announced_input_limit()  # vLLM's /v1/models, TEI's /info
            if announced is not None:
                await negotiator.announced(*announced)
    lines.append(CheckLine("endpoint", True, f"{client.base_url}/embeddings answered 200"))
    lines.append(
        CheckLine("API key", True, f"the key in ${api_key_env} was accepted" if api_key_env else "no key needed")
    )
    lines.append(CheckLine("model", True, f"{model!r} answered (as {result.model!r})"))
    d = result.vectors.shape[1]
    if dimensions and d != dimensions:
        lines.append(
            CheckLine(
                "dimensions",
                False,
                f"asked for dimensions={dimensions} but got {d}-dimensional vectors: the endpoint ignores "
                f"`dimensions`. Leave --dimensions out (start a version without it with `vectorfill job set-model`)",
            )
        )
    else:
        asked = f" as asked (dimensions={dimensions})" if dimensions else ""
        lines.append(CheckLine("dimensions", True, f"{d}-dimensional vectors{asked}"))
    if client.encoding_format != settings.encoding_format:
        how = "remembered from an earlier refusal" if remembered != settings.encoding_format else "refused just now"
        lines.append(
            CheckLine(
                "encoding",
                True,
                f"{settings.encoding_format} is not accepted here ({how}); {client.encoding_format} is used instead, "
                f"for every run on this endpoint. To say so in the job: --encoding-format {client.encoding_format}",
            )
        )
    elif client.encoding_format == "base64" and result.encoding != "base64":
        lines.append(
            CheckLine(
                "encoding",
                True,
                note=True,
                detail="encoding_format base64 asked, floats answered: the server ignores it (vectorfill reads "
                "floats too; the answers are about 2.5 times larger). --encoding-format float says so",
            )
        )
    else:
        lines.append(CheckLine("encoding", True, f"encoding_format {client.encoding_format} asked and answered"))
    vectors = result.vectors
    if len(vectors) != 2 or np.allclose(vectors[0], vectors[1]):
        lines.append(CheckLine("inputs", False, "two different inputs did not get two different vectors"))
    else:
        cap = negotiator.max_inputs
        note = f"; at most {cap} inputs per request here (learnt, remembered)" if cap else ""
        lines.append(CheckLine("inputs", True, f"two inputs in one request, two vectors{note}"))
    for learnt in negotiator.learnt:
        lines.append(CheckLine("negotiated", True, learnt, True))
    if result.prompt_tokens is None:
        lines.append(
            CheckLine(
                "usage", True, "answers carry no `usage`: tokens are counted locally, marked estimated in summaries"
            )
        )
    else:
        texts = list(CHECK_TEXTS)
        counted = sum(counter_for(model).count(texts))
        if client.usage_believed(result.prompt_tokens, texts, counted):
            lines.append(CheckLine("usage", True, f"usage reported ({result.prompt_tokens} tokens)"))
        else:
            lines.append(
                CheckLine(
                    "usage",
                    True,
                    note=True,
                    detail=f"usage reports {result.prompt_tokens} tokens for two inputs of {sum(map(len, texts))} characters "
                    f"(about {counted} tokens counted here): not tokens, so runs count tokens here and mark them "
                    "estimated (in summaries, `vectorfill runs` and costs)",
                )
            )
    return report(), False


def check_job(url: str, name: str, *, forget: bool = False) -> list[CheckReport]:
    """Check each version of job ``name`` that a backfill would fill (active and filling);
    with ``forget``, what was learnt about their endpoints is forgotten first (after the
    server was upgraded or reconfigured), and learnt again by the check."""
    with connect(url) as conn:
        job = load_job(conn, name)
        versions = [v for v in job.versions if v.state in ("active", "filling", "paused")]
        if forget:
            for v in versions:
                conn.execute(sql.FORGET_ENDPOINT_CAPS, {"endpoint": endpoint_key(v.base_url, v.model)})
    return [
        asyncio.run(
            check_endpoint(
                job=name,
                base_url=v.base_url,
                model=v.model,
                api_key_env=v.api_key_env,
                dimensions=v.dimensions,
                settings=job.settings,
                expected_dims=v.vector_dims,
                version=v.version,
                db_url=url,
            )
        )
        for v in versions
    ]
