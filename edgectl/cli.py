"""`edgectl`: push models, watch devices, run inferences. The root: it registers one module per command group, each
command wrapped so that every known failure is one line on stderr and a non-zero exit."""

from __future__ import annotations

from typing import Annotated

import typer

from edgectl import __version__
from edgectl.commands import (
    bundle,
    capture,
    convert,
    demo,
    infer,
    labels,
    models,
    push,
    rollback,
    rollout,
    status,
    telemetry,
    undeploy,
)
from edgectl.errors import one_line
from edgectl.help_labels import LabelledCommand, LabelledGroup
from edgectl.output import Settings

GROUPS = (
    push,
    rollback,
    undeploy,
    status,
    labels,
    models,
    infer,
    capture,
    telemetry,
    demo,
    convert,
    bundle,
)  # in the order `--help` lists them


def show_version(value: bool) -> None:
    if value:
        typer.echo(f"edgectl {__version__}")
        raise typer.Exit()


def root(
    version: Annotated[
        bool, typer.Option("--version", callback=show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Full reasons and details instead of their first line.")
    ] = False,
) -> None:
    """Operate an edge fleet: push models to devices, watch them serve, run inferences remotely.

    Errors are one line; --verbose shows full reasons, EDGECTL_DEBUG=1 the traceback of an unexpected error."""
    Settings.verbose = verbose


def build_app() -> typer.Typer:
    app = typer.Typer(add_completion=False, no_args_is_help=True, cls=LabelledGroup)
    app.callback()(root)
    for group in GROUPS:
        for command in group.COMMANDS:
            app.command(cls=LabelledCommand)(one_line(command))
    app.add_typer(rollout.app, name="rollout")
    return app


app = build_app()


def main() -> None:
    app(prog_name="edgectl")


if __name__ == "__main__":
    main()
