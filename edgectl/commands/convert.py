"""`edgectl convert`: build optimized variants of an ONNX model here, each with its size/speed/accuracy report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from edgectl.choice_view import format_ms
from edgectl.errors import CommandFailed, cannot_read
from edgectl.options import JsonOpt
from edgectl.output import brief, console, emit_json, errors, size_text, split_fix, verdict
from edgectl.tables import Col, FitTable

if TYPE_CHECKING:
    from converters import ConversionResult

CAPTION = (
    "* zstd-compressed transfer; FP32 p50 = the float original on the same runtime, timed in turn (! slower "
    "than FP32 here); top-1 / cosine on held-out samples, never calibrated or searched on"
)
COLUMNS = (Col("variant", 0), Col("result", 0), Col("size", 1, justify="right"), Col("vs FP32", 3, justify="right"),
           Col("transfer", 4, justify="right"), Col("runtime", 3), Col("p50 ms", 2, justify="right"),
           Col("FP32 p50", 4, justify="right"), Col("speedup", 1, justify="right"), Col("top-1", 2, justify="right"),
           Col("cosine", 2, justify="right"), Col("max err", 4, justify="right"))  # fmt: skip


def _mb(n: int | None) -> str:
    return size_text(n) if n else "-"


def _pct(x: float | None) -> str:
    return f"{x:.1%}" if x is not None else "-"


def _verdict(r: dict[str, Any]) -> str:
    """pass / unproven (at the bar, too few samples to vouch for it) / below / failed."""
    return "[yellow]unproven[/yellow]" if r.get("verdict") == "unproven" else verdict(r)


def _speedup(r: dict[str, Any]) -> str:
    if not r["speedup"]:
        return "-"
    return f"{r['speedup']:.2f}x" + ("!" if r.get("advice") and "slower than FP32" in r["advice"][0] else "")


def _row(r: dict[str, Any]) -> tuple[str, ...]:
    a = r["agreement"]
    return (
        r["variant"],
        _verdict(r),
        _mb(r["size_bytes"]),
        _pct(r["size_ratio"]),
        _mb(r["transfer_bytes"]) + ("*" if r["transfer_compressed"] else ""),
        r["runtime"],
        format_ms(r["latency_ms_p50"]) if r["latency_ms_p50"] else "-",  # ms as every command prints them
        format_ms(r["source_latency_ms_p50"]) if r["source_latency_ms_p50"] else "-",
        _speedup(r),
        _pct(a.get("top1")),
        f"{a['cosine']:.4f}" if a.get("cosine") is not None else "-",
        f"{a['max_abs_error']:.3g}" if a.get("max_abs_error") is not None else "-",
    )


def report_table(reports: list[dict[str, Any]], title: str) -> RenderableType:
    """The conversion reports as a table as wide as the console it is printed on (shared with
    bench/converters.py): columns dropped by priority when narrow, the variant and its verdict always shown."""
    rows = [list(_row(r)) if r["ok"] else [r["variant"], "[red]failed[/red]", *["-"] * (len(COLUMNS) - 2)]
            for r in reports]  # fmt: skip
    return Group(FitTable(COLUMNS, rows, title), Text(CAPTION, style="dim"))


def list_variants(as_json: bool) -> None:
    from converters import VARIANTS

    if as_json:
        return emit_json({v.name: {"format": v.format, "summary": v.summary} for v in VARIANTS.values()})
    for v in VARIANTS.values():
        console.print(f"[bold]{v.name:14}[/bold] {v.format:9} {v.summary}", highlight=False)
    return None


def show_results(results: list[ConversionResult], model: Path) -> None:
    """The report table, then per variant why it failed or fell short, what was fixed, and where it was written."""
    source = f"{model} ({_mb(results[0].source_size_bytes)})"
    console.print(report_table([r.as_dict() for r in results], f"edgectl convert {source}"))
    for r in results:
        if r.error:
            room = console.width - len(r.variant) - len(" failed: ")
            line, (cause, fix) = brief(r.error, room), split_fix(r.error)
            if fix and fix not in line:  # too narrow for both on one line: the fix whole on the next
                line = brief(cause.rstrip(":;, "), room)
            console.print(f"[red]{r.variant}[/red] failed: {escape(line)}", highlight=False)
            if fix and fix not in line:
                console.print(f"  {escape(fix)}", highlight=False, soft_wrap=True)
        for line in r.failed_metrics:
            console.print(f"[yellow]{r.variant}[/yellow] below threshold: {line}", highlight=False)
        for line in r.unproven:
            console.print(f"[yellow]{r.variant}[/yellow] unproven: {escape(line)}", highlight=False)
        for line in r.advice:
            console.print(f"[yellow]{r.variant}[/yellow] {escape(line)}", highlight=False)
        if r.ok and r.measured_on:
            console.print(f"[dim]{r.variant} measured on {escape(r.measured_on)}[/dim]", highlight=False)
        if r.ok and r.fixes:
            console.print(f"[dim]{r.variant} fixes: {'; '.join(r.fixes)}[/dim]", highlight=False)
        if r.path:
            console.print(f"[dim]{r.variant} -> {r.path}[/dim]", highlight=False)


def _suggested(model: Path, calibrated: bool) -> list[str]:
    """The variants that suit the model, printed with a one-line reason for each one left out."""
    from converters.advice import suggest
    from converters.fixes import load_problem

    try:
        picked, skipped = suggest(model, calibrated)
    except Exception as exc:  # not an ONNX model: say so in one line
        raise CommandFailed(f"{model} is not a valid ONNX model: {load_problem(exc)}") from None
    errors.print(f"building {', '.join(picked) or 'nothing'} (suits the model; --to names others)", highlight=False)
    for name, why in skipped.items():
        errors.print(f"[dim]  {name} left out: {escape(why)}[/dim]", highlight=False)
    return picked


def convert(
    model: Annotated[Path | None, typer.Argument(help="Float ONNX model to optimize (not needed with --list).")] = None,
    to: Annotated[
        str,
        typer.Option(
            "--to",
            metavar="VARIANTS",
            help="Variant(s), comma-separated, or 'all'. See --list. Default: those that suit the model (each "
            "left out named with why).",
        ),
    ] = "",
    calibration: Annotated[
        Path | None,
        typer.Option(help="Calibration data: .npz/.npy or a directory of them, keyed by input name."),
    ] = None,
    validation: Annotated[
        Path | None,
        typer.Option(
            help="Data to measure agreement on (default: a held-out share of the calibration data, never "
            "calibrated or searched on)."
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Directory for the variants.")] = Path("."),
    sparsity: Annotated[
        float | None,
        typer.Option(help="Fraction of weights zeroed by `pruned` (default: the highest that keeps agreement)."),
    ] = None,
    min_top1: Annotated[float, typer.Option(help="Top-1 agreement a classifier variant must keep.")] = 0.99,
    min_cosine: Annotated[float, typer.Option(help="Cosine similarity any other variant must keep.")] = 0.99,
    mixed_budget: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            help="Time for int8-static's mixed-precision search when full INT8 misses the bar (0: no search).",
        ),
    ] = 240.0,
    list_only: Annotated[bool, typer.Option("--list", help="List the variants and exit.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Build optimized variants (int8, fp16, OpenVINO, TFLite, pruned...) and report size, speed and agreement.

    Exits 0 when every variant was built and passes the thresholds on samples it never saw, 1 otherwise (the report
    says which and why: below the bar, unproven by too few samples, or failed).
    """
    from converters import VARIANTS, Thresholds, convert_many, parse_variants
    from converters.calibration import SYNTHETIC_WARNING

    if list_only:
        return list_variants(as_json)
    if model is None:
        raise CommandFailed("give the model file to convert (or --list to see the variants)")
    if not model.is_file():
        raise CommandFailed(cannot_read("model", model))
    names = parse_variants(to) or _suggested(model, calibration is not None)
    if not names:
        raise CommandFailed(f"no variant suits {model} here: name one or more with --to ({', '.join(VARIANTS)})")
    logging.getLogger("converters").setLevel(logging.ERROR)  # the synthetic-data warning is the loud one
    thresholds = Thresholds(top1=min_top1, cosine=min_cosine)
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=errors, transient=True,
        disable=not errors.is_terminal,  # a spinner to a pipe or file is only a stray blank line before the result
    ) as progress:  # fmt: skip
        task = progress.add_task("preparing (reference outputs, FP32 latency)", total=len(names))

        def step(name: str, result: ConversionResult | None) -> None:
            if calibration is None and name == names[0] and result is None:  # the model loaded: warn before its figures
                errors.print(f"[bold yellow]WARNING:[/bold yellow] {SYNTHETIC_WARNING}", highlight=False)
            if result is None:
                progress.update(task, description=f"converting [bold]{name}[/bold]")
            else:
                progress.advance(task)

        options = {"sparsity": sparsity or "auto", "mixed_budget_s": mixed_budget, "mixed_precision": mixed_budget > 0}
        results = convert_many(model, names, calibration, out, thresholds, options, step, validation)
    if as_json:
        emit_json([r.as_dict() for r in results])
    else:
        show_results(results, model)
    if not all(r.passed for r in results):
        raise typer.Exit(1)
    return None


COMMANDS = (convert,)
