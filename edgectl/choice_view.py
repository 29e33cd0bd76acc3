"""How `edgectl status` shows why a device runs a model where it does: backend trial, variants, failover, and the
shadow check of its last update."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape

from edgectl.tables import Col, FitTable
from protocol import Failover, Selection, Shadow


def format_ms(value: float | None) -> str:
    """Milliseconds as edgectl prints them everywhere: two decimals, or "-"."""
    return "-" if value is None else f"{value:.2f}"


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
            f"    {escape(c.name or '-')}", c.precision or "full", format_ms(c.p50_ms), format_ms(c.p95_ms),
            format_ms(c.load_ms), result,
        ])  # fmt: skip
    return FitTable(CANDIDATE_COLUMNS, rows)


def print_selection(console: Console, name: str, selection: Selection) -> None:
    """The backend chosen and why, what it was checked against, its candidates, and the variants timed."""
    cached = " (cached trial)" if selection.cached else ""
    console.print(f"  {name} backend {selection.backend}: {selection.reason}{cached}", highlight=False)
    if selection.reference:
        facts = f"precision {selection.precision or 'full'}, checked against {selection.reference}"
        console.print(f"    {facts} on {selection.inputs or 'synthetic inputs'}", highlight=False)
    if selection.candidates:
        console.print(candidates_table(selection))
    if selection.variants_trial_s is not None:
        console.print(f"    variants timed on the device in {selection.variants_trial_s} s", highlight=False)
    for v in selection.variants:
        outcome = v.error or f"p50 {format_ms(v.p50_ms)} ms on {v.backend}"
        if v.runoff_p50_ms is not None:
            outcome += " (run-off)"
        console.print(f"    variant {v.variant}: {outcome}", highlight=False)
    for label, note in (("live shapes", selection.live), ("after a runtime change", selection.retrial)):
        if note:
            console.print(f"    re-selection {label}: {note}", highlight=False)


def print_shadow(console: Console, name: str, shadow: Shadow) -> None:
    """The check beside the serving version before the swap: the figures and the verdict."""
    if not shadow.pairs:
        console.print(f"  {name} shadow check: no input ran on both versions; {shadow.verdict}", highlight=False)
        return
    agreement = f", answers alike on {shadow.agreement:.0%}" if shadow.agreement is not None else ""
    console.print(
        f"  {name} shadow check beside version {shadow.against} on {shadow.pairs} {shadow.inputs} inputs: "
        f"p50 {format_ms(shadow.p50_ms)} vs {format_ms(shadow.serving_p50_ms)} ms, "
        f"p95 {format_ms(shadow.p95_ms)} vs {format_ms(shadow.serving_p95_ms)} ms{agreement}: {shadow.verdict}",
        highlight=False,
    )


def print_failover(console: Console, name: str, failover: Failover) -> None:
    """A model serving on a fallback backend, or back on its preferred one after failing over."""
    if failover.failed_over:
        console.print(
            f"  [yellow]FAILOVER[/yellow] {name}: serving on {failover.active} instead of "
            f"{failover.preferred} ({failover.reason}); re-checked periodically",
            highlight=False,
        )
    elif failover.failovers:
        console.print(f"  {name}: back on {failover.preferred} after {failover.failovers} failover(s)", highlight=False)


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
