"""`edgectl models`: the registry's models and versions, with their inputs and built variants."""

from __future__ import annotations

from typing import Any

from rich.markup import escape

from edgectl.options import DEFAULT_CONTROLLER, ControllerOpt, JsonOpt, TokenOpt, client_for
from edgectl.output import ago, console, emit_json, size_text, verdict
from edgectl.samples import describe_inputs
from edgectl.tables import Col, FitTable

COLUMNS = (Col("model", 0), Col("version", 0), Col("format", 2), Col("size", 2, justify="right"), Col("sha256", 4),
           Col("registered", 3), Col("inputs", 1, flex=True), Col("variants", 1))  # fmt: skip


def models(controller: ControllerOpt = DEFAULT_CONTROLLER, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """List registered models and versions."""
    rows = client_for(controller, token).models()
    if as_json:
        return emit_json(rows)
    table = []
    for m in rows:
        table.append(
            [
                escape(m["name"]),
                escape(m["version"]),
                m["format"],
                size_text(m["size"]),
                m["sha256"][:12],
                ago(m["created_at"]),
                escape(describe_inputs(m.get("info") or {})) or "-",
                variants_cell(m.get("variants") or []) or "-",
            ]
        )
    console.print(FitTable(COLUMNS, table))
    return None


def variants_cell(variants: list[dict[str, Any]]) -> str:
    """One line per built variant: its name, verdict and size."""
    return "\n".join(
        f"{v['variant']} " + verdict(v) + (f" {size_text(v['size'])}" if v["ok"] else "") for v in variants
    )


COMMANDS = (models,)
