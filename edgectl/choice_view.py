"""How `edgectl status` shows why a device runs a model where it does: backend trial, variants, failover, and the
shadow check of its last update."""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.text import Text

from edgectl.tables import Col, FitTable
from protocol import Failover, Selection, Shadow


def format_ms(value: float | None) -> str:
    """Milliseconds as edgectl prints them everywhere: two decimals (`<0.01` below that, never a `0.00` that was
    not zero), or "-"."""
    if value is None:
        return "-"
    return "<0.01" if 0 < value < 0.005 else f"{value:.2f}"


_MS = re.compile(r"\b(\d+\.\d+) ms\b")


def reason_text(backend: str | None, reason: str | None) -> str:
    """An agent's reason as edgectl shows it under `NAME backend BACKEND:`: without the backend's name again at its
    start, and its milliseconds in format_ms's decimals (the agent writes them as measured: `0.0088 ms`)."""
    reason = reason or ""
    if backend and reason.startswith(f"{backend}: "):
        reason = reason[len(backend) + 2 :]
    return _MS.sub(lambda m: f"{format_ms(float(m.group(1)))} ms", reason)


def say(console: Console, text: str, indent: int = 2, markup: bool = False) -> None:
    """One fact of the detail view: wrapped to the console, every wrapped line under the first's text (hanging
    indent) instead of back at column 0."""
    body = Text.from_markup(text) if markup else Text(text)
    width = max(console.width - indent - 2, 20)
    for n, line in enumerate(body.wrap(console, width)):
        console.print(Text(" " * (indent if n == 0 else indent + 2)) + line, highlight=False)


CANDIDATE_COLUMNS = (Col("candidate", 0), Col("precision", 2), Col("p50 ms", 1, justify="right"),
                     Col("p95 ms", 2, justify="right"), Col("load ms", 3, justify="right"),
                     Col("result", 0, flex=True))  # fmt: skip


def candidates_table(selection: Selection) -> FitTable:
    """Every backend the agent tried: its timing, or why it was passed over (its first line; --json has all)."""
    rows = []
    for c in selection.candidates:
        if c.error:
            result = f"[red]{escape(' '.join(c.error.split()))}[/red]"
        elif c.name == selection.backend:
            result = "[green]chosen[/green]"
        else:
            result = "agrees" if c.agreed else "not run"
        rows.append([
            escape(c.name or "-"), c.precision or "full", format_ms(c.p50_ms), format_ms(c.p95_ms),
            format_ms(c.load_ms), result,
        ])  # fmt: skip
    return FitTable(CANDIDATE_COLUMNS, rows)


def print_selection(console: Console, name: str, selection: Selection) -> None:
    """The backend chosen and why, what it was checked against, its candidates, and the variants timed."""
    cached = " (cached trial)" if selection.cached else ""
    say(console, f"{name} backend {selection.backend}: {reason_text(selection.backend, selection.reason)}{cached}")
    if selection.reference:
        facts = f"precision {selection.precision or 'full'}, checked against {selection.reference}"
        say(console, f"{facts} on {selection.inputs or 'synthetic inputs'}", indent=4)
    if selection.candidates:
        console.print(Padding(candidates_table(selection), (0, 0, 0, 4)))  # the whole table indented, header too
    if selection.variants_trial_s is not None:
        say(console, f"variants timed on the device in {selection.variants_trial_s:.1f} s", indent=4)
    for v in selection.variants:
        outcome = v.error or f"p50 {format_ms(v.p50_ms)} ms on {v.backend}"
        if v.runoff_p50_ms is not None:
            outcome += " (run-off)"
        say(console, f"variant {v.variant}: {reason_text(None, outcome)}", indent=4)
    for label, note in (("live shapes", selection.live), ("after a runtime change", selection.retrial)):
        if note:
            say(console, f"re-selection {label}: {reason_text(None, note)}", indent=4)


def print_shadow(console: Console, name: str, shadow: Shadow) -> None:
    """The check beside the serving version before the swap: the figures and the verdict."""
    if not shadow.pairs:
        say(console, f"{name} shadow check: no input ran on both versions; {shadow.verdict}")
        return
    agreement = f", answers alike on {shadow.agreement:.0%}" if shadow.agreement is not None else ""
    say(
        console,
        f"{name} shadow check beside version {shadow.against} on {shadow.pairs} {shadow.inputs} inputs: "
        f"p50 {format_ms(shadow.p50_ms)} vs {format_ms(shadow.serving_p50_ms)} ms, "
        f"p95 {format_ms(shadow.p95_ms)} vs {format_ms(shadow.serving_p95_ms)} ms{agreement}: "
        f"{reason_text(None, shadow.verdict)}",
    )


def print_failover(console: Console, name: str, failover: Failover) -> None:
    """A model serving on a fallback backend, or back on its preferred one after failing over."""
    if failover.failed_over:
        say(
            console,
            f"[yellow]FAILOVER[/yellow] {escape(name)}: serving on {escape(str(failover.active))} instead of "
            f"{escape(str(failover.preferred))} ({escape(reason_text(None, str(failover.reason)))}); "
            "re-checked periodically",
            markup=True,
        )
    elif failover.failovers:
        say(console, f"{name}: back on {failover.preferred} after {failover.failovers} failover(s)")


def print_choice(console: Console, model: dict[str, Any]) -> None:
    """The backend choice with its reason and candidates, the variant choice, and any run-time failover (from the
    controller API's JSON of one model on a device)."""
    name = f"{model.get('name')}@{model.get('version')}"
    if model.get("selection"):
        print_selection(console, name, Selection.model_validate(model["selection"]))
    if model.get("failover"):
        print_failover(console, name, Failover.model_validate(model["failover"]))
    if model.get("shadow"):
        print_shadow(console, name, Shadow.model_validate(model["shadow"]))
