"""`edgectl devices` and `edgectl status`: the fleet at a glance, and one device in detail."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from edgectl.choice_view import format_ms, print_choice
from edgectl.options import DEFAULT_CONTROLLER, ControllerOpt, JsonOpt, TokenOpt, client_for
from edgectl.output import ago, console, emit_json


def devices(controller: ControllerOpt = DEFAULT_CONTROLLER, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """List devices, whether they are online, and what each serves."""
    rows = client_for(controller, token).devices()
    if as_json:
        return emit_json(rows)
    table = Table("device", "online", "models", "hardware", "last seen")
    for d in rows:
        hw = d.get("hardware") or {}
        models = "\n".join(f"{m['name']}@{m['version']} {m['state']} {m.get('backend') or ''}" for m in d["models"])
        online = "[green]yes[/green]" if d["online"] else "[red]no[/red]"
        hardware = f"{hw.get('arch', '?')} {hw.get('cores', '?')} cores {hw.get('memory_mb', 0) / 1024:.1f} GiB"
        table.add_row(d["id"], online, models or "-", hardware, ago(d.get("last_seen")))
    console.print(table)


def status(
    device: Annotated[str, typer.Argument(help="Device id.")],
    controller: ControllerOpt = DEFAULT_CONTROLLER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One device in detail: hardware, and each model's state, backend and last error."""
    d = client_for(controller, token).device(device)
    if as_json:
        return emit_json(d)
    console.print(f"[bold]{d['id']}[/bold] {'online' if d['online'] else 'OFFLINE'}, last seen {ago(d['last_seen'])}")
    console.print(f"  agent {d.get('agent_version') or '?'}, inference API {d.get('api_url') or '?'}")
    for key, value in (d.get("hardware") or {}).items():
        console.print(f"  {key}: {value}")
    console.print(models_table(d["models"]))
    for m in d["models"]:
        print_choice(console, m)
    for tm in (d.get("telemetry") or {}).get("models") or []:
        console.print(telemetry_line(tm), highlight=False)


def models_table(models: list[dict[str, Any]]) -> Table:
    """Each model on the device: target version and state, what serves, what served before, the last error."""
    table = Table("model", "version", "state", "backend", "serving", "previous", "reason")
    for m in models:
        state = m["state"] + (f" {m['progress']:.0%}" if m["state"] == "downloading" else "")
        table.add_row(
            m["name"],
            m["version"],
            state,
            m.get("backend") or "",
            (m.get("serving") or {}).get("version", "-"),
            (m.get("previous") or {}).get("version", "-"),
            (m.get("reason") or {}).get("message", ""),
        )
    return table


def telemetry_line(tm: dict[str, Any]) -> str:
    """One model's latest latency and throughput, with any output flagged as drifting."""
    line = f"  {tm['name']}@{tm['version']}: p50 {format_ms(tm.get('p50_ms'))} ms"
    line += f", p95 {format_ms(tm.get('p95_ms'))} ms"
    line += f", {tm.get('requests_per_s') or 0:.1f} req/s"
    for output, drift in (tm.get("drift") or {}).items():
        if drift.get("flagged"):
            line += f"; [red]DRIFT[/red] {output}: mean {drift['mean']:.4g} vs baseline {drift['baseline_mean']:.4g}"
            line += f" ({drift['score']:.1f} std)"
    return line


COMMANDS = (devices, status)
