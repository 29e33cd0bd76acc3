"""`edgectl undeploy`: remove a model from a device (it stops serving it and deletes its files)."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from edgectl.errors import fail
from edgectl.options import DEFAULT_CONTROLLER, ControllerOpt, JsonOpt, TokenOpt, client_for
from edgectl.output import console, emit_json

POLL_S = 0.25


def undeploy(
    device: Annotated[str, typer.Argument(help="Device id.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model to remove from the device.")],
    wait: Annotated[bool, typer.Option(help="Wait until the device no longer reports the model.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 60.0,
    controller: ControllerOpt = DEFAULT_CONTROLLER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove a model from a device's desired state: the agent stops serving it, deletes its files and reports it
    gone (a failed model too, which is then no longer retried)."""
    client = client_for(controller, token)
    result = client.undeploy(device, model)
    if not as_json:
        console.print(f"removing {model} from {device}")
    if wait:
        deadline = time.monotonic() + timeout
        while any(m.get("name") == model for m in client.device(device).get("models") or []):
            if time.monotonic() > deadline:
                raise fail(f"{device} still reports {model} after {timeout:.0f}s (is the device online?)")
            time.sleep(POLL_S)
        result["gone"] = True
        if not as_json:
            console.print(f"{device}: {model} removed")
    if as_json:
        emit_json(result)


COMMANDS = (undeploy,)
