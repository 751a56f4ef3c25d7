"""Importing vectorfill does not import Prefect, checked in a fresh interpreter (the public
names: test_public_api.py)."""


def test_importing_vectorfill_does_not_import_prefect():
    import subprocess
    import sys

    code = "import sys, vectorfill; print('prefect' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
