"""`edgectl telemetry`, `edgectl top` and `edgectl drift`: one device's telemetry over time, a live table of the
fleet, and quality drift (verdicts, a new baseline, a model compared across devices)."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.text import Text

from edgectl.choice_view import format_ms
from edgectl.commands.status import state_cell
from edgectl.keys import key_presses, wait_or_quit
from edgectl.options import DEFAULT_CONTROLLER, ControllerOpt, JsonOpt, TokenOpt, client_for
from edgectl.output import console, emit_json, plural
from edgectl.tables import Col, FitTable

TOP_COLUMNS = (
    Col("device", 0),
    Col("online", 0),
    Col("model@version", 0),
    Col("state", 0),
    Col("backend", 3),
    Col("p50 ms", 1, justify="right"),
    Col("p95 ms", 2, justify="right"),
    Col("req/s", 1, justify="right"),
    Col("CPU", 2, justify="right"),
    Col("mem", 2, justify="right"),
    Col("temp", 3, justify="right"),
)
HISTORY_COLUMNS = (Col("time", 0), Col("model@version", 0), Col("requests", 1, justify="right"),
                   Col("errors", 0, justify="right"), Col("req/s", 2, justify="right"),
                   Col("p50 ms", 1, justify="right"), Col("p95 ms", 2, justify="right"),
                   Col("p99 ms", 3, justify="right"), Col("max ms", 3, justify="right"), Col("CPU", 2, justify="right"),
                   Col("mem", 3, justify="right"))  # fmt: skip


def _percent(resources: dict[str, Any], key: str) -> str:
    return f"{resources[key]:.0f}%" if resources.get(key) is not None else "-"


def _rate(entry: dict[str, Any]) -> str:
    return f"{entry['requests_per_s']:.1f}" if entry.get("requests_per_s") is not None else "-"


def _state(model: dict[str, Any]) -> str:
    """A model's state as `edgectl status` colours it: a failed model never reads like an idle serving one."""
    return state_cell(model) if model.get("state") else "-"


def _telemetry_rows(device: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per model (or one for a device without models): the columns of `edgectl top`."""
    t = device.get("telemetry") or {}
    res = t.get("resources") or {}
    by_name = {m["name"]: m for m in t.get("models") or []}
    online = "[green]yes[/green]" if device["online"] else "[red]no[/red]"
    temp = f"{res['temperature_c']:.0f}°C" if res.get("temperature_c") is not None else "-"
    rows: list[tuple[str, ...]] = []
    for m in device.get("models") or [{}]:
        tm = by_name.get(m.get("name"), {})
        serving = (m.get("serving") or {}).get("version") or m.get("version")
        model = f"{m['name']}@{serving}" if m else "-"
        quality = tm.get("quality") or {}
        psi = f" PSI {quality['score']:.2g}" if quality.get("flagged") else ""
        drift = f" [red]drift{psi}[/red]" if tm.get("drifting") else ""
        rows.append((
            device["id"], online, model + drift, _state(m), m.get("backend") or "-", format_ms(tm.get("p50_ms")),
            format_ms(tm.get("p95_ms")), _rate(tm), _percent(res, "cpu_percent"), _percent(res, "mem_percent"), temp,
        ))  # fmt: skip
    return rows


def top_table(fleet: list[dict[str, Any]]) -> FitTable:
    return FitTable(TOP_COLUMNS, [list(row) for device in fleet for row in _telemetry_rows(device)])


def live_screen(fleet: list[dict[str, Any]], interval: float) -> RenderableType:
    """The live table and, under it, how to leave it."""
    return Group(top_table(fleet), Text(f"refreshed every {interval:g}s; q or Ctrl-C quits", style="dim"))


def history_table(samples: list[dict[str, Any]]) -> FitTable:
    """One row per model per telemetry sample: counts, latency percentiles, and the box's CPU and memory."""
    table: list[list[str]] = []
    for s in samples:
        res = s.get("resources") or {}
        when = time.strftime("%H:%M:%S", time.localtime(s["ts"]))
        for m in s.get("models") or [{}]:
            table.append(
                [
                    when,
                    f"{m['name']}@{m['version']}" if m else "-",
                    str(m.get("requests", 0)),
                    str(m.get("errors", 0)),
                    _rate(m),
                    format_ms(m.get("p50_ms")),
                    format_ms(m.get("p95_ms")),
                    format_ms(m.get("p99_ms")),
                    format_ms(m.get("latency_max_ms") if m else None),
                    _percent(res, "cpu_percent"),
                    _percent(res, "mem_percent"),
                ]
            )
    return FitTable(HISTORY_COLUMNS, table)


def span(samples: list[dict[str, Any]], asked: str, since: float) -> str:
    """What the table covers, from its own first and last rows (the window asked for starts before the first
    sample, and a header giving its start read as if that row were missing)."""
    clock = lambda ts: time.strftime("%H:%M:%S", time.localtime(ts))  # noqa: E731
    window = f"the last {asked}" if asked[:1].isdigit() and not asked.isdigit() else f"since {clock(since)}"
    if not samples:
        return f"no samples in {window}"
    first, last = min(s["ts"] for s in samples), max(s["ts"] for s in samples)
    return f"{plural(len(samples), 'sample')} from {clock(first)} to {clock(last)} (asked: {window})"


def telemetry(
    device: Annotated[str, typer.Argument(help="Device id.")],
    since: Annotated[str, typer.Option(help="How far back: 30s, 10m, 2h, 1d, or epoch seconds.")] = "10m",
    controller: ControllerOpt = DEFAULT_CONTROLLER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A device's telemetry over time: latency per model, throughput, errors, CPU, memory, temperature."""
    data = client_for(controller, token).telemetry(device, since)
    if as_json:
        return emit_json(data)
    samples = data["samples"]
    console.print(f"[bold]{escape(device)}[/bold]: {span(samples, since, data['since'])}", highlight=False)
    if samples:
        console.print(history_table(samples))


def top(
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Print the table once and exit (for scripts).")] = False,
    controller: ControllerOpt = DEFAULT_CONTROLLER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A live table of the fleet: device, online, model@version, state, backend, p50, p95, req/s, CPU, memory,
    temperature. q or Ctrl-C quits."""
    from rich.live import Live

    client = client_for(controller, token)
    if once or as_json:
        fleet = client.fleet_telemetry()
        return emit_json(fleet) if as_json else console.print(top_table(fleet))
    screen = live_screen(client.fleet_telemetry(), interval)
    with key_presses() as wait, Live(screen, console=console, refresh_per_second=4, screen=False) as live:
        try:
            while not wait_or_quit(wait, interval):
                live.update(live_screen(client.fleet_telemetry(), interval))
        except KeyboardInterrupt:
            pass


class DriftAction(StrEnum):
    show = "show"
    baseline = "baseline"
    fleet = "fleet"


def drift(
    action: Annotated[DriftAction, typer.Argument(help="show DEVICE | baseline DEVICE | fleet MODEL")],
    target: Annotated[str, typer.Argument(help="The device (show, baseline) or the model (fleet).")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Only this model (show, baseline).")] = None,
    controller: ControllerOpt = DEFAULT_CONTROLLER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Quality drift: `show` a device's verdicts (class mix, outputs, inputs against the baseline), `baseline` starts
    a new baseline from the device's next windows, `fleet` compares a model's devices with each other."""
    client = client_for(controller, token)
    params = {"model": model} if model else {}
    if action is DriftAction.baseline:
        data = client._request("POST", f"/api/v1/devices/{target}/drift/baseline", params=params)
        if as_json:
            return emit_json(data)
        what = f"{model} on {target}" if model else f"every model on {target}"
        console.print(f"new drift baseline for {what}: built from the next windows", highlight=False)
        return None
    if action is DriftAction.fleet:
        data = client._request("GET", f"/api/v1/models/{target}/drift")
        if as_json:
            return emit_json(data)
        if not data["devices"]:
            console.print(f"no device has judged windows of {target} yet", highlight=False)
        return _fleet_drift(target, data)
    data = client._request("GET", f"/api/v1/devices/{target}/drift", params=params)
    if as_json:
        return emit_json(data)
    for name, status in data["models"].items():
        console.print(_drift_line(f"{name}@{status['version']}" if status else name, status or {}))
    return None


def _fleet_drift(model: str, data: dict[str, Any]) -> None:
    """Per hardware class (and version): the devices, which of them differ from their peers, then each device."""
    entries = data["devices"]
    for group in data.get("classes") or [{"hw_class": None, "version": None, "devices": None, "differs": []}]:
        members = [e for e in entries if group["devices"] is None or e["device"] in group["devices"]]
        if group["hw_class"] is not None:
            head = f"[bold]{escape(group['hw_class'])}[/bold] ({escape(model)}@{escape(group['version'])}): "
            head += plural(len(members), "device")
            note = group.get("note") or "no device differs from its peers"
            colour = "red" if group.get("differs") else "default"
            console.print(f"{head}; [{colour}]{escape(note)}[/{colour}]", highlight=False)
        for entry in members:
            console.print("  " + _drift_line(f"{entry['device']} vs its class's peers", entry), highlight=False)


def _drift_line(title: str, status: dict[str, Any]) -> str:
    """One model's verdict: what moved, or where its baseline stands."""
    if status.get("flagged"):
        return f"{escape(title)}: [red]drift[/red] (PSI {status['score']:.2g}): " + escape(
            "; ".join(status["moved"][:3])
        )
    state = status.get("state") or status.get("reason") or "no quality statistics reported"
    tests = f", {status['tests']} tests on {status['window_rows']} rows" if status.get("judged") else ""
    if status.get("baseline_unstable") and not state.startswith("building"):  # kept though its halves differed
        tests += f" (baseline never settled: {status['baseline_unstable']})"
    return f"{escape(title)}: {escape(state)}{escape(tests)}"


COMMANDS = (telemetry, top, drift)
