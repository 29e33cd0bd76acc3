"""Decoding JSON messages within their limits, and the binary frame that carries artifact chunks at wire speed."""

from __future__ import annotations

import struct
from typing import TypeVar

from pydantic import ValidationError

from protocol.errors import ProtocolError
from protocol.limits import MAX_CHUNK_BYTES, MAX_FRAME_HEADER_BYTES, MAX_JSON_BYTES, SCHEMA_VERSION
from protocol.messages import ChunkHeader, Message

M = TypeVar("M", bound=Message)

_FRAME_MAGIC = b"EF\x01"
_FRAME_PREFIX = struct.Struct(">3sI")


def decode(model: type[M], payload: bytes) -> M:
    """Parse a JSON message, enforcing the size limit and schema version; raise ProtocolError with the reason."""
    if len(payload) > MAX_JSON_BYTES:
        raise ProtocolError(f"message of {len(payload)} bytes exceeds the {MAX_JSON_BYTES}-byte limit")
    try:
        msg = model.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "payload"
        raise ProtocolError(f"invalid {model.__name__}: {where}: {first.get('msg')}") from None
    if msg.v > SCHEMA_VERSION:
        raise ProtocolError(f"{model.__name__} schema version {msg.v} is newer than supported {SCHEMA_VERSION}")
    return msg


def encode_frame(header: ChunkHeader, data: bytes | memoryview) -> bytes:
    """Binary frame: magic, 4-byte header length, JSON header, raw bytes (no base64: chunks stay at wire speed)."""
    head = header.model_dump_json(exclude_none=True).encode()
    return b"".join((_FRAME_PREFIX.pack(_FRAME_MAGIC, len(head)), head, data))


def decode_frame(payload: bytes) -> tuple[ChunkHeader, memoryview]:
    """The header and the bytes of a frame; ProtocolError when the frame lies about its lengths."""
    if len(payload) < _FRAME_PREFIX.size:
        raise ProtocolError("frame shorter than its prefix")
    magic, head_len = _FRAME_PREFIX.unpack_from(payload)
    if magic != _FRAME_MAGIC:
        raise ProtocolError("not an artifact frame (bad magic)")
    if head_len > MAX_FRAME_HEADER_BYTES or _FRAME_PREFIX.size + head_len > len(payload):
        raise ProtocolError(f"frame header length {head_len} is out of bounds")
    start = _FRAME_PREFIX.size
    try:
        header = ChunkHeader.model_validate_json(payload[start : start + head_len])
    except ValidationError as exc:
        raise ProtocolError(f"invalid chunk header: {exc.errors()[0].get('msg')}") from None
    data = memoryview(payload)[start + head_len :]
    if header.error is None and len(data) != header.length:
        raise ProtocolError(f"chunk carries {len(data)} bytes, header says {header.length}")
    if len(data) > MAX_CHUNK_BYTES:
        raise ProtocolError(f"chunk of {len(data)} bytes exceeds the {MAX_CHUNK_BYTES}-byte limit")
    return header, data
