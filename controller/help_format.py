"""`edge-controller --help` that reads at 80 columns: click's plain layout (option names whole, help beside them in
one column of ~46 characters) instead of rich's boxed table, whose long option names left ~22 characters to the
help and cut names and URLs with `…`; lines break between words only, never inside `edge-controller`,
`--artifact-base-url` or a `[default: ...]`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

HYPHEN, SPACE = "\u2011", "\u00a0"  # non-breaking: textwrap splits only at ASCII spaces and plain hyphens


def protect(text: str, width: int) -> str:
    """Text whose hyphens, and `[default: X]` blocks that fit in `width`, cannot be split by click's wrapping."""
    text = text.replace("-", HYPHEN)
    out, rest = [], text
    while (start := rest.find("[default: ")) >= 0:
        end = rest.find("]", start)
        end = len(rest) if end < 0 else end + 1
        block = rest[start:end]
        out += [rest[:start], block.replace(" ", SPACE) if len(block) <= width else block]
        rest = rest[end:]
    return "".join([*out, rest])


def restore(text: str) -> str:
    return text.replace(HYPHEN, "-").replace(SPACE, " ")


HelpFormatter: Any = typer.Context.formatter_class  # click's, whichever click this typer runs on (its own since 0.2x)


class ReadableFormatter(HelpFormatter):
    """click's formatter with wrapping that keeps words (and defaults) whole."""

    def write_dl(self, rows: Iterable[tuple[str, str]], col_max: int = 30, col_spacing: int = 2) -> None:
        rows = list(rows)
        first_col = min(max((len(term) for term, _ in rows), default=0), col_max) + col_spacing
        room = max(self.width - first_col - 2, 10)  # what click's write_dl leaves to the help column
        start = len(self.buffer)
        super().write_dl([(term, protect(text, room)) for term, text in rows], col_max, col_spacing)
        self.buffer[start:] = [restore(part) for part in self.buffer[start:]]

    def write_text(self, text: str) -> None:
        start = len(self.buffer)
        super().write_text(protect(text, self.width - self.current_indent))
        self.buffer[start:] = [restore(part) for part in self.buffer[start:]]


class ReadableContext(typer.Context):
    formatter_class = ReadableFormatter


class ReadableCommand(TyperCommand):
    context_class = ReadableContext


class ReadableGroup(TyperGroup):
    context_class = ReadableContext
