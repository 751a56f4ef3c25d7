"""The ``vectorfill`` command as a person meets it, whole commands, start-up included.

Measures, for one or more checkouts (each a ``vectorfill`` executable, with its own
state directory, embedded Postgres and local Prefect server), interleaved round by round
(A, B, A, B, ...) so that a busy machine weighs on all of them alike:

* ``noop``: ``vectorfill backfill docs`` with nothing pending;
* ``small``: a 10-row backfill (10 rows edited just before);
* ``cold``: the first backfill in a new home: a fresh ``VECTORFILL_HOME``/``PREFECT_HOME``
  and no Prefect database yet, so the command starts (and migrates) the local Prefect server;
* ``idle``: the local Prefect server's CPU seconds per minute while nothing runs;
* ``run``: the server's CPU beside the command's during a backfill of ``--run-rows`` rows;
* ``refused``: the console output (stdout and stderr, verbatim) of a backfill whose
  ``dimensions`` the endpoint refuses (the fake provider behaving like OpenAI's ada-002).

Each timing is the median of ``--rounds`` (wall seconds, and the command's CPU seconds:
user + sys of the process and its children, from ``os.wait4``). The embeddings endpoint is
the fake provider (``tests/fake_provider.py``) in this process::

    python bench/bench_cli.py --vectorfill before=../main/.venv/bin/vectorfill \\
        --vectorfill after=.venv/bin/vectorfill --rounds 5

Needs the ``[test]`` extra (the fake provider) in the Python that runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

ROWS = 2_000
DIMS = 256


@dataclass
class Side:
    name: str
    exe: str
    home: Path
    env: dict[str, str] = field(default_factory=dict)
    db: str = ""
    times: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    notes: dict[str, object] = field(default_factory=dict)

    def run(self, *args: str, env: dict[str, str] | None = None, check: bool = True) -> tuple[float, float, str]:
        """Run ``vectorfill ARGS``: (wall s, CPU s of it and its children, its output)."""
        import resource

        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(
            [self.exe, *args], env=env or self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command was reaped: its CPU is in
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        if check and proc.returncode != 0:
            raise SystemExit(f"{self.name}: vectorfill {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}")
        return wall, cpu, proc.stdout

    def record(self, what: str, wall: float, cpu: float) -> None:
        self.times.setdefault(what, []).append((wall, cpu))


def sql(db: str, *statements: str) -> None:
    import psycopg

    with psycopg.connect(db, autocommit=True) as conn:
        for s in statements:
            conn.execute(s)


def setup(side: Side, base: Path, provider_url: str, refusing_url: str) -> None:
    side.home = base / side.name
    side.env = dict(os.environ)
    side.env.pop("PREFECT_API_URL", None)
    side.env.pop("VECTORFILL_DATABASE_URL", None)
    side.env.update(
        VECTORFILL_HOME=str(side.home / "vectorfill"),
        PREFECT_HOME=str(side.home / "prefect"),
        VF_KEY="sk-bench",
        COLUMNS="100",
    )
    side.run("db", "start")
    _, _, url = side.run("db", "url")
    side.db = url.strip().splitlines()[-1]
    side.env["VECTORFILL_DATABASE_URL"] = side.db
    side.run("migrate")
    sql(
        side.db,
        "CREATE TABLE IF NOT EXISTS articles (id int PRIMARY KEY, title text, body text)",
        f"INSERT INTO articles SELECT g, 'Title ' || g, repeat('body text ' || g || ' ', 20) "
        f"FROM generate_series(1, {ROWS}) g ON CONFLICT DO NOTHING",
    )
    common = ["--table", "public.articles", "--template", "{title}\\n\\n{body}", "--model", "fake-embed"]
    side.run("job", "create", "docs", *common, "--base-url", provider_url, "--api-key-env", "VF_KEY", check=False)
    side.run(
        "job",
        "create",
        "refused",
        *common,
        "--base-url",
        refusing_url,
        "--api-key-env",
        "VF_KEY",
        "--dimensions",
        "128",
        "--no-check",
        check=False,
    )
    side.run("backfill", "docs")  # starts the local Prefect server; embeds everything
    side.run("backfill", "docs")


def server_pids(side: Side) -> list[int]:
    import psutil

    state = json.loads((side.home / "vectorfill" / "prefect-local.json").read_text())
    try:
        leader = psutil.Process(state["pid"])
    except psutil.Error:
        return []
    return [leader.pid, *(p.pid for p in leader.children(recursive=True))]


def tree_cpu(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def touch_rows(side: Side, n: int, round_no: int) -> None:
    sql(side.db, f"UPDATE articles SET title = 'Title ' || id || ' r{round_no}' WHERE id <= {n}")


def cold_round(side: Side, base: Path, round_no: int) -> tuple[float, float]:
    """A new home: fresh state directories, no Prefect database yet, 10 rows pending."""
    home = base / f"{side.name}-cold{round_no}"
    env = dict(side.env)
    env.update(VECTORFILL_HOME=str(home / "vectorfill"), PREFECT_HOME=str(home / "prefect"))
    touch_rows(side, 10, 100 + round_no)
    dbname = side.db.rsplit("/", 1)[1].split("?")[0]
    wall, cpu, _ = side.run("backfill", "docs", env=env)
    side.run("stop", env=env, check=False)  # its own Prefect server (no embedded Postgres in that home)
    _drop_prefect_db(side, dbname)  # the next new home must meet no Prefect database
    return wall, cpu


def _drop_prefect_db(side: Side, dbname: str) -> None:
    # the warm home's server keeps its history in <db>_prefect too: the cold homes use it
    # only while the warm server is stopped (see main), so dropping it here is safe
    sql(side.db, f'DROP DATABASE IF EXISTS "{dbname}_prefect" WITH (FORCE)')


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vectorfill", action="append", required=True, help="NAME=PATH of a vectorfill executable")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--idle-s", type=float, default=120.0, help="seconds to sample the idle servers")
    p.add_argument("--run-rows", type=int, default=ROWS, help="rows re-embedded for the server's CPU during a run")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: noop,small,cold,idle,run,refused")
    p.add_argument("--json", type=Path, help="write the raw figures here")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    from fake_provider import FakeProvider

    sides = [Side(*v.split("=", 1), home=Path()) for v in args.vectorfill]
    base = Path(tempfile.mkdtemp(prefix="vf-bench-cli-"))
    with FakeProvider(DIMS, api_key="sk-bench") as provider, FakeProvider(DIMS, api_key="sk-bench") as refusing:
        refusing.behave_like("openai")  # refuses `dimensions`, as text-embedding-ada-002 does
        try:
            for s in sides:
                setup(s, base, provider.base_url, refusing.base_url)
            for r in range(args.rounds):
                for s in sides:
                    if "noop" not in skip:
                        wall, cpu, _ = s.run("backfill", "docs")
                        s.record("noop", wall, cpu)
                    if "small" not in skip:
                        touch_rows(s, 10, r)
                        wall, cpu, _ = s.run("backfill", "docs")
                        s.record("small", wall, cpu)
            if "refused" not in skip:
                for s in sides:
                    _, _, out = s.run("backfill", "refused", check=False)
                    s.notes["refused"] = out
            if "run" not in skip:
                for s in sides:
                    sql(s.db, f"UPDATE articles SET body = body || ' again' WHERE id <= {args.run_rows}")
                    pids = server_pids(s)
                    before = tree_cpu(pids)
                    wall, cpu, _ = s.run("backfill", "docs")
                    s.notes["run"] = {
                        "rows": args.run_rows,
                        "wall_s": round(wall, 2),
                        "command_cpu_s": round(cpu, 2),
                        "server_cpu_s": round(tree_cpu(pids) - before, 2),
                    }
            if "idle" not in skip:
                time.sleep(5)
                pids = {s.name: server_pids(s) for s in sides}
                start = {n: tree_cpu(p) for n, p in pids.items()}
                time.sleep(args.idle_s)
                for s in sides:
                    s.notes["idle_cpu_s_per_min"] = round(
                        (tree_cpu(pids[s.name]) - start[s.name]) * 60 / args.idle_s, 2
                    )
            if "cold" not in skip:
                for s in sides:  # the warm servers stop: the cold homes create <db>_prefect anew
                    s.run("stop", check=False)
                    s.run("db", "start")
                    _drop_prefect_db(s, s.db.rsplit("/", 1)[1].split("?")[0])
                for r in range(args.rounds):
                    for s in sides:
                        s.record("cold", *cold_round(s, base, r))
        finally:
            for s in sides:
                if s.env:
                    s.run("stop", check=False)
    report(sides)
    if args.json:
        args.json.write_text(json.dumps({s.name: {"times": s.times, "notes": s.notes} for s in sides}, indent=1))
    shutil.rmtree(base, ignore_errors=True)


def report(sides: list[Side]) -> None:
    labels = {
        "noop": "`backfill docs`, nothing pending",
        "small": "a 10-row backfill",
        "cold": "first backfill in a new home (starts the Prefect server)",
    }
    head = " | ".join(f"{s.name} wall s | {s.name} CPU s" for s in sides)
    print(f"| what | {head} |")
    print("|---|" + "---|" * (2 * len(sides)))
    for key, label in labels.items():
        cells = []
        for s in sides:
            got = s.times.get(key)
            if not got:
                cells += ["-", "-"]
                continue
            cells += [f"{statistics.median(w for w, _ in got):.2f}", f"{statistics.median(c for _, c in got):.2f}"]
        print(f"| {label} | " + " | ".join(cells) + " |")
    for s in sides:
        print(f"\n## {s.name}")
        for key, got in s.times.items():
            print(f"{key}: wall {[round(w, 2) for w, _ in got]} cpu {[round(c, 2) for _, c in got]}")
        for key, value in s.notes.items():
            if key == "refused":
                print(f"refused setting, console output:\n{value}")
            else:
                print(f"{key}: {value}")


if __name__ == "__main__":
    main()
