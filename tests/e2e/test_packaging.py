"""The built wheel, installed on its own (not editable), is the package users get.

A missing entry in pyproject's package list, or a folder of the clone that shadows the
installed package, only shows up there: editable installs (the tests' own) hide both.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

CHECK = r"""
import importlib, pkgutil, sys, os
import vectorfill
site = sys.argv[1]
assert vectorfill.__file__.startswith(site), ("not the installed package", vectorfill.__file__)
names = [m.name for m in pkgutil.walk_packages(vectorfill.__path__, "vectorfill.") if not m.name.endswith("__main__")]
for name in names:
    if name == "vectorfill.migrations.env":  # Alembic's script: runs only under Alembic
        continue
    module = importlib.import_module(name)
    assert module.__file__.startswith(site), (name, module.__file__)
for sub in ("cli", "provider", "storage", "jobs", "orchestration", "local", "local.embeddings_server", "documents",
            "flows", "tasks", "migrations", "migrations.versions"):
    assert "vectorfill." + sub in names, sub
# what Prefect's runner does for a served deployment's flow run, from the clone directory:
from prefect.flows import load_flow_from_entrypoint
flow = load_flow_from_entrypoint("vectorfill.flows.backfill:backfill")
assert flow.name == "vectorfill-backfill"
from vectorfill.storage.db import _migrations_dir
assert (_migrations_dir() / "env.py").is_file() and (_migrations_dir() / "script.py.mako").is_file()
print(len(names), "modules")
"""


def test_the_built_wheel_installs_every_subpackage_and_the_clone_does_not_shadow_it(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(REPO)],
        check=True,
        timeout=300,
    )
    (wheel,) = dist.glob("vectorfill-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, str(wheel)],
        check=True,
        timeout=300,
    )
    # the dependencies come from this environment, after the wheel (a path in a .pth file
    # adds no editable finder: only the wheel's vectorfill is importable)
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    proc = subprocess.run(
        [str(python), "-c", CHECK, site], cwd=REPO, capture_output=True, text=True, timeout=300
    )  # cwd: the clone, as for `vectorfill serve` started there
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "modules" in proc.stdout
