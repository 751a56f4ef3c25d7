"""The storage layer imports neither the jobs nor the local layer, checked in a fresh
interpreter (the rest of the database error map: test_db_errors.py, test_db_error_kinds.py)."""

from __future__ import annotations

import subprocess
import sys


def test_storage_imports_neither_the_jobs_nor_the_local_layer():
    code = (
        "import sys, vectorfill.storage.db, vectorfill.storage.budgets, vectorfill.storage.caps\n"
        "print(sorted(m for m in sys.modules if m.startswith(('vectorfill.jobs', 'vectorfill.local', "
        "'vectorfill.provider'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
