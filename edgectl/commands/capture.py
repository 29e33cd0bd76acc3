"""`edgectl capture`: fetch the request inputs a device kept for a model, as samples for push and the converters."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from edgectl.errors import fail
from edgectl.options import DEFAULT_CONTROLLER, ControllerOpt, JsonOpt, TokenOpt, client_for
from edgectl.output import console, emit_json, plural


def capture(
    device: Annotated[str, typer.Argument(help="Device id.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model whose request inputs to fetch.")],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            metavar="FILE|DIR",
            help="The .npz to write (arrays sample<i>/<input>; .npz is added when missing), or a directory to "
            "write DEVICE-MODEL.npz in.",
        ),
    ],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each part of the device's answer.")] = 30.0,
    controller: ControllerOpt = DEFAULT_CONTROLLER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fetch a uniform sample of the real request inputs a device kept for a model (in its memory only, and sent
    only now); the file feeds `edgectl push --sample` and `edgectl convert --calibration`."""
    out = capture_path(out, device, model)
    if not out.parent.is_dir():
        raise fail(f"--out {out}: no directory {out.parent}; create it or give another path")
    response = client_for(controller, token).capture(device, model, timeout)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # real inputs: the operator's eyes only
    os.fchmod(fd, 0o600)  # an existing file too
    with os.fdopen(fd, "wb") as f:
        f.write(response.content)
    result = {
        "device": device, "model": model, "version": response.headers.get("X-Model-Version"),
        "count": int(response.headers.get("X-Capture-Count", "0")),
        "seen": int(response.headers.get("X-Capture-Seen", "0")), "out": str(out), "bytes": len(response.content),
    }  # fmt: skip
    if as_json:
        emit_json(result)
    else:
        console.print(
            f"wrote {plural(result['count'], 'request input')} of {model} version {result['version']} "
            f"(a uniform sample of {plural(result['seen'], 'request')}) to {out}"
        )


def capture_path(out: Path, device: str, model: str) -> Path:
    """Where `--out` writes: DIR/DEVICE-MODEL.npz for a directory, else the file, with `.npz` added when missing
    (numpy and `edgectl push --sample` read it by that suffix)."""
    if out.is_dir():
        return out / f"{device}-{model}.npz"
    return out if out.suffix == ".npz" else out.with_name(out.name + ".npz")


COMMANDS = (capture,)
