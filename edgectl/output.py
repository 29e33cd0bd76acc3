"""Where edgectl writes: tables and text on stdout, progress and problems on stderr, --json as indented JSON."""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any

from rich.console import Console

console = Console()
errors = Console(stderr=True)


class Settings:
    """What the root command's flags set for every command: --verbose shows full reasons instead of their first
    line; EDGECTL_DEBUG=1 shows the traceback of an unexpected error."""

    verbose = False


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def ago(ts: float | None) -> str:
    """`12s ago`, `3m ago`, or `never`."""
    if not ts:
        return "never"
    seconds = max(0, time.time() - ts)
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


# where a reason's fix starts: a command to run, kept whole when the reason is cut
FIX_START = re.compile(r"(?:pip install |`edgectl |`edge-controller |`edge-agent )")


def brief(text: str, room: int | None = None) -> str:
    """A reason as a table or a progress line shows it: its first line, cut to `room` cells (default: the terminal's
    width), the middle cut rather than a fix at its end (`...: pip install 'edgefleet[convert]'`); the whole of it
    with --verbose."""
    from rich.cells import cell_len

    from edgectl.tables import clip

    flat = " ".join(text.split())
    width = room or console.width
    if Settings.verbose or cell_len(flat) <= width:
        return flat
    cause, fix = split_fix(flat)
    if fix and cell_len(fix) <= width - 12:  # room for the cause's first words too
        return clip(cause, width - cell_len(fix) - 1) + " " + fix
    return clip(flat, width)


def split_fix(text: str) -> tuple[str, str]:
    """A reason as (cause, the command that fixes it), the fix '' when it names none."""
    flat = " ".join(text.split())
    starts = [m.start() for m in FIX_START.finditer(flat)]
    if not starts:
        return flat, ""
    return flat[: starts[-1]].rstrip(), flat[starts[-1] :]


def size_text(n: int | None) -> str:
    """A file size as every command prints it, in the unit that keeps its figures (`5.7 kB`, not `0.0 MB`)."""
    if n is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if unit == "kB" else f"{n / scale:.2f} {unit}"
    return f"{n} B"


def plural(count: int, word: str, many: str | None = None) -> str:
    """`1 sample`, `8 samples` (`many` where adding an s is wrong): a count as an operator reads it, never
    `sample(s)`."""
    return f"{count} {word if count == 1 else many or word + 's'}"


def yes_no(value: object) -> str:
    """The one spelling of a boolean in human output (JSON keeps true/false)."""
    return "yes" if value else "no"


def shown(value: Any) -> str | None:
    """A value as an operator reads it: None is left out (None returned), booleans are yes/no, lists and dicts are
    comma-separated; never a Python repr."""
    if value is None or value == [] or value == {}:
        return None
    if isinstance(value, bool):
        return yes_no(value)
    if isinstance(value, list | tuple):
        return ", ".join(str(shown(v) or "-") for v in value)
    if isinstance(value, dict):
        items = ((k, shown(v)) for k, v in value.items())
        return ", ".join(f"{k} {v}" for k, v in items if v is not None) or None
    return str(value)


def verdict(variant: dict[str, Any]) -> str:
    """A built variant's verdict, coloured: pass, below its threshold, or failed to build."""
    if variant["passed"]:
        return "[green]pass[/green]"
    return "[yellow]below[/yellow]" if variant["ok"] else "[red]failed[/red]"
