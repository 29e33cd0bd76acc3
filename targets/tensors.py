"""Tensor descriptions shared by every backend and the inference API, in Open Inference Protocol (v2) terms."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

# v2 datatype name -> numpy dtype name (BYTES is not served: edge vision/audio models take numbers)
V2_TO_NUMPY: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
NUMPY_TO_V2: dict[str, str] = {v: k for k, v in V2_TO_NUMPY.items()}


class InputError(ValueError):
    """A request whose tensors do not match the model: the message says what was expected."""


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output. Dynamic dimensions are -1."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    dim_names: tuple[str | None, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @property
    def numpy_dtype(self) -> str:
        return V2_TO_NUMPY[self.datatype]

    def shape_matches(self, shape: tuple[int, ...]) -> bool:
        if len(shape) != len(self.shape):
            return False
        return all(want < 0 or want == got for want, got in zip(self.shape, shape, strict=True))


def v2_datatype(dtype: Any) -> str:
    """v2 datatype name for a numpy dtype; raise InputError for unsupported ones."""
    import numpy as np

    name = np.dtype(dtype).name
    if name not in NUMPY_TO_V2:
        raise InputError(f"unsupported dtype {name}; supported: {', '.join(sorted(NUMPY_TO_V2))}")
    return NUMPY_TO_V2[name]


def check_inputs(specs: list[TensorSpec], arrays: dict[str, np.ndarray]) -> None:
    """Raise InputError naming the first mismatch in names, datatypes or shapes."""
    expected = {s.name: s for s in specs}
    missing = [n for n in expected if n not in arrays]
    unknown = [n for n in arrays if n not in expected]
    if unknown:
        raise InputError(f"unknown input(s) {unknown}; the model takes {sorted(expected)}")
    if missing:
        raise InputError(f"missing input(s) {missing}; the model takes {sorted(expected)}")
    for name, array in arrays.items():
        spec = expected[name]
        got = v2_datatype(array.dtype)
        if got != spec.datatype:
            raise InputError(f"input {name!r}: datatype {got}, expected {spec.datatype}")
        if not spec.shape_matches(tuple(array.shape)):
            raise InputError(f"input {name!r}: shape {list(array.shape)}, expected {list(spec.shape)} (-1 = any)")


def synthetic_inputs(specs: list[TensorSpec], dynamic_size: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs shaped from the model (dynamic dims -> `dynamic_size`) for warm-up and trials."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in specs:
        shape = tuple(dynamic_size if d < 0 else d for d in spec.shape)
        dtype = np.dtype(spec.numpy_dtype)
        if dtype.kind == "f":
            arrays[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            arrays[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            arrays[spec.name] = rng.integers(0, 2, shape).astype(dtype)
    return arrays


def encode_tensor(array: np.ndarray) -> dict[str, Any]:
    """Tensor as JSON-safe dict for MQTT RPC: datatype, shape and base64 of the little-endian bytes."""
    import base64

    import numpy as np

    array = np.ascontiguousarray(array)
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return {"datatype": v2_datatype(array.dtype), "shape": list(array.shape), "b64": base64.b64encode(little).decode()}


def decode_tensor(name: str, obj: Any) -> np.ndarray:
    """Inverse of encode_tensor; InputError names the tensor and what is wrong with it."""
    import base64
    import binascii

    import numpy as np

    if not isinstance(obj, dict) or not {"datatype", "shape", "b64"} <= obj.keys():
        raise InputError(f"tensor {name!r}: expected an object with datatype, shape and b64")
    datatype, shape = obj["datatype"], obj["shape"]
    if datatype not in V2_TO_NUMPY:
        raise InputError(f"tensor {name!r}: unsupported datatype {datatype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InputError(f"tensor {name!r}: shape must be a list of non-negative integers")
    try:
        raw = base64.b64decode(obj["b64"], validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise InputError(f"tensor {name!r}: b64 is not valid base64") from None
    dtype = np.dtype(V2_TO_NUMPY[datatype]).newbyteorder("<")
    count = int(np.prod(shape)) if shape else 1
    if len(raw) != count * dtype.itemsize:
        raise InputError(f"tensor {name!r}: {len(raw)} bytes do not fit shape {shape} of {datatype}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
