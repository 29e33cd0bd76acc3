"""`edgectl rollback`: deploy an earlier version again on a device, by default the previous one still on its disk."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from edgectl.options import DEFAULT_CONTROLLER, ControllerOpt, JsonOpt, TokenOpt, client_for
from edgectl.output import console, emit_json
from edgectl.progress import finish_wait


def rollback(
    device: Annotated[str, typer.Argument(help="Device id.")],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model to roll back (default: the device's only model).")
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--to", metavar="VERSION", help="Version to go to (default: the previous one the device reports)."
        ),
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait until the device serves it; exit non-zero if it fails.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 120.0,
    controller: ControllerOpt = DEFAULT_CONTROLLER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Deploy an earlier version again on a device: by default the previous one, still on its disk (instant swap)."""
    client = client_for(controller, token)
    before = client.device(device)  # what the device serves now: the version it rolls back from
    result = client.rollback(device, model, to)
    result["serving"] = serving_version(before, result["model"])
    if not as_json:
        console.print(describe(result, device), highlight=False)
    if not wait:
        return emit_json(result) if as_json else None
    attempts = {device: result.get("attempt", 0)}
    finish_wait(client, [device], result["model"], result["sha256"], timeout, as_json, {"rollback": result}, attempts)


def describe(result: dict[str, Any], device: str) -> str:
    """What the rollback changes, from what the device serves (the controller's last request may have failed)."""
    model, target, serving = result["model"], result["version"], result["serving"]
    if serving == target:
        was = f" (was {result['from']})" if result.get("from") and result["from"] != target else ""
        return f"{model} on {device} already serves version {target}; its desired version goes back to {target}{was}"
    came_from = f" from version {serving}" if serving else " (it serves no version of it now)"
    return f"rolling back {model} on {device}{came_from} to version {target}"


def serving_version(device: dict[str, Any], model: str) -> str | None:
    """The version of `model` the device reports serving (not the one the controller last asked for)."""
    for entry in device.get("models") or []:
        if entry.get("name") == model:
            return (entry.get("serving") or {}).get("version")
    return None


COMMANDS = (rollback,)
