"""Request bodies read under a size limit: a model streamed and hashed to a temp file, small data into memory."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path

from protocol.errors import EdgeError


class TooLarge(EdgeError):
    """The body exceeds the limit the controller accepts for it."""

    code = "too_large"


@dataclass(frozen=True)
class Received:
    """An upload on disk, not yet registered: its temp path, sha256 and size."""

    path: Path
    sha256: str
    size: int


WRITE_BATCH = 4 << 20  # bytes gathered before one write+hash on a worker thread (the event loop keeps serving)


async def receive_file(chunks: AsyncIterable[bytes], tmp: Path, limit: int, too_large: str) -> Received:
    """Write `chunks` to `tmp` while hashing them (on a worker thread, a few MiB at a time), fsynced; past `limit`
    bytes raise TooLarge(`too_large`). `tmp` is removed whenever this does not return, a client that went away
    included."""
    h, size = hashlib.sha256(), 0

    def write(f, data: bytes) -> None:
        h.update(data)
        f.write(data)

    try:
        with open(tmp, "wb") as f:
            pending = bytearray()
            async for block in chunks:
                size += len(block)
                if size > limit:
                    raise TooLarge(too_large)
                pending += block
                if len(pending) >= WRITE_BATCH:
                    await asyncio.to_thread(write, f, bytes(pending))
                    pending.clear()
            await asyncio.to_thread(write, f, bytes(pending))
            f.flush()
            await asyncio.to_thread(os.fsync, f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Received(tmp, h.hexdigest(), size)


async def receive_bytes(chunks: AsyncIterable[bytes], limit: int, too_large: str) -> bytes:
    """The whole body in memory; past `limit` bytes, TooLarge(`too_large`)."""
    data = bytearray()
    async for block in chunks:
        data += block
        if len(data) > limit:
            raise TooLarge(too_large)
    return bytes(data)
