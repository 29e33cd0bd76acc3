"""`edgectl label`: set or remove operator labels on a device (kept by the controller), what selectors match."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from edgectl.errors import CommandFailed
from edgectl.options import DEFAULT_CONTROLLER, ControllerOpt, JsonOpt, TokenOpt, client_for
from edgectl.output import console, emit_json
from protocol.labels import LabelError, parse_label


def label(
    device: Annotated[str, typer.Argument(help="Device id.")],
    labels: Annotated[list[str], typer.Argument(help="KEY=VALUE to set, or KEY- to remove (repeatable).")],
    controller: ControllerOpt = DEFAULT_CONTROLLER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set operator labels on a device (KEY=VALUE), or remove them (KEY-); `edgectl devices --select` matches them."""
    changes: dict[str, str] = {}
    remove: list[str] = []
    try:
        for item in labels:
            if item.endswith("-") and "=" not in item:
                remove.append(item[:-1])
            else:
                key, value = parse_label(item)
                changes[key] = value
    except LabelError as exc:
        raise CommandFailed(str(exc)) from None
    result = client_for(controller, token).set_labels(device, changes, remove)
    if as_json:
        return emit_json(result)
    shown = ", ".join(f"{k}={v}" for k, v in sorted(result["labels"].items()))
    console.print(f"{escape(device)}: {escape(shown)}", highlight=False)
    console.print(f"  hardware class: {escape(result['hardware_class'])}", highlight=False)
    return None


COMMANDS = (label,)
