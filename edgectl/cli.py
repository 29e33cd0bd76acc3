"""`edgectl`: push models, watch devices, run inferences. Every failure is one line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskProgressColumn, TextColumn, TransferSpeedColumn
from rich.table import Table

from edgectl.choice_view import format_ms, print_choice
from edgectl.client import DEFAULT_CONTROLLER, ApiError, ControllerClient
from edgectl.samples import attach_inputs, describe_inputs
from edgectl.watch import DeviceOutcome, wait_serving

app = typer.Typer(
    help="Operate an edge fleet: push models to devices, watch them serve, run inferences remotely.",
    add_completion=False,
    no_args_is_help=True,
)
console = Console()
errors = Console(stderr=True)

ControllerOpt = Annotated[
    str,
    typer.Option("--controller", envvar="EDGECTL_CONTROLLER", help="Controller URL (or EDGECTL_CONTROLLER)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", envvar="EDGECTL_TOKEN", help="API token of the controller (or EDGECTL_TOKEN)."),
]


def client_for(controller: str, token: str | None) -> ControllerClient:
    return ControllerClient(controller, token=token or "")


def fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def ago(ts: float | None) -> str:
    if not ts:
        return "never"
    seconds = max(0, time.time() - ts)
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


@app.command()
def push(
    model: Annotated[
        Path, typer.Argument(help="Model file: .onnx, .tflite, or OpenVINO IR (.xml with its .bin, or a .tar).")
    ],
    name: Annotated[str, typer.Option("--name", "-n", help="Model name in the registry.")],
    to: Annotated[list[str] | None, typer.Option("--to", help="Device id to deploy to (repeatable).")] = None,
    version: Annotated[str | None, typer.Option(help="Version label (default: next integer).")] = None,
    backend: Annotated[str | None, typer.Option(help="Force a backend on the devices.")] = None,
    optimize: Annotated[
        str | None,
        typer.Option(
            help="Build optimized variants on the controller: VARIANT[,VARIANT...] (see `edgectl convert --list`) "
            "or 'auto' (the ones that suit the target devices' runtimes)."
        ),
    ] = None,
    calibration: Annotated[
        Path | None, typer.Option(help="Calibration data for --optimize (.npz keyed by input name, or .npy).")
    ] = None,
    sparsity: Annotated[
        float | None,
        typer.Option(help="Fraction of weights zeroed by `pruned` (default: highest that keeps agreement)."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Deploy asked-for variants even when below the accuracy threshold.")
    ] = False,
    sample: Annotated[
        list[Path] | None,
        typer.Option(
            "--sample",
            help="A representative input (repeatable): .npz with one array per input name, .npy for a one-input "
            "model, or a v2 JSON request body. Devices choose the backend, check answers and time on them.",
        ),
    ] = None,
    input_shape: Annotated[
        list[str] | None,
        typer.Option(
            "--input-shape",
            help="NAME=DIMxDIM... (repeatable): the shape of synthetic inputs when no --sample is given, "
            "e.g. audio=1x16000.",
        ),
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait until every device serves it; exit non-zero if any fails.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 300.0,
    controller: ControllerOpt = DEFAULT_CONTROLLER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload a model to the registry (optionally build optimized variants of it) and deploy it to devices."""
    if not model.is_file() or not os.access(model, os.R_OK):
        raise fail(f"cannot read model file {model}")
    if calibration is not None and not calibration.is_file():
        raise fail(f"cannot read calibration file {calibration}")
    unreadable = [str(s) for s in sample or [] if not s.is_file() or not os.access(s, os.R_OK)]
    if unreadable:
        raise fail(f"cannot read sample file {unreadable[0]}")
    wanted = [v.strip() for v in (optimize or "").split(",") if v.strip()]
    auto = wanted == ["auto"]
    if model.suffix == ".xml":  # OpenVINO IR: the .xml and its .bin travel as one tar artifact
        try:
            model = pack_openvino_ir(model)
        except OSError as exc:
            raise fail(str(exc)) from None
    client = client_for(controller, token)
    devices = list(dict.fromkeys(to or []))
    built: list[dict[str, Any]] = []
    try:
        for device_id in devices:  # fail before uploading anything
            client.device(device_id)
        if auto and not devices:
            raise fail("--optimize auto picks variants by the target devices: add --to DEVICE")
        record = upload_with_progress(client, model, name, version, quiet=as_json)
        record = attach_inputs(client, record, sample or [], input_shape or [])

        if wanted:
            if calibration is not None:
                client.upload_calibration(name, record["version"], calibration)
            with errors.status(f"optimizing {name}@{record['version']}: {optimize}", spinner="dots"):
                built = client.optimize(name, record["version"], wanted, devices, sparsity=sparsity)["variants"]
            if not as_json:
                console.print(variants_table(built, f"{name}@{record['version']} variants"))
        if not devices:
            if as_json:
                return emit_json({**record, "variants": built} if wanted else record)
            return console.print(describe_upload(record))
        ship = None if auto or not wanted else [v["variant"] for v in built]
        deployed = client.deploy(name, record["version"], devices, backend, variants=ship, force=force)
    except ApiError as exc:
        raise fail(str(exc)) from None
    if not as_json:
        with_variants = f" with {', '.join(deployed['variants'])}" if deployed.get("variants") else ""
        console.print(describe_upload(record) + f" -> deploying{with_variants} to {', '.join(devices)}")
        skipped = [v for v in built if v["variant"] not in deployed.get("variants", [])]
        for v in skipped:
            errors.print(f"[yellow]not deployed:[/yellow] {v['variant']}: {v['failure']}", highlight=False)
    if not wait:
        if as_json:
            emit_json({"model": record, "devices": devices, "variants": built, "deployed": deployed.get("variants")})
        return None
    finish_wait(client, devices, name, record["sha256"], timeout, as_json, {"model": record, "variants": built})


def finish_wait(
    client: ControllerClient,
    devices: list[str],
    name: str,
    sha256: str,
    timeout: float,
    as_json: bool,
    extra: dict[str, Any],
) -> None:
    """Follow the devices until they serve `sha256`; print each outcome; exit 1 if any did not get there."""
    outcomes = watch_with_progress(client, devices, name, sha256, timeout, quiet=as_json)
    failed = {d: o for d, o in outcomes.items() if o.state != "serving"}
    if as_json:
        emit_json({**extra, "devices": {d: o.__dict__ for d, o in outcomes.items()}})
    else:
        for outcome in outcomes.values():
            mark = "[green]serving[/green]" if outcome.state == "serving" else f"[red]{outcome.state}[/red]"
            console.print(f"  {outcome.device}: {mark} {outcome.backend or ''} {outcome.reason or ''}".rstrip())
    if failed:
        raise fail("; ".join(f"{d}: {o.reason or o.state}" for d, o in failed.items()))


def variants_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table("variant", "result", "size", "vs original", "speedup", "top-1", "cosine", "why", title=title)
    for v in rows:
        result = (
            "[green]pass[/green]" if v["passed"] else ("[yellow]below[/yellow]" if v["ok"] else "[red]failed[/red]")
        )
        table.add_row(
            v["variant"],
            result,
            f"{v['size'] / 1e6:.2f} MB" if v["ok"] else "-",
            f"{v['size_ratio']:.0%}" if v.get("size_ratio") else "-",
            f"{v['speedup']:.2f}x" if v.get("speedup") else "-",
            f"{v['top1']:.2%}" if v.get("top1") is not None else "-",
            f"{v['cosine']:.4f}" if v.get("cosine") is not None else "-",
            v.get("failure") or "",
        )
    return table


@app.command()
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
    try:
        result = client.rollback(device, model, to)
    except ApiError as exc:
        raise fail(str(exc)) from None
    if not as_json:
        came_from = f" from version {result['from']}" if result.get("from") else ""
        console.print(f"rolling back {result['model']} on {device}{came_from} to version {result['version']}")
    if not wait:
        return emit_json(result) if as_json else None
    finish_wait(client, [device], result["model"], result["sha256"], timeout, as_json, {"rollback": result})


def pack_openvino_ir(xml: Path) -> Path:
    """Pack model.xml + model.bin into one tar beside a temp dir; raise OSError naming a missing .bin."""
    import tarfile
    import tempfile

    weights = xml.with_suffix(".bin")
    if not weights.is_file():
        raise OSError(f"OpenVINO IR {xml} needs its weights file {weights} beside it")
    out = Path(tempfile.mkdtemp(prefix="edgectl-ir-")) / f"{xml.stem}.tar"
    with tarfile.open(out, "w") as tar:
        tar.add(xml, arcname=xml.name)
        tar.add(weights, arcname=weights.name)
    return out


def describe_upload(record: dict[str, Any]) -> str:
    verb = "registered" if record.get("created") else "already registered"
    size_mb = record["size"] / 1e6
    return f"{verb} {record['name']} version {record['version']} ({size_mb:.1f} MB, sha256 {record['sha256'][:12]}…)"


def upload_with_progress(client: ControllerClient, model: Path, name: str, version: str | None, quiet: bool) -> dict:
    size = model.stat().st_size
    columns = (TextColumn("upload {task.fields[label]}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=errors, disable=quiet, transient=True) as progress:
        task = progress.add_task("upload", total=size, label=model.name)
        return client.upload_model(model, name, version, lambda n: progress.advance(task, n))


def watch_with_progress(
    client: ControllerClient, devices: list[str], name: str, sha256: str, timeout: float, quiet: bool
) -> dict[str, DeviceOutcome]:
    columns = (TextColumn("{task.fields[device]:<20} {task.fields[state]:<12}"), BarColumn(), TaskProgressColumn())
    with Progress(*columns, console=errors, disable=quiet, transient=True) as progress:
        tasks = {d: progress.add_task(d, total=1.0, device=d, state="pending") for d in devices}

        def update(outcome: DeviceOutcome) -> None:
            done = 1.0 if outcome.state == "serving" else outcome.progress
            progress.update(tasks[outcome.device], completed=done, state=outcome.state)

        return wait_serving(client, devices, name, sha256, timeout, update)


@app.command()
def devices(controller: ControllerOpt = DEFAULT_CONTROLLER, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """List devices, whether they are online, and what each serves."""
    client = client_for(controller, token)
    try:
        rows = client.devices()
    except ApiError as exc:
        raise fail(str(exc)) from None
    if as_json:
        return emit_json(rows)
    table = Table("device", "online", "models", "hardware", "last seen")
    for d in rows:
        hw = d.get("hardware") or {}
        models = "\n".join(f"{m['name']}@{m['version']} {m['state']} {m.get('backend') or ''}" for m in d["models"])
        online = "[green]yes[/green]" if d["online"] else "[red]no[/red]"
        hardware = f"{hw.get('arch', '?')} {hw.get('cores', '?')} cores {hw.get('memory_mb', 0) / 1024:.1f} GiB"
        table.add_row(d["id"], online, models or "-", hardware, ago(d.get("last_seen")))
    console.print(table)


@app.command()
def status(
    device: Annotated[str, typer.Argument(help="Device id.")],
    controller: ControllerOpt = DEFAULT_CONTROLLER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One device in detail: hardware, and each model's state, backend and last error."""
    client = client_for(controller, token)
    try:
        d = client.device(device)
    except ApiError as exc:
        raise fail(str(exc)) from None
    if as_json:
        return emit_json(d)
    console.print(f"[bold]{d['id']}[/bold] {'online' if d['online'] else 'OFFLINE'}, last seen {ago(d['last_seen'])}")
    console.print(f"  agent {d.get('agent_version') or '?'}, inference API {d.get('api_url') or '?'}")
    for key, value in (d.get("hardware") or {}).items():
        console.print(f"  {key}: {value}")
    table = Table("model", "version", "state", "backend", "serving", "previous", "reason")
    for m in d["models"]:
        serving = m.get("serving") or {}
        previous = m.get("previous") or {}
        reason = (m.get("reason") or {}).get("message", "")
        state = m["state"] + (f" {m['progress']:.0%}" if m["state"] == "downloading" else "")
        table.add_row(
            m["name"],
            m["version"],
            state,
            m.get("backend") or "",
            serving.get("version", "-"),
            previous.get("version", "-"),
            reason,
        )
    console.print(table)
    for m in d["models"]:
        print_choice(console, m)
    for tm in (d.get("telemetry") or {}).get("models") or []:
        line = f"  {tm['name']}@{tm['version']}: p50 {format_ms(tm.get('p50_ms'))} ms"
        line += f", p95 {format_ms(tm.get('p95_ms'))} ms"
        line += f", {tm.get('requests_per_s') or 0:.1f} req/s"
        for output, drift in (tm.get("drift") or {}).items():
            if drift.get("flagged"):
                line += (
                    f"; [red]DRIFT[/red] {output}: mean {drift['mean']:.4g} vs baseline {drift['baseline_mean']:.4g}"
                )
                line += f" ({drift['score']:.1f} std)"
        console.print(line, highlight=False)


@app.command()
def models(controller: ControllerOpt = DEFAULT_CONTROLLER, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """List registered models and versions."""
    client = client_for(controller, token)
    try:
        rows = client.models()
    except ApiError as exc:
        raise fail(str(exc)) from None
    if as_json:
        return emit_json(rows)
    table = Table("model", "version", "format", "size", "sha256", "registered", "inputs", "variants")
    for m in rows:
        variants = "\n".join(
            f"{v['variant']} "
            + ("[green]pass[/green]" if v["passed"] else "[yellow]below[/yellow]" if v["ok"] else "[red]failed[/red]")
            + (f" {v['size'] / 1e6:.2f} MB" if v["ok"] else "")
            for v in m.get("variants") or []
        )
        table.add_row(
            m["name"],
            m["version"],
            m["format"],
            f"{m['size'] / 1e6:.1f} MB",
            m["sha256"][:12],
            ago(m["created_at"]),
            describe_inputs(m.get("info") or {}),
            variants or "-",
        )
    console.print(table)


@app.command()
def infer(
    device: Annotated[str, typer.Argument(help="Device id.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model name serving on the device.")],
    input_file: Annotated[
        Path, typer.Option("--input", "-i", help=".npy (single-input models) or .npz by input name.")
    ],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the device.")] = 10.0,
    controller: ControllerOpt = DEFAULT_CONTROLLER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run one inference on a device, remotely over MQTT request/response."""
    import numpy as np

    from protocol.tensors import InputError, decode_tensor, encode_tensor

    client = client_for(controller, token)
    try:
        client.device(device)  # an unknown device is the first thing to report
        arrays = load_inputs(input_file, lambda: client.model(model))
        tensors = {k: encode_tensor(v) for k, v in arrays.items()}
        result = client.infer(device, model, tensors, timeout)
        outputs = {k: decode_tensor(k, v) for k, v in result["outputs"].items()}
    except (ApiError, InputError) as exc:
        raise fail(str(exc)) from None
    if as_json:
        meta = {k: v for k, v in result.items() if k != "outputs"}
        return emit_json(
            {
                **meta,
                "outputs": {
                    k: {"shape": list(v.shape), "dtype": str(v.dtype), "data": v.tolist()} for k, v in outputs.items()
                },
            }
        )
    console.print(
        f"{result['model_name']}@{result['model_version']} on {result['backend']}: {result['latency_ms']:.2f} ms"
    )
    with np.printoptions(precision=4, threshold=20, edgeitems=3):
        for key, value in outputs.items():
            console.print(f"  {key} {value.dtype}{list(value.shape)} = {value}")


def load_inputs(path: Path, model_info) -> dict[str, Any]:
    """Named arrays from .npz, or the model's single input from .npy."""
    import numpy as np

    from protocol.tensors import InputError

    if not path.is_file():
        raise InputError(f"cannot read input file {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not a .npy/.npz file: {exc}") from None
    if isinstance(loaded, np.ndarray):
        inputs = model_info().get("info", {}).get("inputs", [])
        if len(inputs) != 1:
            names = [i["name"] for i in inputs]
            raise InputError(f"the model takes {len(inputs)} inputs {names}: pass an .npz keyed by input name")
        return {inputs[0]["name"]: loaded}
    with loaded:
        return {key: loaded[key] for key in loaded.files}


def _telemetry_rows(device: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per model (or one for a device without models): the columns of `edgectl top`."""
    t = device.get("telemetry") or {}
    res = t.get("resources") or {}
    by_name = {m["name"]: m for m in t.get("models") or []}
    online = "[green]yes[/green]" if device["online"] else "[red]no[/red]"
    cpu = f"{res['cpu_percent']:.0f}%" if res.get("cpu_percent") is not None else "-"
    mem = f"{res['mem_percent']:.0f}%" if res.get("mem_percent") is not None else "-"
    temp = f"{res['temperature_c']:.0f}°C" if res.get("temperature_c") is not None else "-"
    rows = []
    for m in device.get("models") or [{}]:
        tm = by_name.get(m.get("name"), {})
        serving = (m.get("serving") or {}).get("version") or m.get("version")
        model = f"{m['name']}@{serving}" if m else "-"
        drift = " [red]drift[/red]" if tm.get("drifting") else ""
        rows.append(
            (
                device["id"],
                online,
                model + drift,
                m.get("backend") or "-",
                format_ms(tm.get("p50_ms")),
                format_ms(tm.get("p95_ms")),
                f"{tm['requests_per_s']:.1f}" if tm.get("requests_per_s") is not None else "-",
                cpu,
                mem,
                temp,
            )
        )
    return rows


def top_table(fleet: list[dict[str, Any]]) -> Table:
    table = Table("device", "online", "model@version", "backend", "p50 ms", "p95 ms", "req/s", "CPU", "mem", "temp")
    for device in fleet:
        for row in _telemetry_rows(device):
            table.add_row(*row)
    return table


@app.command()
def telemetry(
    device: Annotated[str, typer.Argument(help="Device id.")],
    since: Annotated[str, typer.Option(help="How far back: 30s, 10m, 2h, 1d, or epoch seconds.")] = "10m",
    controller: ControllerOpt = DEFAULT_CONTROLLER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A device's telemetry over time: latency per model, throughput, errors, CPU, memory, temperature."""
    client = client_for(controller, token)
    try:
        data = client._request("GET", f"/api/v1/devices/{device}/telemetry", params={"since": since})
    except ApiError as exc:
        raise fail(str(exc)) from None
    if as_json:
        return emit_json(data)
    samples = data["samples"]
    since_text = time.strftime("%H:%M:%S", time.localtime(data["since"]))
    console.print(f"[bold]{device}[/bold]: {len(samples)} sample(s) since {since_text}")
    table = Table(
        "time", "model@version", "requests", "errors", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "CPU", "mem"
    )
    for s in samples:
        res = s.get("resources") or {}
        when = time.strftime("%H:%M:%S", time.localtime(s["ts"]))
        cpu = f"{res['cpu_percent']:.0f}%" if res.get("cpu_percent") is not None else "-"
        mem = f"{res['mem_percent']:.0f}%" if res.get("mem_percent") is not None else "-"
        for m in s.get("models") or [{}]:
            table.add_row(
                when,
                f"{m['name']}@{m['version']}" if m else "-",
                str(m.get("requests", 0)),
                str(m.get("errors", 0)),
                f"{m['requests_per_s']:.1f}" if m.get("requests_per_s") is not None else "-",
                format_ms(m.get("p50_ms")),
                format_ms(m.get("p95_ms")),
                format_ms(m.get("p99_ms")),
                format_ms(m.get("latency_max_ms") if m else None),
                cpu,
                mem,
            )
    console.print(table)


@app.command()
def top(
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Print the table once and exit (for scripts).")] = False,
    controller: ControllerOpt = DEFAULT_CONTROLLER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A live table of the fleet: device, online, model@version, backend, p50, p95, req/s, CPU, memory, temperature."""
    from rich.live import Live

    client = client_for(controller, token)

    def fetch() -> list[dict[str, Any]]:
        try:
            return client._request("GET", "/api/v1/telemetry")
        except ApiError as exc:
            raise fail(str(exc)) from None

    if once or as_json:
        fleet = fetch()
        return emit_json(fleet) if as_json else console.print(top_table(fleet))
    with Live(top_table(fetch()), console=console, refresh_per_second=4, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(top_table(fetch()))
        except KeyboardInterrupt:
            pass


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="Keep the temporary directory for inspection.")] = False,
    requests: Annotated[int, typer.Option(help="Inference requests for the latency table.")] = 200,
) -> None:
    """Run the whole path locally: controller (embedded broker, SQLite), one agent, a model pushed, served, queried."""
    from edgectl.demo import run_demo

    try:
        run_demo(console, keep=keep, requests=requests)
    except RuntimeError as exc:
        raise fail(str(exc)) from None


from edgectl import convert as _convert  # noqa: E402,F401 - registers `edgectl convert`


def main() -> None:
    app(prog_name="edgectl")


if __name__ == "__main__":
    from edgectl.cli import main as package_main  # the imported module, where `convert` registered itself

    package_main()
