"""Reference outputs from a model's own runtime at full precision: ONNX Runtime CPU for .onnx, LiteRT for .tflite."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .catalog import ZooModel
from .fetch import model_path

ORT_DTYPES: dict[str, type] = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_, "tensor(string)": np.object_,
}  # fmt: skip


def _resolve(model_or_path: ZooModel | Path | str, format: str | None) -> tuple[Path, str]:
    if isinstance(model_or_path, ZooModel):
        return model_path(model_or_path), format or model_or_path.format
    path = Path(model_or_path)
    fmt = format or path.suffix.lstrip(".")
    if fmt not in ("onnx", "tflite"):
        raise ValueError(f"unknown model format {fmt!r} for {path}")
    return path, fmt


@lru_cache(maxsize=8)
def _ort_session(path: str, mtime_ns: int) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def ort_session(path: Path) -> Any:
    """A cached CPU InferenceSession (reloaded when the file changes)."""
    return _ort_session(str(path), path.stat().st_mtime_ns)


def _to_array(value: Any) -> np.ndarray:
    """ONNX Runtime's non-tensor outputs as arrays: ZipMap's list of {class: prob} -> float32 [N, classes] in the
    dicts' key order; other sequences are stacked."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, list) and value and isinstance(value[0], dict):
        keys = list(value[0])
        return np.asarray([[row[k] for k in keys] for row in value], dtype=np.float32)
    if isinstance(value, list):
        return np.stack([np.asarray(v) for v in value]) if value else np.zeros((0,), np.float32)
    return np.asarray(value)


def _run_onnx(path: Path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort_session(path)
    names = [o.name for o in sess.get_outputs()]
    values = sess.run(names, dict(inputs))
    return {n: _to_array(v) for n, v in zip(names, values, strict=True)}


def _run_tflite(path: Path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    details = interp.get_input_details()
    missing = {d["name"] for d in details} - set(inputs)
    if missing:
        raise KeyError(f"{path.name}: inputs missing {sorted(missing)}")
    for d in details:
        shape = tuple(np.shape(inputs[d["name"]]))
        if shape != tuple(d["shape"]):
            interp.resize_tensor_input(d["index"], list(shape), strict=False)
    interp.allocate_tensors()
    for d in details:
        interp.set_tensor(d["index"], np.ascontiguousarray(inputs[d["name"]], dtype=d["dtype"]))
    interp.invoke()
    return {d["name"]: np.array(interp.get_tensor(d["index"])) for d in interp.get_output_details()}


def native_outputs(
    model_or_path: ZooModel | Path | str, format: str | None = None, inputs: Mapping[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Run the model on its own runtime; outputs keyed by the model's output names. A ZooModel brings its path,
    format and (unless `inputs` is given) its realistic inputs; a path needs `inputs` (format from the suffix)."""
    path, fmt = _resolve(model_or_path, format)
    if inputs is None:
        if not isinstance(model_or_path, ZooModel):
            raise ValueError("inputs are required when a path is given")
        inputs = model_or_path.inputs()
    return _run_onnx(path, inputs) if fmt == "onnx" else _run_tflite(path, inputs)


def input_specs(model_or_path: ZooModel | Path | str, format: str | None = None) -> list[tuple[str, list, type]]:
    """(name, shape, numpy dtype) per input as the runtime declares it; a dynamic dim is None."""
    path, fmt = _resolve(model_or_path, format)
    if fmt == "onnx":
        return [
            (i.name, [d if isinstance(d, int) and d > 0 else None for d in i.shape], ORT_DTYPES[i.type])
            for i in ort_session(path).get_inputs()
        ]
    from ai_edge_litert.interpreter import Interpreter

    return [
        (d["name"], [int(s) if s >= 0 else None for s in d["shape_signature"]], d["dtype"])
        for d in Interpreter(model_path=str(path)).get_input_details()
    ]


def unit_inputs(model_or_path: ZooModel | Path | str, format: str | None = None, fill: float = 1.0) -> dict:
    """Inputs with every dynamic dimension = 1: integer inputs filled with 1 (`fill` for 0), float inputs with a
    small constant. What a converter or profiler that knows nothing about the model would feed it."""
    out: dict[str, np.ndarray] = {}
    for name, shape, dtype in input_specs(model_or_path, format):
        dims = [1 if d is None else d for d in shape]
        integer = np.issubdtype(dtype, np.integer) or dtype is np.bool_
        out[name] = np.full(dims, int(fill) if integer else 0.1 * fill, dtype=dtype)
    return out
