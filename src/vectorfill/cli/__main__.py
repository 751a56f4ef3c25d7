"""``python -m vectorfill.cli``: the same as the ``vectorfill`` command."""

from vectorfill.cli.app import main

main()
