"""A Jetson's GPU memory of a process: what nvmap, L4T's allocator for memory the GPU reaches (CUDA's and TensorRT's
buffers and engines among it), holds for it. A Jetson's CPU and GPU share one pool of RAM, and these pages are not
in the process' resident set (/proc/PID/statm), so a model's footprint there is its RSS plus its nvmap growth.

L4T lists nvmap's clients in debugfs, `sys/kernel/debug/nvmap/iovmm/clients` (nvmap_debug.c on the nvgpu stack,
JetPack 4 to 6; jetson-stats reads the same table from `iovmm/maps`): a header `CLIENT PROCESS PID SIZE`, one line
per client (`user  python3  4242  183296K`: a process opening /dev/nvmap more than once has several), then
`total ... K`. Each size is the client's handles, a shared one divided among its sharers. The file itself is
world-readable (0444) but debugfs is mounted root-only (0700, the kernel's default mode), so an agent running as its
own user reads nothing: then there is no figure (None) and one INFO line says why, on a Jetson only. Elsewhere (no
nvmap: a PC, a Raspberry Pi, a Thor on the nvidia.ko stack) the file is absent and nothing is said.

`root` is the filesystem root to read, as targets/probe.py's: tests point it at a fixture tree."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

CLIENTS = Path("sys/kernel/debug/nvmap/iovmm/clients")
JETSON_RELEASE = Path("etc/nv_tegra_release")  # as targets/probe.py tells a Jetson
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_explained: set[Path] = set()


def parse_clients(text: str, pid: int) -> int:
    """Bytes nvmap holds for `pid`: the sum of its clients' sizes (0 where it has none: no GPU use yet)."""
    total = 0
    for line in text.splitlines():
        parts = line.split()  # the process name may hold spaces: PID and SIZE are read from the right
        if len(parts) < 4 or not parts[-2].isdigit() or int(parts[-2]) != pid:
            continue
        size, unit = parts[-1][:-1], parts[-1][-1:].upper()
        if size.isdigit() and unit in _UNITS:
            total += int(size) * _UNITS[unit]
    return total


def nvmap_bytes(pid: int | str = "self", root: Path = Path("/")) -> int | None:
    """GPU (nvmap) memory of a process, in bytes; None where the clients table is absent or cannot be read."""
    number = os.getpid() if pid == "self" else int(pid)
    path = root / CLIENTS
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        _explain(root, path, exc)
        return None
    return parse_clients(text, number)


def _explain(root: Path, path: Path, exc: Exception) -> None:
    """One INFO line per root, and only on a Jetson, where the figure is missing for want of access."""
    if root in _explained or not (root / JETSON_RELEASE).exists():
        return
    _explained.add(root)
    if isinstance(exc, PermissionError):
        why = "debugfs is readable by root only"
    elif isinstance(exc, FileNotFoundError):
        why = "absent: debugfs not mounted, or no nvmap on this kernel"
    else:
        why = str(exc) or type(exc).__name__
    log.info("Jetson GPU (nvmap) memory is not in model footprints, only resident memory: %s: %s (docs/jetson.md)",
             path, why)  # fmt: skip
