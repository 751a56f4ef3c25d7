"""The ``vectorfill`` command line (typer): one module, :mod:`vectorfill.cli.app`."""

from vectorfill.cli.app import app, main

__all__ = ["app", "main"]
