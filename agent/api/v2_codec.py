"""The Open Inference Protocol v2 codec, pure (no sockets), shared by the HTTP API and remote inference.

A request's JSON and binary tensor section in, numpy arrays out, and the response back. No numpy at import: numpy is
imported by the first request that carries tensors. JSON goes through orjson when it is installed, the stdlib `json`
otherwise. Every malformed request raises InputError (the caller's 400).

The binary tensor extension's fast path: a client sends the same inference header request after request, so a header
seen before is not parsed again (its `RequestPlan`: where each tensor lies in the binary section), input tensors are
numpy views of the request body (no copy), outputs go out as views of the result arrays, and a response header for the
same output names, types and shapes is encoded once."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from protocol.errors import EdgeError
from protocol.tensors import NUMPY_TO_V2, V2_TO_NUMPY, InputError, decode_tensor, encode_tensor

if TYPE_CHECKING:
    from agent.serving.table import LoadedModel

try:
    import orjson

    loads: Callable[[bytes], Any] = orjson.loads
    dumps: Callable[[Any], bytes] = orjson.dumps
except ImportError:  # pragma: no cover - orjson is optional
    import json

    loads = json.loads

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


SUPPORTED = ", ".join(V2_TO_NUMPY)
ITEMSIZE = {"BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1, "INT16": 2, "INT32": 4,
            "INT64": 8, "FP16": 2, "FP32": 4, "FP64": 8}  # fmt: skip
Wanted = list[tuple[str, bool]]  # requested outputs, each with whether it goes as binary
JSON_BYTES_PER_VALUE = 24  # what one number takes in a JSON request at most ("-1.2345678901234567e-05, ")
JSON_SLACK_BYTES = 64 << 10  # the rest of a JSON request: names, shapes, parameters
_CACHE_MAX = 256  # request plans and response headers kept (cleared when full: clients repeat a handful)
_VIEW_MIN_BYTES = 1 << 16  # smaller outputs are copied with tobytes(): cheaper than a memoryview

_numpy: Any = None
_V2_BY_DTYPE: dict[Any, str] = {}  # numpy dtype -> v2 datatype (dtype.name is a slow Python-level property)


class OutputError(EdgeError):
    """An output the protocol cannot carry (a dtype with no v2 datatype): the server's fault, not the request's."""

    code = "unsupported_output"


def _np() -> Any:
    """numpy, imported on first use so that an idle agent never loads it."""
    global _numpy
    if _numpy is None:
        import numpy

        _V2_BY_DTYPE.update({numpy.dtype(name): v2 for name, v2 in NUMPY_TO_V2.items()})
        _numpy = numpy
    return _numpy


# -- requests ----------------------------------------------------------------------------------------------------


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview | None]:
    """The inference header (a JSON object) and the binary tensor section after it, when the request has one."""
    binary: memoryview | None = None
    header: bytes = body
    if header_length is not None:
        hlen = parse_header_length(header_length, len(body))
        header, binary = body[:hlen], memoryview(body)[hlen:]
    return _parse_header(header), binary


def _parse_header(header: bytes) -> dict[str, Any]:
    try:
        request = loads(header)
    except ValueError as exc:
        raise InputError(f"malformed JSON in the request body: {exc}") from None
    if type(request) is not dict:
        raise InputError("the request body must be a JSON object with 'inputs'")
    return request


@dataclass(frozen=True)
class RequestPlan:
    """A binary request's inference header, parsed and checked once: each input's name, numpy dtype, shape, element
    count and offset in the binary section, the requested outputs, and the `outputs` specs they were checked against."""

    header: dict[str, Any]
    inputs: tuple[tuple[str, Any, tuple[int, ...], int, int], ...]
    size: int  # bytes of the binary section
    wanted: Wanted | None
    binary_default: bool
    outputs: Sequence[Any]


def parse_header_length(value: str, body_length: int) -> int:
    """Inference-Header-Content-Length, checked against the body."""
    try:
        hlen = int(value)
    except ValueError:
        raise InputError(f"Inference-Header-Content-Length {value!r} is not an integer") from None
    if not 0 <= hlen <= body_length:
        raise InputError(f"Inference-Header-Content-Length {hlen} does not fit a body of {body_length} bytes")
    return hlen


def plan_request(header: dict[str, Any], outputs: Sequence[Any]) -> RequestPlan | None:
    """The plan of a request whose inputs are all binary (None otherwise: tensors in the JSON are not reused)."""
    inputs = header.get("inputs")
    if type(inputs) is not list or not inputs:
        return None
    np = _np()
    entries = []
    offset = 0
    seen: dict[str, Any] = {}
    for item in inputs:
        name, datatype, shape = _declared(item, seen)
        seen[name] = True
        parameters = item.get("parameters")
        size = parameters.get("binary_data_size") if type(parameters) is dict else None
        count = math.prod(shape)
        if type(size) is not int or size != count * ITEMSIZE[datatype]:
            return None
        entries.append((name, np.dtype(V2_TO_NUMPY[datatype]), tuple(shape), count, offset))
        offset += size
    wanted, binary_default = requested_outputs(header, outputs)
    return RequestPlan(header, tuple(entries), offset, wanted, binary_default, outputs)


def decode_planned(plan: RequestPlan, binary: memoryview) -> dict[str, Any] | None:
    """The plan's input tensors as views of `binary`; None when the section does not match the plan (the full
    decode then names what is wrong)."""
    if len(binary) != plan.size:
        return None
    frombuffer = _numpy.frombuffer
    arrays: dict[str, Any] = {}
    for name, dtype, shape, count, offset in plan.inputs:
        if not count:
            arrays[name] = _numpy.empty(shape, dtype=dtype)
            continue
        array = frombuffer(binary, dtype, count, offset).reshape(shape)
        arrays[name] = array if array.flags.aligned else array.copy()
    return arrays


def decode_binary_request(
    body: bytes, header_bytes_length: str, outputs: Sequence[Any], plans: dict[bytes, RequestPlan]
) -> tuple[dict[str, Any], dict[str, Any], Wanted | None, bool]:
    """A binary-extension request: (header, input arrays, requested outputs, binary default), through `plans` (a
    cache of the headers seen, by their bytes) when the header was seen before for the same `outputs`."""
    hlen = parse_header_length(header_bytes_length, len(body))
    head = body[:hlen]
    binary = memoryview(body)[hlen:]
    plan = plans.get(head)
    if plan is not None and plan.outputs is outputs:
        arrays = decode_planned(plan, binary)
        if arrays is not None:
            return plan.header, arrays, plan.wanted, plan.binary_default
    header = _parse_header(head)
    arrays = decode_inputs(header.get("inputs"), binary)
    wanted, binary_default = requested_outputs(header, outputs)
    if "id" not in header and len(head) <= 16384:
        plan = plan_request(header, outputs)
        if plan is not None:
            if len(plans) >= _CACHE_MAX:
                plans.clear()
            plans[head] = plan
    return header, arrays, wanted, binary_default


def json_limit(specs: Sequence[Any], setting: int) -> int:
    """How large a JSON request for a model with these input `specs` may be: the setting, or more where the model's
    fixed input sizes need more (an 800x608 RGB image is about 28 MB of JSON)."""
    counts = [math.prod(spec.shape) for spec in specs]
    if not counts or any(d < 0 for spec in specs for d in spec.shape):
        return setting
    return max(setting, sum(counts) * JSON_BYTES_PER_VALUE + JSON_SLACK_BYTES)


def decode_inputs(inputs: Any, binary: memoryview | None) -> dict[str, Any]:
    """The request's input tensors as numpy arrays (JSON `data`, or bytes from the binary section)."""
    if type(inputs) is not list or not inputs:
        raise InputError("the request needs 'inputs': a non-empty list of tensors")
    arrays: dict[str, Any] = {}
    offset = 0
    for item in inputs:
        name, datatype, shape = _declared(item, arrays)
        parameters = item.get("parameters")
        size = parameters.get("binary_data_size") if type(parameters) is dict else None
        if size is None:
            arrays[name] = _from_json(name, datatype, shape, item.get("data"))
            continue
        arrays[name] = _from_binary(name, datatype, shape, size, binary, offset)
        offset += size
    if binary is not None and offset != len(binary):
        raise InputError(
            f"{len(binary) - offset} bytes of binary data beyond what the inputs' binary_data_size declare"
        )
    return arrays


def _declared(item: Any, seen: dict[str, Any]) -> tuple[str, str, list[int]]:
    """An input's name, datatype and shape, checked."""
    if type(item) is not dict or type(item.get("name")) is not str:
        raise InputError("each input must be an object with a string 'name', 'datatype', 'shape' and 'data'")
    name = item["name"]
    if name in seen:
        raise InputError(f"input {name!r} is given twice")
    datatype = item.get("datatype")
    if V2_TO_NUMPY.get(datatype) is None:  # type: ignore[arg-type]
        if datatype == "BYTES":
            raise InputError(f"input {name!r}: datatype BYTES is not supported; supported: {SUPPORTED}")
        raise InputError(f"input {name!r}: unknown datatype {datatype!r}; supported: {SUPPORTED}")
    shape = item.get("shape")
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
        raise InputError(f"input {name!r}: 'shape' must be a list of non-negative integers, got {shape!r}")
    return name, cast(str, datatype), shape


def _from_json(name: str, datatype: str, shape: list[int], data: Any) -> Any:
    if data is None:
        raise InputError(f"input {name!r} has no 'data' (nor parameters.binary_data_size)")
    count = math.prod(shape)
    try:
        array = _np().asarray(data, dtype=V2_TO_NUMPY[datatype])
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(f"input {name!r}: 'data' is not a valid {datatype} tensor: {exc}") from None
    if array.size != count:
        raise InputError(f"input {name!r}: {array.size} values in 'data' for shape {shape}, expected {count}")
    return array.reshape(shape)


def _from_binary(name: str, datatype: str, shape: list[int], size: Any, binary: memoryview | None, offset: int) -> Any:
    if binary is None:
        raise InputError(f"input {name!r} has binary_data_size but the request has no Inference-Header-Content-Length")
    if type(size) is not int or size < 0:
        raise InputError(f"input {name!r}: binary_data_size must be a non-negative integer, got {size!r}")
    count = math.prod(shape)
    expected = count * ITEMSIZE[datatype]
    if size != expected:
        raise InputError(
            f"input {name!r}: {size} bytes of binary data for {datatype} shape {shape}, expected {expected}"
        )
    if offset + size > len(binary):
        raise InputError(
            f"input {name!r}: binary_data_size {size} runs past the end of the body ({len(binary) - offset} bytes left)"
        )
    np = _np()
    if not count:
        return np.empty(shape, dtype=V2_TO_NUMPY[datatype])
    array = np.frombuffer(binary, dtype=V2_TO_NUMPY[datatype], count=count, offset=offset).reshape(shape)
    return array if array.flags.aligned else array.copy()


def requested_outputs(request: dict[str, Any], outputs: Sequence[Any]) -> tuple[Wanted | None, bool]:
    """The outputs asked for (None: all of the model's `outputs` specs), and the request-wide binary default."""
    parameters = request.get("parameters")
    binary_default = type(parameters) is dict and bool(parameters.get("binary_data_output"))
    requested = request.get("outputs")
    if requested is None:
        return None, binary_default
    if type(requested) is not list:
        raise InputError("'outputs' must be a list of {'name': ...} objects")
    known = [spec.name for spec in outputs]
    wanted = []
    for item in requested:
        if type(item) is not dict or type(item.get("name")) is not str:
            raise InputError("each requested output must be an object with a string 'name'")
        name = item["name"]
        if name not in known:
            raise InputError(f"unknown output {name!r}; the model produces {known}")
        wanted.append((name, _as_binary(name, item.get("parameters"), binary_default)))
    return wanted or None, binary_default


def _as_binary(name: str, parameters: Any, default: bool) -> bool:
    if type(parameters) is not dict:
        return default
    if parameters.get("classification"):
        raise InputError(f"output {name!r}: the classification extension is not supported")
    return bool(parameters["binary_data"]) if "binary_data" in parameters else default


# -- responses ---------------------------------------------------------------------------------------------------


NONFINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}  # protobuf's JSON mapping of float specials


def json_data(array: Any) -> list[Any]:
    """A tensor's values for JSON: NaN and infinities as the strings "NaN", "Infinity", "-Infinity" (JSON has no
    such numbers: bare NaN is invalid JSON, and orjson would write null); requests may send them the same way."""
    np = _np()
    flat = array.ravel()
    if flat.dtype.kind != "f" or np.isfinite(flat).all():
        return flat.tolist()
    return [v if math.isfinite(v) else NONFINITE[str(v)] for v in flat.tolist()]


def result_head(model_name: str, model_version: str) -> dict[str, Any]:
    """What every inference result starts with, over HTTP and over MQTT."""
    return {"model_name": model_name, "model_version": model_version}


_HEADS: dict[tuple[Any, ...], bytes] = {}  # all-binary response headers by model, version and output layout


def raw_bytes(array: Any) -> bytes | memoryview:
    """A result's bytes for the binary section: a view of a large C-contiguous array (no copy), else a copy."""
    if array.nbytes >= _VIEW_MIN_BYTES and array.flags.c_contiguous:
        try:
            return memoryview(array).cast("B")
        except (TypeError, ValueError):  # a dtype the buffer protocol cannot cast
            pass
    return array.tobytes()


def encode_response(
    head: dict[str, Any], request: dict[str, Any], results: dict[str, Any], wanted: Wanted | None, binary_default: bool
) -> tuple[bytes, list[bytes | memoryview]]:
    """The response's JSON header and the binary sections that follow it (in the header's order)."""
    _np()  # the dtype table
    order = wanted or [(name, binary_default) for name in results]
    if "id" not in request and all(as_binary for _, as_binary in order):
        key = (head["model_name"], head["model_version"], *((n, results[n].dtype, results[n].shape) for n, _ in order))
        cached = _HEADS.get(key)
        if cached is not None:
            return cached, [raw_bytes(results[name]) for name, _ in order]
        encoded, blobs = _encode(head, request, results, order)
        if len(_HEADS) >= _CACHE_MAX:
            _HEADS.clear()
        _HEADS[key] = encoded
        return encoded, blobs
    return _encode(head, request, results, order)


def _encode(
    head: dict[str, Any], request: dict[str, Any], results: dict[str, Any], order: Wanted
) -> tuple[bytes, list[bytes | memoryview]]:
    outputs = []
    blobs: list[bytes | memoryview] = []
    for name, as_binary in order:
        array = results[name]
        datatype = _V2_BY_DTYPE.get(array.dtype)
        if datatype is None:
            raise OutputError(f"output {name!r} has dtype {array.dtype.name}, which the protocol cannot carry")
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if as_binary:
            raw = raw_bytes(array)
            entry["parameters"] = {"binary_data_size": array.nbytes}
            blobs.append(raw)
        else:
            entry["data"] = json_data(array)
        outputs.append(entry)
    if "id" in request:
        head["id"] = request["id"]
    head["outputs"] = outputs
    return dumps(head), blobs


def model_metadata(model: LoadedModel) -> dict[str, Any]:
    backend = model.backend
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": backend.label,
        "inputs": [spec.as_dict() for spec in backend.inputs],
        "outputs": [spec.as_dict() for spec in backend.outputs],
        "parameters": {"precision": backend.precision, **backend.metadata},
    }


# -- the base64 tensor maps of remote inference (MQTT RPC) -------------------------------------------------------


def decode_tensor_map(raw: Any) -> dict[str, Any]:
    """`{name: {datatype, shape, b64}}` as numpy arrays."""
    if not isinstance(raw, dict):
        raise InputError("params.inputs must be an object of named tensors")
    return {key: decode_tensor(key, value) for key, value in raw.items()}


def encode_tensor_map(arrays: dict[str, Any]) -> dict[str, Any]:
    return {key: encode_tensor(value) for key, value in arrays.items()}
