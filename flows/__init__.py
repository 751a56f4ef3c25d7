"""Prefect flows. Each flow only sequences the stage tasks of :mod:`vectorfill.tasks`."""

from .backfill import backfill
from .sync import sync

__all__ = ["backfill", "sync"]
