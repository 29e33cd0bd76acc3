"""The options every command that talks to the controller shares: its URL, the API token, and --json."""

from __future__ import annotations

from typing import Annotated

import typer

from edgectl.client import DEFAULT_CONTROLLER, ControllerClient

ControllerOpt = Annotated[
    str,
    typer.Option("--controller", envvar="EDGECTL_CONTROLLER", help="Controller URL (or EDGECTL_CONTROLLER)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", envvar="EDGECTL_TOKEN", help="API token of the controller (or EDGECTL_TOKEN)."),
]

__all__ = ["DEFAULT_CONTROLLER", "ControllerOpt", "JsonOpt", "TokenOpt", "client_for"]


def client_for(controller: str, token: str | None) -> ControllerClient:
    return ControllerClient(controller, token=token or "")
