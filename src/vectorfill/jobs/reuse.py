"""Which versions' stored vectors serve a version's inputs (content-addressed reuse).

An input is identified by its version's model and dimensions and the sha256 of its exact
text. A version's inputs find their vectors in its own table and, while it replaces the
active version, in the active version's: copied as they are when the model, endpoint and
dimensions are the same (a chunker, template or storage change; a ``vector`` read back as
float32 is the provider's vector exactly, a ``halfvec`` serves only another ``halfvec``), or
derived when the version asks fewer dimensions of a model whose vectors shorten
(:mod:`vectorfill.provider.matryoshka`). The run (:mod:`vectorfill.engine.reuse`) and the
estimate (:mod:`vectorfill.jobs.estimate`) both ask :func:`sources`.
"""

from __future__ import annotations

from dataclasses import dataclass

from vectorfill.provider.matryoshka import shortens
from vectorfill.records import Job, Version

__all__ = ["Source", "sources"]


@dataclass(frozen=True)
class Source:
    """A version whose stored vectors serve another's inputs."""

    version: Version
    shorten_to: int | None = None
    """Cut each vector found to this many dimensions and renormalise it (a Matryoshka
    derivation), or None: copy it as it is."""


def _exact_cast(source: Version, target: Version) -> bool:
    """A stored vector of ``source`` is, in ``target``'s column, what the provider's would be:
    a float32 ``vector`` always; a float16 ``halfvec`` only into another ``halfvec``."""
    if source.vector_type == "vector":
        return True
    return target.storage == "halfvec" or (target.storage == "auto" and source.storage == "auto")


def sources(job: Job, version: Version) -> tuple[Source, ...]:
    """Where ``version``'s inputs may find their vectors: its own table, then the active
    version's (same model and endpoint, and the same dimensions or, for a model whose
    vectors shorten, more of them)."""
    found = [Source(version)]
    active = job.active
    if active is None or active.version == version.version or active.vector_dims is None:
        return tuple(found)
    if active.model != version.model or active.base_url != version.base_url:
        return tuple(found)
    if active.dimensions == version.dimensions and _exact_cast(active, version):
        found.append(Source(active))
    elif (
        version.dimensions is not None
        and version.dimensions < active.vector_dims
        and active.vector_type == "vector"
        and shortens(version.model, job.settings)
    ):
        found.append(Source(active, shorten_to=version.dimensions))
    return tuple(found)
