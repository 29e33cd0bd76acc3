"""The tensor codec of the wire contract (Open Inference Protocol v2 datatypes): what remote inference over MQTT and
edgectl send, and what every side decodes with the same checks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from protocol.errors import EdgeError

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


class InputError(EdgeError, ValueError):
    """A request whose tensors do not match the model: the message says what was expected."""

    code = "bad_input"


_V2_BY_DTYPE: dict[Any, str] = {}  # dtype -> v2 name: dtype.name is a slow property, and this is on every request


def v2_datatype(dtype: Any) -> str:
    """v2 datatype name for a numpy dtype; raise InputError for unsupported ones."""
    try:
        return _V2_BY_DTYPE[dtype]
    except (KeyError, TypeError):  # not seen yet, or not hashable
        pass
    import numpy as np

    name = np.dtype(dtype).name
    if name not in NUMPY_TO_V2:
        raise InputError(f"unsupported dtype {name}; supported: {', '.join(sorted(NUMPY_TO_V2))}")
    if isinstance(dtype, np.dtype):
        _V2_BY_DTYPE[dtype] = NUMPY_TO_V2[name]
    return NUMPY_TO_V2[name]


def encode_tensor(array: np.ndarray) -> dict[str, Any]:
    """Tensor as JSON-safe dict for MQTT RPC: datatype, shape and base64 of the little-endian bytes."""
    import base64

    import numpy as np

    array = np.ascontiguousarray(array)
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    data = base64.b64encode(little.data).decode()
    return {"datatype": v2_datatype(array.dtype), "shape": list(array.shape), "b64": data}


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
