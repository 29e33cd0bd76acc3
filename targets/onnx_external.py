"""Finds tensors an ONNX file keeps outside itself (external data): the agent refuses such models whatever the
installed ONNX Runtime checks, since a path in a model could make a runtime read any file on the device. A small
protobuf walk, so the agent needs no `onnx` package."""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path

from protocol.errors import EdgeError

EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
# (message, field number) -> the message type that field holds, for every path that can lead to a tensor
_TENSOR, _SPARSE, _GRAPH, _NODE, _ATTR, _FUNC, _MODEL = "tensor", "sparse", "graph", "node", "attr", "func", "model"
_TRAINING = "training"
CHILDREN: dict[str, dict[int, str]] = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNC},
    _TRAINING: {1: _GRAPH, 2: _GRAPH},  # TrainingInfoProto's initialization and algorithm graphs
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _FUNC: {7: _NODE, 11: _ATTR},  # 11: attribute_proto, the defaults of a function's attributes
    _NODE: {5: _ATTR},
    _ATTR: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
}


class ExternalData(EdgeError):
    """An ONNX model that keeps tensors in other files."""

    code = "external_data"


def refuse_external_data(path: Path) -> None:
    """ExternalData naming the first tensor kept outside the file, or saying the file could not be checked: a model
    this walk cannot read is refused too (a runtime's parser may read what this one skipped)."""
    try:
        name = external_tensor(path)
    except (ValueError, OSError) as exc:
        raise ExternalData(
            f"the model could not be checked for tensors kept in other files ({exc}); re-save it with onnx.save_model "
            "(a valid ONNX protobuf with its weights inside)"
        ) from None
    if name is not None:
        raise ExternalData(
            f"the model keeps tensor {name!r} in another file (ONNX external data), which this agent never loads: "
            "save it with its weights inside (onnx.save_model(model, path, save_as_external_data=False))"
        )


def external_tensor(path: Path) -> str | None:
    """The name of the first tensor stored outside the file, or None; ValueError when it is not an ONNX protobuf."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return _search(buf, 0, len(buf), _MODEL)


def _search(buf: mmap.mmap, start: int, end: int, kind: str) -> str | None:
    if kind == _TENSOR:
        return _external_name(buf, start, end)
    children = CHILDREN[kind]
    for field, wire, begin, stop in _fields(buf, start, end):
        if wire == 2 and field in children:
            found = _search(buf, begin, stop, children[field])
            if found is not None:
                return found
    return None


def _external_name(buf: mmap.mmap, start: int, end: int) -> str | None:
    """Any sign of external data counts, whatever comes after it (fail closed): an external_data entry, or a
    data_location whose low 32 bits read EXTERNAL (protobuf keeps an enum's varint as an int32, so 1 + 2**32 is
    EXTERNAL to ONNX Runtime; a later DEFAULT does not clear it here)."""
    name, external = "", False
    for field, wire, begin, stop in _fields(buf, start, end):
        if field == 8 and wire == 2:
            name = bytes(buf[begin:stop]).decode(errors="replace")
        elif field == 14 and wire == 0:
            external = external or (begin & 0xFFFFFFFF) == EXTERNAL
        elif field == 13 and wire == 2:  # an external_data entry (location, offset, ...)
            external = True
    return (name or "<unnamed>") if external else None


def _fields(buf: mmap.mmap, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field, wire type, value or start, end) of each field between start and end."""
    i = start
    while i < end:
        key, i = _varint(buf, i)
        field, wire = _tag(key)
        if wire == 0:
            value, i = _varint(buf, i)
            yield field, wire, value, i
        elif wire == 2:
            length, i = _varint(buf, i)
            if i + length > end:
                raise ValueError("truncated protobuf field")
            yield field, wire, i, i + length
            i += length
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        elif wire == 3:  # a group (deprecated, yet parsers skip it): past its end, whatever it holds
            i = _skip_group(buf, i, end, field)
        else:
            raise ValueError(f"not an ONNX protobuf (wire type {wire})")
    if i != end:
        raise ValueError("truncated protobuf field")


def _skip_group(buf: mmap.mmap, i: int, end: int, group: int, depth: int = 0) -> int:
    """The offset after the end-group key that closes `group` (nested groups skipped alike)."""
    if depth > 100:
        raise ValueError("protobuf groups nested too deep")
    while i < end:
        key, i = _varint(buf, i)
        field, wire = _tag(key)
        if wire == 4:
            if field != group:
                raise ValueError("mismatched protobuf end-group")
            return i
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire == 2:
            length, i = _varint(buf, i)
            i += length
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        elif wire == 3:
            i = _skip_group(buf, i, end, field, depth + 1)
        else:
            raise ValueError(f"not an ONNX protobuf (wire type {wire})")
    raise ValueError("unterminated protobuf group")


def _tag(key: int) -> tuple[int, int]:
    """(field number, wire type) as protobuf's C++ parser reads a tag: as 32 bits (ONNX Runtime took a 5-byte tag
    with bit 32 set as the field below it, so the walk must too)."""
    key &= 0xFFFFFFFF
    return key >> 3, key & 7


def _varint(buf: mmap.mmap, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated protobuf varint")
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return value, i
        shift += 7
