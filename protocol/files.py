"""Files written durably and hashed by sha256: what the device's store, the controller's artifact store and the backend
choice cache share (the agent runs on Python 3.9: nothing newer here)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

BLOCK_BYTES = 1 << 20  # read a MiB at a time: hashing a model never holds it in memory


def fsync_dir(path: Path) -> None:
    """Make a rename in this directory durable (POSIX: the directory entry is data of the directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file already written (and closed) to disk before it is renamed into place."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def atomic_write(path: Path, data: bytes) -> None:
    """Write, fsync, rename, fsync the directory: readers see the old or the new file, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def hash_file(path: Path, limit: int | None = None) -> hashlib._Hash:
    """A sha256 hasher fed the first `limit` bytes of a file (all of it by default): a download resumes from it."""
    h = hashlib.sha256()
    remaining = path.stat().st_size if limit is None else limit
    with open(path, "rb") as f:
        while remaining > 0:
            block = f.read(min(BLOCK_BYTES, remaining))
            if not block:
                break
            h.update(block)
            remaining -= len(block)
    return h


def sha256_file(path: Path) -> str:
    """The sha256 of a file on disk, in hex."""
    return hash_file(path).hexdigest()
