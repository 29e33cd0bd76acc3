"""`edgectl rollout`: roll a model version out to the devices a selector picks, in waves stratified by hardware class,
each wave judged by gates on what the devices measured (docs/rollouts.md); status, events and the operator's
actions (pause, resume, next, abort)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from edgectl.errors import CommandFailed, one_line
from edgectl.help_labels import LabelledCommand, LabelledGroup
from edgectl.options import DEFAULT_CONTROLLER, ControllerOpt, JsonOpt, TokenOpt, client_for
from edgectl.output import console, emit_json
from protocol.labels import LabelError, parse_selector

app = typer.Typer(help="Roll a version out in waves with gates; status, events, pause/resume/next/abort.",
                  no_args_is_help=True, cls=LabelledGroup)  # fmt: skip
IdArg = Annotated[str, typer.Argument(help="Rollout id (`edgectl rollout list`).")]


def start(
    file: Annotated[Path, typer.Argument(help="The model file (registered as NAME version V, or already is).")],
    name: Annotated[str, typer.Option("--name", help="Model name.")],
    version: Annotated[str, typer.Option("--version", help="The version to roll out.")],
    select: Annotated[list[str] | None, typer.Option("--select", "-l", help="KEY=VALUE (repeatable).")] = None,
    waves: Annotated[str, typer.Option(help="Cumulative counts or shares of the selected devices.")] = "1,10%,50%,100%",
    bake: Annotated[float, typer.Option(help="Seconds of evidence per wave after activation.")] = 600.0,
    activate_timeout: Annotated[float, typer.Option(help="Seconds a device gets to serve the version.")] = 600.0,
    max_p95_ratio: Annotated[float, typer.Option(help="Median over devices of p95 new/old, at most.")] = 1.10,
    max_error_delta: Annotated[float, typer.Option(help="Error-rate increase (points, 95% bound), at most.")] = 0.5,
    min_agreement: Annotated[float | None, typer.Option(help="Shadow-check agreement (live), at least.")] = None,
    no_new_drift: Annotated[
        bool, typer.Option("--no-new-drift", help="Gate: no quality drift from the last version.")
    ] = False,
    min_requests: Annotated[int, typer.Option(help="Inferences per device before a wave can pass.")] = 200,
    on_fail: Annotated[str, typer.Option(help="halt, revert-wave or revert-all.")] = "revert-wave",
    seed: Annotated[int | None, typer.Option(help="Seed of the device order (default: random).")] = None,
    rollout_name: Annotated[str, typer.Option("--rollout-name", help="A name for the rollout.")] = "",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan; change nothing.")] = False,
    controller: ControllerOpt = DEFAULT_CONTROLLER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a rollout (or --dry-run: waves per class, bytes to move, devices that cannot take it, conflicts)."""
    try:
        selector = parse_selector(select or [])
    except LabelError as exc:
        raise CommandFailed(str(exc)) from None
    if on_fail not in ("halt", "revert-wave", "revert-all"):
        raise CommandFailed(f"--on-fail {on_fail!r}: use halt, revert-wave or revert-all")
    client = client_for(controller, token)
    body: dict[str, Any] = {
        "model": name, "version": version, "name": rollout_name, "select": [f"{k}={v}" for k, v in selector.items()],
        "waves": waves, "bake_s": bake, "activate_timeout_s": activate_timeout, "max_p95_ratio": max_p95_ratio,
        "max_error_delta": max_error_delta, "min_agreement": min_agreement, "min_requests": min_requests,
        "no_new_drift": no_new_drift, "on_fail": on_fail, "seed": seed, "dry_run": dry_run,
    }  # fmt: skip
    if dry_run:
        registered = [m for m in client.models() if m["name"] == name and m["version"] == version]
        if not registered:
            body |= {"size": file.stat().st_size, "format": _format(file)}
        plan = client.start_rollout(body)
        return emit_json(plan) if as_json else show_plan(plan)
    client.upload_model(file, name, version)
    rollout = client.start_rollout(body)
    if as_json:
        return emit_json(rollout)
    what = f"{escape(name)} {escape(version)} to {len(rollout['devices'])} device(s)"
    console.print(f"rollout [bold]{rollout['id']}[/bold]: {what} in {len(rollout['waves'])} wave(s)", highlight=False)
    console.print(f"  follow it: edgectl rollout status {rollout['id']}", highlight=False)
    return None


def _format(file: Path) -> str:
    return {".tflite": "tflite", ".xml": "openvino"}.get(file.suffix.lower(), "onnx")


def show_plan(plan: dict[str, Any]) -> None:
    console.print(f"dry run: {plan['devices']} device(s), {plan['bytes'] / (1 << 20):.1f} MiB to move, "
                  f"classes {plan['classes']}", highlight=False)  # fmt: skip
    for wave in plan["waves"]:
        classes = ", ".join(f"{c}: {n}" for c, n in wave["classes"].items() if n)
        console.print(f"  wave {wave['index'] + 1} ({wave['step']}): {len(wave['devices'])} device(s) {classes}",
                      highlight=False)  # fmt: skip
    for device, why in plan["incompatible"].items():
        console.print(f"  cannot take it: {escape(device)}: {escape(why)}", highlight=False)
    for device, other in plan["conflicts"].items():
        console.print(f"  in rollout {other}: {escape(device)}", highlight=False)


def status(
    rollout_id: IdArg,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Print again every 2 s until it ends.")] = False,
    controller: ControllerOpt = DEFAULT_CONTROLLER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A rollout's state, reason, and each wave with its devices, state and the gates' figures per class."""
    client = client_for(controller, token)
    while True:
        rollout = client.rollout(rollout_id)
        if as_json:
            return emit_json(rollout)
        show(rollout)
        if not watch or rollout["state"] in ("halted", "completed", "aborted"):
            return None
        time.sleep(2)


def show(rollout: dict[str, Any]) -> None:
    head = f"[bold]{rollout['id']}[/bold] {escape(rollout['model'])} {escape(rollout['version'])}: {rollout['state']}"
    console.print(head + (f" ({escape(rollout['reason'])})" if rollout["reason"] else ""), highlight=False)
    for wave in rollout["waves"]:
        states = ", ".join(f"{k} {v}" for k, v in sorted(wave["device_states"].items()))
        console.print(f"  wave {wave['index'] + 1} ({wave['step']}): {wave['state']}, {len(wave['devices'])} "
                      f"device(s) {states}", highlight=False)  # fmt: skip
        for hw_class, gate in (wave.get("classes") or {}).items():
            latency = gate.get("latency", {}).get("median_p95_ratio")
            errors = gate.get("errors", {}).get("increase_lower_pct")
            agree = (gate.get("agreement") or {}).get("agreement")
            console.print(f"    {escape(hw_class)}: {gate['verdict']} p95 ratio {latency} error increase >= "
                          f"{errors} pts agreement {agree}", highlight=False)  # fmt: skip


def list_(controller: ControllerOpt = DEFAULT_CONTROLLER, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Every rollout: id, model, version, state and reason."""
    rows = client_for(controller, token).rollouts()
    if as_json:
        return emit_json(rows)
    for r in rows:
        wave = f"wave {r['wave'] + 1}/{r['waves']}"
        console.print(f"{r['id']}  {escape(r['model'])} {escape(r['version'])}  {r['state']}  {wave}  "
                      f"{escape(r['reason'])}", highlight=False)  # fmt: skip
    return None


def events(
    rollout_id: IdArg, controller: ControllerOpt = DEFAULT_CONTROLLER, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """Every decision of a rollout, in order, with the figures it was made on (append-only)."""
    rows = client_for(controller, token).rollout_events(rollout_id)
    if as_json:
        return emit_json(rows)
    for e in rows:
        wave = f"wave {e['wave'] + 1}" if e["wave"] is not None else ""
        stamp = time.strftime("%H:%M:%S", time.localtime(e["ts"]))
        console.print(f"{e['seq']:>4} {stamp} {e['kind']:<15} {wave:<7} {escape(e['reason'])}", highlight=False)
    return None


def _action(action: str, doc: str):
    def command(
        rollout_id: IdArg, controller: ControllerOpt = DEFAULT_CONTROLLER, token: TokenOpt = None,
        as_json: JsonOpt = False,
    ) -> None:  # fmt: skip
        rollout = client_for(controller, token).rollout_action(rollout_id, action)
        if as_json:
            return emit_json(rollout)
        show(rollout)
        return None

    command.__doc__ = doc
    command.__name__ = action
    return command


for _command, _name in (
    (start, "start"),
    (status, "status"),
    (list_, "list"),
    (events, "events"),
    (_action("pause", "Pause a rollout: no wave starts or is decided until resume."), "pause"),
    (_action("resume", "Resume a paused rollout (a baking wave bakes a full --bake again)."), "resume"),
    (_action("next", "Promote the current wave by hand and go on to the next."), "next"),
    (_action("abort", "Emergency stop: revert every device that took the new version, now."), "abort"),
):
    app.command(_name, cls=LabelledCommand)(one_line(_command))

COMMANDS: tuple = ()
GROUP = ("rollout", app)
