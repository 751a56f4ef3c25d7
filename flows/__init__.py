"""Prefect flows. Each flow only sequences the stage tasks of :mod:`vectorfill.tasks`."""

from .backfill import backfill

__all__ = ["backfill"]
