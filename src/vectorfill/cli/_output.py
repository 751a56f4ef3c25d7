"""What the commands print: the two consoles and the tables and reports more than one
command shows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:  # the modules themselves are imported by the commands that need them
    from vectorfill.jobs.check import CheckReport
    from vectorfill.jobs.search import Hit

__all__ = [
    "err",
    "error_block",
    "failed_line",
    "note",
    "out",
    "print_check",
    "print_error",
    "print_hits",
    "print_summary",
]

out = Console(markup=False)
"""Results: what a script reads (``--json`` goes here, and nothing else then)."""
err = Console(stderr=True, markup=False)
"""Progress, notes, warnings and errors.

Neither console reads markup: what is printed is printed as it is (a ``[local]`` in a help
text, a message or a server's answer stays), and styles are given with ``style=``."""


def note(message: str) -> None:
    err.print(message, style="dim")


def error_block(exc: BaseException) -> list[str]:
    """The lines of the one block an error prints, as plain text: ``error: job 'J': <reason>``
    (the same greppable first line as ever) and, when the error knows them, the setting at
    fault and the fix. Works for any :class:`~vectorfill.errors.VectorfillError` (its
    ``job``, ``setting`` and ``fix``), including subclasses added later; anything else
    prints its message."""
    lines = [f"error: {str(exc) or type(exc).__name__}"]
    for label in ("setting", "fix"):
        value = getattr(exc, label, None)
        if value:
            lines.append(f"  {label + ':':<8} {value}")
    return lines


def print_error(exc: BaseException, *, verbose: bool = False, label: str = "error", style: str = "red") -> None:
    """Print an error once, as one block on stderr (:func:`error_block`); with ``verbose``,
    its traceback first."""
    if verbose:
        import traceback

        err.print("".join(traceback.format_exception(exc)).rstrip(), highlight=False, soft_wrap=True)
    first, *rest = error_block(exc)
    err.print(Text.assemble((f"{label}:", style), first.removeprefix("error:")), highlight=False, soft_wrap=True)
    for line in rest:
        err.print(line, highlight=False, soft_wrap=True)


def print_summary(s) -> None:
    """A backfill's summary (:class:`vectorfill.tasks.report.RunSummary`) as a table."""
    table = Table(title=f"backfill {s.job}", show_header=False)
    for key, value in s.as_dict().items():
        if key != "job":
            table.add_row(key.replace("_", " "), f"{value:,}" if isinstance(value, int) else str(value))
    out.print(table)
    if s.failed_total:
        out.print(failed_line(s.job, s.failed, s.failed_total))
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


def failed_line(job: str, this_run: int, in_all: int) -> str:
    """What a summary says of failed rows: how many failed in this run, how many are from
    earlier runs (still failed: nothing retries them by itself), and where to see them."""
    earlier = max(in_all - this_run, 0)
    said = [f"{this_run:,} rows failed in this run"] if this_run else []
    if earlier:
        said.append(f"{earlier:,} rows failed in earlier runs")
    return "; ".join(said) + f": `vectorfill failures {job}` lists them, `vectorfill retry {job}` queues them again"


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
        mark = ("ok  ", "green") if line.ok else ("FAIL", "red")
        out.print(Text.assemble("  ", mark, f" {line.what}: {line.detail}"), highlight=False, soft_wrap=True)
    if report.ok:
        out.print("  a backfill would work")
    else:
        out.print(
            Text.assemble(
                ("  a backfill would not work:", "red"), " fix the setting above (`vectorfill check` again after)"
            )
        )
