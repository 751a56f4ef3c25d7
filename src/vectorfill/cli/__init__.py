"""The ``vectorfill`` command line (typer): :mod:`vectorfill.cli.app` holds the apps and
:func:`main`; the commands live in one private module per group."""

from vectorfill.cli.app import app, main

__all__ = ["app", "main"]
