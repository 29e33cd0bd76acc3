"""`edgectl infer`: one inference on a device, remotely over MQTT request/response through the controller."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgectl.choice_view import say
from edgectl.errors import cannot_read
from edgectl.options import DEFAULT_CONTROLLER, ControllerOpt, JsonOpt, TokenOpt, client_for
from edgectl.output import console, emit_json
from protocol.tensors import InputError, decode_tensor, encode_tensor


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

    client = client_for(controller, token)
    client.device(device)  # an unknown device is the first thing to report
    arrays = load_inputs(input_file)
    result = client.infer(device, model, {k: encode_tensor(v) for k, v in arrays.items()}, timeout)
    outputs = {k: decode_tensor(k, v) for k, v in result["outputs"].items()}
    if as_json:
        meta = {k: v for k, v in result.items() if k != "outputs"}
        shown = {k: {"shape": list(v.shape), "dtype": str(v.dtype), "data": v.tolist()} for k, v in outputs.items()}
        return emit_json({**meta, "outputs": shown})
    console.print(
        f"{result['model_name']}@{result['model_version']} on {result['backend']}: {result['latency_ms']:.2f} ms"
    )
    with np.printoptions(precision=4, threshold=20, edgeitems=3, linewidth=10**6):  # rich wraps it, under itself
        for key, value in outputs.items():
            say(console, f"{key} {value.dtype}{list(value.shape)} = {' '.join(str(value).split())}")


NPY_MAGIC = b"\x93NUMPY"
NPZ_MAGIC = b"PK\x03\x04"  # a zip archive of .npy files


def load_inputs(path: Path) -> dict[str, Any]:
    """Named arrays from .npz, or one unnamed array from .npy: the device gives it to the single input of the version
    it serves, whatever the format (TFLite models carry no signature on the controller)."""
    import numpy as np

    if not path.is_file():
        raise InputError(cannot_read("input", path))
    fix = "save the input with numpy.save (one array) or numpy.savez (arrays by input name)"
    with path.open("rb") as f:
        magic = f.read(6)
    if magic != NPY_MAGIC and magic[:4] != NPZ_MAGIC:  # numpy would offer to unpickle it (allow_pickle=)
        raise InputError(f"{path} is not a .npy/.npz file; {fix}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        if "pickle" in str(exc):
            raise InputError(f"{path} holds Python objects, not numeric arrays; {fix}") from None
        raise InputError(f"{path} is not a readable .npy/.npz file ({' '.join(str(exc).split())}); {fix}") from None
    if isinstance(loaded, np.ndarray):
        return {"": loaded}
    with loaded:
        return {key: loaded[key] for key in loaded.files}


COMMANDS = (infer,)
