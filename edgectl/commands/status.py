"""`edgectl devices` and `edgectl status`: the fleet at a glance, and one device in detail."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from edgectl.choice_view import format_ms, print_choice
from edgectl.errors import CommandFailed
from edgectl.options import DEFAULT_CONTROLLER, ControllerOpt, JsonOpt, TokenOpt, client_for
from edgectl.output import Settings, ago, console, emit_json, shown, yes_no
from edgectl.tables import Col, FitTable

DEVICE_COLUMNS = (Col("device", 0), Col("online", 0), Col("models", 1, flex=True), Col("last seen", 1),
                  Col("hardware", 3))  # fmt: skip
MODEL_COLUMNS = (Col("model", 0), Col("version", 1), Col("state", 0), Col("backend", 2), Col("serving", 1),
                 Col("previous", 3), Col("reason", 0, flex=True))  # fmt: skip
STATE_COLOURS = {"serving": "green", "failed": "red", "removed": "yellow"}


def devices(
    select: Annotated[
        list[str] | None,
        typer.Option("--select", "-l", help="Only devices with this label, KEY=VALUE (repeatable: all must hold)."),
    ] = None,
    controller: ControllerOpt = DEFAULT_CONTROLLER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List devices, whether they are online, and what each serves (--select: by label)."""
    rows = client_for(controller, token).devices(select)
    if as_json:
        return emit_json(rows)
    table = []
    for d in rows:
        hw = d.get("hardware") or {}
        models = "\n".join(f"{m['name']}@{m['version']} {m['state']} {m.get('backend') or ''}".rstrip()
                           for m in d["models"])  # fmt: skip
        online = f"[green]{yes_no(True)}[/green]" if d["online"] else f"[red]{yes_no(False)}[/red]"
        hardware = f"{hw.get('arch', '?')} {hw.get('cores', '?')} cores {hw.get('memory_mb', 0) / 1024:.1f} GiB"
        table.append([escape(d["id"]), online, escape(models) or "-", ago(d.get("last_seen")), hardware])
    console.print(FitTable(DEVICE_COLUMNS, table))
    return None


def status(
    device: Annotated[str, typer.Argument(help="Device id.")],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Show this model in full: state, whole reason, backend choice.")
    ] = None,
    controller: ControllerOpt = DEFAULT_CONTROLLER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One device in detail: hardware, and each model's state, backend and last error (--model for one in full)."""
    d = client_for(controller, token).device(device)
    if model is not None:
        d = {**d, "models": [m for m in d["models"] if m["name"] == model]}
        if not d["models"]:
            raise CommandFailed(f"{device} has no model {model!r}; `edgectl status {device}` lists its models")
    if as_json:
        return emit_json(d)
    state = "online" if d["online"] else "[red]OFFLINE[/red]"
    console.print(f"[bold]{escape(d['id'])}[/bold] {state}, last seen {ago(d['last_seen'])}", highlight=False)
    agent = f"agent {d.get('agent_version') or '-'}, inference API {d.get('api_url') or '-'}"
    console.print(f"  {escape(agent)}", highlight=False)
    if model is None:
        print_hardware(d.get("hardware") or {})
        console.print(models_table(d["models"]))
        explain_reasons(d["id"], d["models"])
    else:
        print_model(d["models"][0])
    for m in d["models"]:
        print_choice(console, m)
    for tm in (d.get("telemetry") or {}).get("models") or []:
        if model is None or tm.get("name") == model:
            console.print(telemetry_line(tm), highlight=False)
    return None


def print_hardware(hardware: dict[str, Any]) -> None:
    """`key: value` per fact the probe found; facts it did not find (None, empty) are left out."""
    for key, value in hardware.items():
        text = shown(value)
        if text is not None:
            console.print(f"  {key}: {escape(text)}", highlight=False)


def state_cell(m: dict[str, Any]) -> str:
    state = m["state"] + (f" {m['progress']:.0%}" if m["state"] == "downloading" else "")
    colour = STATE_COLOURS.get(m["state"])
    return f"[{colour}]{state}[/{colour}]" if colour else state


def model_row(m: dict[str, Any]) -> list[str]:
    """Each model on the device: target version and state, what serves, what served before, the last error."""
    return [
        escape(m["name"]),
        escape(m["version"]),
        state_cell(m),
        escape(m.get("backend") or "-"),
        escape((m.get("serving") or {}).get("version") or "-"),
        escape((m.get("previous") or {}).get("version") or "-"),
        escape((m.get("reason") or {}).get("message") or "-"),
    ]


def models_table(models: list[dict[str, Any]]) -> FitTable:
    """The models of a device as a table as wide as the console it is printed on."""
    return FitTable(MODEL_COLUMNS, [model_row(m) for m in models])


def explain_reasons(device: str, models: list[dict[str, Any]]) -> None:
    """Where the whole reason of a model is: in full with --verbose, else the command that shows it."""
    with_reason = [m for m in models if (m.get("reason") or {}).get("message")]
    if Settings.verbose:
        for m in with_reason:
            console.print(f"  {escape(m['name'])}@{escape(m['version'])}: {escape(m['reason']['message'])}")
    elif with_reason:
        console.print(f"  whole reason: edgectl status {device} --model {with_reason[0]['name']}", highlight=False)


def print_model(m: dict[str, Any]) -> None:
    """One model in full: every field an operator acts on, and the reason unabridged."""
    reason = m.get("reason") or {}
    facts = {
        "model": f"{m['name']}@{m['version']}",
        "state": state_cell(m),
        "backend": m.get("backend"),
        "serving": (m.get("serving") or {}).get("version"),
        "previous": (m.get("previous") or {}).get("version"),
        "reason code": reason.get("code"),
        "reason": reason.get("message"),
    }
    for key, value in facts.items():
        if value:
            console.print(f"  {key + ':':<13}{value if key == 'state' else escape(str(value))}", highlight=False)


def telemetry_line(tm: dict[str, Any]) -> str:
    """One model's latest latency and throughput, with any output flagged as drifting."""
    line = f"  {tm['name']}@{tm['version']}: p50 {format_ms(tm.get('p50_ms'))} ms"
    line += f", p95 {format_ms(tm.get('p95_ms'))} ms"
    line += f", {tm.get('requests_per_s') or 0:.1f} req/s"
    for output, drift in (tm.get("drift") or {}).items():
        if drift.get("flagged"):
            line += f"; [red]DRIFT[/red] {output}: mean {drift['mean']:.4g} vs baseline {drift['baseline_mean']:.4g}"
            line += f" ({drift['score']:.1f} std)"
    quality = tm.get("quality") or {}
    if quality.get("flagged"):
        line += f"; [red]DRIFT[/red] {escape('; '.join(quality['moved'][:2]))}"
    elif quality.get("state"):
        line += f"; quality {quality['state']}"
    return line


COMMANDS = (devices, status)
