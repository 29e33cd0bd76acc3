"""How `edgectl status` shows why a device runs a model where it does: backend trial, variants and failover."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def format_ms(value: float | None) -> str:
    """Milliseconds as edgectl prints them everywhere: two decimals, or "-"."""
    return "-" if value is None else f"{value:.2f}"


def candidates_table(selection: dict[str, Any]) -> Table:
    """Every backend the agent tried: its timing, or why it was passed over."""
    table = Table("candidate", "precision", "p50 ms", "p95 ms", "load ms", "result", box=None, pad_edge=False)
    chosen = selection.get("backend")
    for c in selection.get("candidates") or []:
        if c.get("error"):
            result = f"[red]{c['error'][:160]}[/red]"
        elif c.get("name") == chosen:
            result = "[green]chosen[/green]"
        else:
            result = "agrees" if c.get("agreed") else "not run"
        table.add_row(
            f"    {c.get('name')}", c.get("precision", "full"), format_ms(c.get("p50_ms")), format_ms(c.get("p95_ms")),
            format_ms(c.get("load_ms")), result,
        )  # fmt: skip
    return table


def print_choice(console: Console, model: dict[str, Any]) -> None:
    """The backend choice with its reason and candidates, the variant choice, and any run-time failover."""
    selection = model.get("selection") or {}
    failover = model.get("failover") or {}
    if not selection and not failover:
        return
    name = f"{model.get('name')}@{model.get('version')}"
    if selection:
        cached = " (cached trial)" if selection.get("cached") else ""
        line = f"  {name} backend {selection.get('backend')}: {selection.get('reason')}{cached}"
        console.print(line, highlight=False)
        if selection.get("reference"):
            facts = f"precision {selection.get('precision', 'full')}, checked against {selection['reference']}"
            console.print(f"    {facts} on {selection.get('inputs', 'synthetic inputs')}", highlight=False)

        if selection.get("candidates"):
            console.print(candidates_table(selection))
        if selection.get("variants_trial_s") is not None:
            console.print(f"    variants timed on the device in {selection['variants_trial_s']} s", highlight=False)
        for v in selection.get("variants") or []:
            outcome = v.get("error") or f"p50 {format_ms(v.get('p50_ms'))} ms on {v.get('backend')}"
            if v.get("runoff_p50_ms") is not None:
                outcome += " (run-off)"
            console.print(f"    variant {v.get('variant')}: {outcome}", highlight=False)
    if failover.get("failed_over"):
        console.print(
            f"  [yellow]FAILOVER[/yellow] {name}: serving on {failover.get('active')} instead of "
            f"{failover.get('preferred')} ({failover.get('reason')}); re-checked periodically",
            highlight=False,
        )
    elif failover.get("failovers"):
        console.print(
            f"  {name}: back on {failover.get('preferred')} after {failover['failovers']} failover(s)", highlight=False
        )
