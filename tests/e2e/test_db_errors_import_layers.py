"""psycopg's errors leave storage as vectorfill's, through one map: DatabaseUnavailable when a
retry on a new connection can help, DatabaseRefused when Postgres refused the statement;
Postgres's SQLSTATE stays on the error. Each case is produced for real where it can be."""

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
