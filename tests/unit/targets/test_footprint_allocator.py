"""pin_allocator (targets/footprint.py): with glibc's thresholds set, a block freed does not move where the next one
goes, so a measured load lands alike in a fresh trial worker and in an agent that has freed big buffers before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

# In a fresh process: free a 4 MiB block (unpinned glibc raises its threshold to 4 MiB), then say whether a 1 MiB
# block is served by its own mmap (mallinfo2's hblkhd grows) and what a 4 MiB load's transient 4 MiB left resident.
_PROBE = """
import ctypes, json, sys
sys.path.insert(0, {root!r})
from targets.footprint import pin_allocator, rss_bytes
pinned = pin_allocator(loading={mode!r} == "load") if {mode!r} != "none" else False
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in "arena ordblks smblks hblks hblkhd usm fsm uord ford keep".split()]
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
libc.free(libc.malloc(4 << 20))
before = libc.mallinfo2().hblkhd
block = libc.malloc(1 << 20)
print(json.dumps({{"pinned": pinned, "mmapped": libc.mallinfo2().hblkhd > before}}))
"""


def _probe(mode: str) -> dict[str, bool]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(root=str(ROOT), mode=mode)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


@pytest.mark.skipif(not hasattr(os, "confstr") or "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or ""),
                    reason="glibc's malloc only")  # fmt: skip
def test_thresholds_do_not_move_with_a_big_free():
    assert _probe("none") == {"pinned": False, "mmapped": False}  # the free raised glibc's threshold above 1 MiB
    assert _probe("load") == {"pinned": True, "mmapped": True}  # a measured load: 1 MiB still gets its own mmap
    assert _probe("serve") == {"pinned": True, "mmapped": False}  # serving: the heap reuses it, as at the ceiling


_HOLES = """
import ctypes, json, sys
sys.path.insert(0, {root!r})
from targets.footprint import pin_allocator, release_free, rss_bytes
pin_allocator(loading=True)
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
blocks = [libc.malloc(64 << 10) for _ in range(640)]  # 40 MiB of heap blocks (under the threshold), touched
for b in blocks:
    ctypes.memset(b, 1, 64 << 10)
keep = libc.malloc(64 << 10)  # the heap's top stays in use: what is freed below it is a hole, not trimmed on free
for b in blocks:
    libc.free(b)
held = rss_bytes()
release_free()
print(json.dumps({{"held_mb": held / 2**20, "after_mb": rss_bytes() / 2**20}}))
"""


@pytest.mark.skipif(not hasattr(os, "confstr") or "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or ""),
                    reason="glibc's malloc only")  # fmt: skip
def test_release_free_gives_holes_back():
    out = subprocess.run(
        [sys.executable, "-c", _HOLES.format(root=str(ROOT))], capture_output=True, text=True, check=True
    )
    figures = json.loads(out.stdout)
    assert figures["held_mb"] - figures["after_mb"] > 30, figures  # of the 40 MiB freed below the top
