"""Help labels an operator reads: a flag shows no `<bool>`, a value shows what to give (`--to DEVICE`, `--timeout
SECONDS`) instead of the Python type typer derives (`<list[str]>`), and an argument its name alone (`DEVICE`, not
`DEVICE <str>`; listed choices stay). A label set on the option itself (`metavar=`) wins: one name means different
things in different commands (`push --to DEVICE`, `rollback --to VERSION`)."""

from __future__ import annotations

import inspect
from typing import Any

from typer.core import TyperCommand, TyperGroup

LABELS = {  # option or argument name -> what to give it
    "to": "DEVICE",
    "device": "DEVICE",
    "model": "MODEL",
    "name": "NAME",
    "controller": "URL",
    "token": "TOKEN",
    "timeout": "SECONDS",
    "since": "DURATION",
    "optimize": "VARIANTS",
    "sample": "FILE",
    "input": "FILE",
    "calibration": "FILE",
    "validation": "FILE",
    "input_shape": "NAME=SHAPE",
    "out": "DIR",
    "platform": "PLATFORM",
    "python": "X.Y",
    "extras": "EXTRAS",
    "wheel": "FILE",
    "sparsity": "FRACTION",
    "min_top1": "FRACTION",
    "min_cosine": "FRACTION",
    "interval": "SECONDS",
    "requests": "COUNT",
}


def relabel(params: list[Any]) -> list[Any]:
    """Give every parameter an operator's label (in place): none for flags, its own metavar where the command set
    one, else LABELS or its upper-cased name."""
    for param in params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
        elif param.metavar is None:
            param.metavar = LABELS.get(param.name or "", (param.name or "value").upper())
        if param.param_type_name == "argument" and not _is_choice(param):
            param.display_type_rich = _no_type  # an argument's name says what to give: `DEVICE`, not `DEVICE <str>`
    return params


def _is_choice(param: Any) -> bool:
    """An argument whose values are listed (`<show|baseline|fleet>`): that label says what to give, so it stays."""
    descriptor = getattr(param, "type_descriptor", None)
    return bool(getattr(descriptor, "is_choice", False))


def _no_type(ctx: Any) -> None:
    return None


def flowing(text: str | None) -> str | None:
    """A docstring as help: each paragraph one flowing line (rich help keeps a docstring's single line breaks, so a
    sentence broke where the source wrapped, not where the terminal does); paragraphs stay apart."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(p.split()) for p in paragraphs)


class LabelledCommand(TyperCommand):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help, self.short_help = flowing(self.help), flowing(self.short_help)

    def get_params(self, ctx: Any) -> list[Any]:
        return relabel(super().get_params(ctx))


class LabelledGroup(TyperGroup):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help, self.short_help = flowing(self.help), flowing(self.short_help)

    def get_params(self, ctx: Any) -> list[Any]:
        return relabel(super().get_params(ctx))
