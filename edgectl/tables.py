"""Tables that read at any terminal width: columns dropped by priority, one flexible column clipped to one line per
entry, and a vertical layout (one `field: value` block per row) when even the essential columns do not fit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

GAP = 3  # what rich puts between two columns of a SIMPLE_HEAD table without edges: padding, divider, padding
FLEX_MIN = 32  # narrowest a flexible column (a reason) gets before lower-priority columns are dropped for it


@dataclass(frozen=True)
class Col:
    """A column: `priority` 0 is never dropped, higher numbers go first when the terminal is narrow; a `flex` column
    takes the room left and its entries are clipped to one line each (the full text is behind --json / --verbose)."""

    header: str
    priority: int = 1
    flex: bool = False
    justify: Literal["left", "right"] = "left"


def plain_width(cell: str) -> int:
    """Widest line of a cell written in rich markup, in terminal cells."""
    return max((cell_len(line) for line in Text.from_markup(cell).plain.split("\n")), default=0)


def clip(text: str, width: int) -> str:
    """One line of at most `width` cells: whitespace collapsed, the end cut with `…` when too long."""
    flat = " ".join(text.split())
    if cell_len(flat) <= width:
        return flat
    out = ""
    for char in flat:
        if cell_len(out + char) > width - 1:
            break
        out += char
    return out.rstrip() + "…"


def clip_text(text: Text, width: int) -> Text:
    """Each line of a styled text cut to `width` cells with `…`, styles kept."""
    lines = []
    for line in text.split("\n"):
        if line.cell_len > width:
            line.truncate(width, overflow="ellipsis")
        lines.append(line)
    return Text("\n").join(lines)


def _widths(cols: Sequence[Col], rows: Sequence[Sequence[str]]) -> list[int]:
    return [max([cell_len(c.header), *(plain_width(r[i]) for r in rows)]) for i, c in enumerate(cols)]


def layout(cols: Sequence[Col], rows: Sequence[Sequence[str]], width: int) -> tuple[list[int], dict[int, int]] | None:
    """The columns kept (indices) and the width of the flexible ones, or None when the essential ones do not fit."""
    natural = _widths(cols, rows)
    kept = list(range(len(cols)))

    def need(indices: list[int]) -> int:
        fixed = sum(min(natural[i], max(FLEX_MIN, cell_len(cols[i].header))) if cols[i].flex else natural[i]
                    for i in indices)  # fmt: skip
        return fixed + GAP * (len(indices) - 1)

    while need(kept) > width:
        droppable = [i for i in kept if cols[i].priority > 0]
        if not droppable:
            return None
        kept.remove(max(droppable, key=lambda i: (cols[i].priority, i)))
    flex = [i for i in kept if cols[i].flex]
    room = width - sum(natural[i] for i in kept if not cols[i].flex) - GAP * (len(kept) - 1)
    widths = {i: max(min(natural[i], room // max(len(flex), 1)), cell_len(cols[i].header)) for i in flex}
    return kept, widths


class FitTable:
    """A table laid out when printed, for the width of the console it is printed on."""

    def __init__(self, cols: Sequence[Col], rows: Sequence[Sequence[str]], title: str | None = None) -> None:
        self.cols, self.rows, self.title = cols, rows, title

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield fit_table(self.cols, self.rows, options.max_width, self.title)


def fit_table(
    cols: Sequence[Col], rows: Sequence[Sequence[str]], width: int, title: str | None = None
) -> RenderableType:
    """The rows (rich markup cells) as a table no wider than `width`; a vertical layout when it cannot be one."""
    plan = layout(cols, rows, width)
    if plan is None:
        return vertical(cols, rows, width, title)
    kept, flex = plan
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title=title, title_justify="left")
    for i in kept:
        table.add_column(cols[i].header, justify=cols[i].justify, no_wrap=True, overflow="ellipsis")
    for row in rows:
        cells = []
        for i in kept:
            if i in flex:
                cells.append(clip_text(Text.from_markup(row[i]), flex[i]))
            else:
                cells.append(Text.from_markup(row[i]))
        table.add_row(*cells)
    dropped = [cols[i].header for i in range(len(cols)) if i not in kept]
    if dropped:
        table.caption = f"not shown at this width: {', '.join(dropped)} (--json has every field)"
        table.caption_justify = "left"
    return table


def vertical(cols: Sequence[Col], rows: Sequence[Sequence[str]], width: int, title: str | None) -> RenderableType:
    """One block per row, one `field: value` line per column: readable however narrow the terminal is."""
    label = max(cell_len(c.header) for c in cols) + 2
    parts: list[RenderableType] = [Text(title, style="bold")] if title else []
    for n, row in enumerate(rows):
        if n:
            parts.append(Text(""))
        for col, cell in zip(cols, row, strict=True):
            value = Text.from_markup(cell)
            if col.flex:
                value = Text(clip(value.plain, max(width - label, 8)))
            parts.append(Text(f"{col.header + ':':<{label}}") + value)
    return Group(*parts)
