"""Where edgectl writes: tables and text on stdout, progress and problems on stderr, --json as indented JSON."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from rich.console import Console

console = Console()
errors = Console(stderr=True)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def ago(ts: float | None) -> str:
    """`12s ago`, `3m ago`, or `never`."""
    if not ts:
        return "never"
    seconds = max(0, time.time() - ts)
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def verdict(variant: dict[str, Any]) -> str:
    """A built variant's verdict, coloured: pass, below its threshold, or failed to build."""
    if variant["passed"]:
        return "[green]pass[/green]"
    return "[yellow]below[/yellow]" if variant["ok"] else "[red]failed[/red]"
