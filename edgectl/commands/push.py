"""`edgectl push`: upload a model (optionally build optimized variants of it) and deploy it to devices."""

from __future__ import annotations

import os
import tarfile
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from edgectl.client import ControllerClient
from edgectl.errors import CommandFailed, cannot_read
from edgectl.options import DEFAULT_CONTROLLER, ControllerOpt, JsonOpt, TokenOpt, client_for
from edgectl.output import brief, console, emit_json, errors, size_text, verdict
from edgectl.progress import finish_wait, upload_with_progress
from edgectl.samples import attach_inputs
from edgectl.tables import Col, FitTable

ModelArg = Annotated[
    Path, typer.Argument(help="Model file: .onnx, .tflite, or OpenVINO IR (.xml with its .bin, or a .tar).")
]
OptimizeOpt = Annotated[
    str | None,
    typer.Option(
        help="Build optimized variants on the controller: VARIANT[,VARIANT...] (see `edgectl convert --list`) "
        "or 'auto' (the ones that suit the target devices' runtimes)."
    ),
]
SparsityOpt = Annotated[
    float | None,
    typer.Option(help="Fraction of weights zeroed by `pruned` (default: highest that keeps agreement)."),
]
MinTop1Opt = Annotated[
    float,
    typer.Option(
        "--min-top1",
        help="Top-1 agreement with the original that a classifier variant must keep (its 95% lower bound, on "
        "samples held out of calibration) to pass and ship.",
    ),
]  # fmt: skip
SampleOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--sample",
        help="A representative input (repeatable): .npz with one array per input name, .npy for a one-input "
        "model, or a v2 JSON request body. Devices choose the backend, check answers and time on them.",
    ),
]
InputShapeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--input-shape",
        help="NAME=DIMxDIM... (repeatable): the shape of synthetic inputs when no --sample is given, "
        "e.g. audio=1x16000.",
    ),
]


class Task(StrEnum):
    auto = "auto"
    classifier = "classifier"
    regression = "regression"


TaskOpt = Annotated[
    Task,
    typer.Option(
        help="What the outputs are, for quality drift: classifier (the class mix is counted on every float output's "
        "last axis), regression (never), or auto (detected from the output's shape).",
    ),
]


def push(
    model: ModelArg,
    name: Annotated[str, typer.Option("--name", "-n", help="Model name in the registry.")],
    to: Annotated[list[str] | None, typer.Option("--to", help="Device id to deploy to (repeatable).")] = None,
    version: Annotated[str | None, typer.Option(help="Version label (default: next integer).")] = None,
    backend: Annotated[str | None, typer.Option(help="Force a backend on the devices.")] = None,
    optimize: OptimizeOpt = None,
    calibration: Annotated[
        Path | None, typer.Option(help="Calibration data for --optimize (.npz keyed by input name, or .npy).")
    ] = None,
    sparsity: SparsityOpt = None,
    min_top1: MinTop1Opt = 0.99,
    force: Annotated[
        bool, typer.Option("--force", help="Deploy asked-for variants even when below the accuracy threshold.")
    ] = False,
    sample: SampleOpt = None,
    input_shape: InputShapeOpt = None,
    task: TaskOpt = Task.auto,
    pin: Annotated[
        bool,
        typer.Option("--pin", help="Keep the model loaded on the devices: their memory budget never unloads it."),
    ] = False,
    retry: Annotated[
        bool, typer.Option("--retry", help="Deploy again a version that failed or was rolled back on a device.")
    ] = False,
    wait: Annotated[bool, typer.Option(help="Wait until every device serves it; exit non-zero if any fails.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 300.0,
    controller: ControllerOpt = DEFAULT_CONTROLLER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload a model to the registry (optionally build optimized variants of it) and deploy it to devices."""
    model = checked_files(model, calibration, sample or [])
    wanted = [v.strip() for v in (optimize or "").split(",") if v.strip()]
    auto = wanted == ["auto"]
    client = client_for(controller, token)
    devices = list(dict.fromkeys(to or []))
    for device_id in devices:  # fail before uploading anything
        client.device(device_id)
    if auto and not devices:
        raise CommandFailed("--optimize auto picks variants by the target devices: add --to DEVICE")
    record = upload_with_progress(client, model, name, version, quiet=as_json)
    record = attach_inputs(client, record, sample or [], input_shape or [])
    if task is not Task.auto or (record.get("info") or {}).get("task"):  # auto after a declared task: detect again
        declared = client.set_task(name, record["version"], None if task is Task.auto else task.value)["task"]
        record = {**record, "info": {**(record.get("info") or {}), "task": declared}}
    if pin or (record.get("info") or {}).get("pinned"):  # a push without --pin unpins a version pinned before
        pinned = client.set_pinned(name, record["version"], pin)["pinned"]
        record = {**record, "info": {**(record.get("info") or {}), "pinned": pinned}}
    built = build_variants(client, record, wanted, devices, calibration, sparsity, min_top1, as_json) if wanted else []
    if not devices:
        return emit_json({**record, "variants": built} if wanted else record) if as_json else show_upload(record)
    ship = None if auto or not wanted else [v["variant"] for v in built]
    deployed = client.deploy(name, record["version"], devices, backend, variants=ship, force=force, retry=retry)
    if not as_json:
        show_deployment(record, devices, built, deployed)
    if wait:
        extra = {"model": record, "variants": built}
        attempts = {d["device"]: d.get("attempt", 0) for d in deployed.get("deployments", [])}
        return finish_wait(client, devices, name, record["sha256"], timeout, as_json, extra, attempts)
    if as_json:
        emit_json({"model": record, "devices": devices, "variants": built, "deployed": deployed.get("variants")})
    return None


def checked_files(model: Path, calibration: Path | None, samples: list[Path]) -> Path:
    """CommandFailed naming the first file that cannot be read; the model to upload (an IR packed as one tar)."""
    if not model.is_file() or not os.access(model, os.R_OK):
        raise CommandFailed(cannot_read("model", model))
    if calibration is not None and not calibration.is_file():
        raise CommandFailed(cannot_read("calibration", calibration))
    unreadable = [s for s in samples if not s.is_file() or not os.access(s, os.R_OK)]
    if unreadable:
        raise CommandFailed(cannot_read("sample", unreadable[0]))
    return pack_openvino_ir(model) if model.suffix == ".xml" else model


def pack_openvino_ir(xml: Path) -> Path:
    """Pack model.xml + model.bin into one tar in a temp dir (they travel as one artifact); OSError names a missing
    .bin."""
    weights = xml.with_suffix(".bin")
    if not weights.is_file():
        raise OSError(f"OpenVINO IR {xml} needs its weights file {weights} beside it")
    out = Path(tempfile.mkdtemp(prefix="edgectl-ir-")) / f"{xml.stem}.tar"
    with tarfile.open(out, "w") as tar:
        tar.add(xml, arcname=xml.name)
        tar.add(weights, arcname=weights.name)
    return out


def build_variants(
    client: ControllerClient,
    record: dict[str, Any],
    wanted: list[str],
    devices: list[str],
    calibration: Path | None,
    sparsity: float | None,
    min_top1: float,
    as_json: bool,
) -> list[dict[str, Any]]:
    """Build the variants on the controller (with the calibration data, when given) and show their reports."""
    name, version = record["name"], record["version"]
    if calibration is not None:
        client.upload_calibration(name, version, calibration)
    with errors.status(f"optimizing {name}@{version}: {','.join(wanted)}", spinner="dots"):
        built = client.optimize(name, version, wanted, devices, sparsity=sparsity, min_top1=min_top1)["variants"]
    if not as_json:
        console.print(variants_table(built, f"{name}@{version} variants"))
    return built


VARIANT_COLUMNS = (Col("variant", 0), Col("result", 0), Col("size", 1, justify="right"),
                   Col("vs original", 3, justify="right"), Col("speedup", 2, justify="right"),
                   Col("top-1", 2, justify="right"), Col("cosine", 3, justify="right"),
                   Col("why", 0, flex=True))  # fmt: skip


def variants_table(rows: list[dict[str, Any]], title: str) -> FitTable:
    """The variants built on the controller, with why each fell short (its first line; --json has all)."""
    table = []
    for v in rows:
        table.append(
            [
                escape(v["variant"]),
                verdict(v),
                size_text(v["size"]) if v["ok"] else "-",
                f"{v['size_ratio']:.0%}" if v.get("size_ratio") else "-",
                f"{v['speedup']:.2f}x" if v.get("speedup") else "-",
                f"{v['top1']:.2%}" if v.get("top1") is not None else "-",
                f"{v['cosine']:.4f}" if v.get("cosine") is not None else "-",
                escape(v.get("failure") or "-"),
            ]
        )
    return FitTable(VARIANT_COLUMNS, table, title)


def describe_upload(record: dict[str, Any]) -> str:
    verb = "registered" if record.get("created") else "already registered"
    size = size_text(record["size"])
    return f"{verb} {record['name']} version {record['version']} ({size}, sha256 {record['sha256'][:12]}…)"


def show_upload(record: dict[str, Any]) -> None:
    console.print(describe_upload(record))


def show_deployment(
    record: dict[str, Any], devices: list[str], built: list[dict[str, Any]], deployed: dict[str, Any]
) -> None:
    """What was deployed where, and each built variant left out with the reason."""
    with_variants = f" with {', '.join(deployed['variants'])}" if deployed.get("variants") else ""
    console.print(describe_upload(record) + f" -> deploying{with_variants} to {', '.join(devices)}")
    for v in built:
        if v["variant"] not in deployed.get("variants", []):
            reason = brief(v["failure"] or "", errors.width - len(v["variant"]) - 16)
            errors.print(f"[yellow]not deployed:[/yellow] {escape(v['variant'])}: {escape(reason)}", highlight=False)


COMMANDS = (push,)
