"""`edgectl rollback`: deploy an earlier version again on a device, by default the previous one still on its disk."""

from __future__ import annotations

from typing import Annotated

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
        str | None, typer.Option("--to", help="Version to go to (default: the previous one the device reports).")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait until the device serves it; exit non-zero if it fails.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 120.0,
    controller: ControllerOpt = DEFAULT_CONTROLLER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Deploy an earlier version again on a device: by default the previous one, still on its disk (instant swap)."""
    client = client_for(controller, token)
    result = client.rollback(device, model, to)
    if not as_json:
        came_from = f" from version {result['from']}" if result.get("from") else ""
        console.print(f"rolling back {result['model']} on {device}{came_from} to version {result['version']}")
    if not wait:
        return emit_json(result) if as_json else None
    attempts = {device: result.get("attempt", 0)}
    finish_wait(client, [device], result["model"], result["sha256"], timeout, as_json, {"rollback": result}, attempts)


COMMANDS = (rollback,)
