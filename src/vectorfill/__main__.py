"""``python -m vectorfill``: the same as the ``vectorfill`` command."""

from vectorfill.cli.app import main

main()
