"""What the commands print: the two consoles and the tables and reports more than one
command shows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # the modules themselves are imported by the commands that need them
    from vectorfill.jobs.check import CheckReport
    from vectorfill.jobs.search import Hit

__all__ = ["err", "note", "out", "print_check", "print_hits", "print_summary"]

out = Console()
"""Results: what a script reads (``--json`` goes here, and nothing else then)."""
err = Console(stderr=True)
"""Progress, notes, warnings and errors."""


def note(message: str) -> None:
    err.print(f"[dim]{message}[/]")


def print_summary(s) -> None:
    """A backfill's summary (:class:`vectorfill.tasks.report.RunSummary`) as a table."""
    table = Table(title=f"backfill {s.job}", show_header=False)
    for key, value in s.as_dict().items():
        if key != "job":
            table.add_row(key.replace("_", " "), f"{value:,}" if isinstance(value, int) else str(value))
    out.print(table)
    if s.failed_total:
        out.print(f"{s.failed_total} rows failed: `vectorfill failures {s.job}` lists them")
    if s.maybe_truncated:
        out.print(
            f"{s.maybe_truncated} rows may have been truncated by the server: they are longer than "
            f"{s.job}'s model may take, and its input limit is not known here (the server refused none). "
            f"If it cuts long inputs silently, their vectors cover only their start: set the limit "
            f"(`vectorfill job create ... --max-input-tokens N`) or chunk them (--chunker recursive)"
        )
    if s.batches_open:
        out.print(
            f"{s.batches_open} batch(es) still running at the provider: `vectorfill batches {s.job}` shows them; "
            f"the next `vectorfill backfill {s.job}` collects them"
        )


def print_hits(query: str, hits: list[Hit]) -> None:
    chunked = any(h.chunk_seq for h in hits) or any(h.chunk is not None and h.chunk != h.text for h in hits)
    table = Table("id", *(["chunk"] if chunked else []), "distance", "text", title=f"“{query}”")
    for h in hits:
        snippet = " ".join(((h.chunk if chunked else h.text) or h.text or "").split())[:100]
        table.add_row(str(h.id), *([str(h.chunk_seq)] if chunked else []), f"{h.distance:.4f}", snippet)
    out.print(table)


def print_check(report: CheckReport) -> None:
    version = f" v{report.version}" if report.version is not None else ""
    out.print(f"check {report.job}{version}: {report.model} at {report.base_url}")
    for line in report.lines:
        mark = "[green]ok[/]  " if line.ok else "[red]FAIL[/]"
        out.print(f"  {mark} {line.what}: {line.detail}", highlight=False, soft_wrap=True)
    if report.ok:
        out.print("  a backfill would work")
    else:
        out.print("  [red]a backfill would not work:[/] fix the setting above (`vectorfill check` again after)")
