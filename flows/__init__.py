"""Prefect flows. Each flow only sequences the tasks of :mod:`vectorfill.tasks` and the engine (:mod:`vectorfill.engine`)."""

from .backfill import backfill
from .sync import sync

__all__ = ["backfill", "sync"]
