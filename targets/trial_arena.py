"""ONNX Runtime's CPU memory arena chosen per model in the trial (issue 27, point 5). The arena keeps the largest
run's buffers resident for good; off, each run's buffers go back to the heap or the system. That saves memory where
a model has large transient tensors (a Tile to 16 MiB, then a MatMul: 42.8 -> 10.8 MiB) and costs it where it has
many small ones (the heap keeps the fragments: ppocr_v4_det 46 -> 65 MiB, bench/arena.py), so it is measured.

Only the trial's winner when it is onnxruntime:cpu, once the trial is over: a fresh worker loads it with the arena
off and runs it on the inputs the reference ran (as the trial measured the arena-on load in its own fresh worker:
a process' earlier frees decide what a later load adds), then loads it with the arena on too and times both turn
about. Off only where it saves at least SAVE_MIB and SAVE_SHARE of the steady figure, its peak is not higher, and
its p50 and its CPU time per run are both within MAX_SLOWER of the arena's (on a busy box the wall time alone swung
x0.7-1.7 between two runs of the same comparison; the CPU time far less)."""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from targets import trial_spare
from targets.candidates import Candidate
from targets.footprint import Meter
from targets.inputs import Inputs, pack_samples, unpack_samples
from targets.timing import best_block_ms, turn_about
from targets.trial import load

log = logging.getLogger(__name__)

CANDIDATE = "onnxruntime:cpu"
OPTION = "cpu_mem_arena"  # the backend option (targets/backends/onnxruntime.py)
SAVE_MIB = 8.0  # off must save at least this much steady memory ...
SAVE_SHARE = 0.10  # ... and this share of the arena-on steady figure (smaller differences are the heap's noise)
MAX_SLOWER = 1.10  # and its p50 at most this many times the arena's
ROUNDS = 3  # turn about, each setting MIN_RUNS or more per round: a 400 ms model adds ~5 s of timing
MIN_RUNS = 2
TIMEOUT_S = 300.0
# Measured only where memory is tight enough for the answer to matter: the winner's arena-on footprint at least this
# share of the agent's memory budget (a 350 MiB box: models from ~22 MiB; 24 GiB: from 1.5 GiB). The measurement
# costs a fresh worker and a timing (0.5-7 s here), which a roomy box's deployment need not wait for.
BUDGET_SHARE = 1 / 16


def applies(chosen: Candidate, options: dict[str, Any], rss_mb: float | None = None, from_mb: float = 0.0) -> bool:
    """Whether the trial measures the arena for this winner: not where options already set it, nor where its
    arena-on footprint (`rss_mb`) is under `from_mb` (the budget's BUDGET_SHARE: a small share of a roomy box)."""
    if chosen.name != CANDIDATE or OPTION in options or OPTION in chosen.options:
        return False
    return from_mb <= 0 or (rss_mb is not None and rss_mb >= from_mb)


def saves(on: dict[str, Any], off: dict[str, Any]) -> str | None:
    """Why off does not save enough memory to be worth timing (None: it does); figures as `pick` takes them."""
    try:
        saved = on["rss_mb"] - off["rss_mb"]
        share = saved / max(on["rss_mb"], 1e-9)
        if saved < SAVE_MIB or share < SAVE_SHARE:
            rule = f"under {SAVE_MIB:g} MiB or {SAVE_SHARE:.0%}"
            return f"off saves {saved:.1f} MiB ({share:.0%}) of {on['rss_mb']:.1f}, {rule}"
        if off["peak_mb"] > on["peak_mb"]:
            return f"off saves {saved:.1f} MiB, but its peak is higher ({off['peak_mb']:.1f} vs {on['peak_mb']:.1f})"
    except (KeyError, TypeError):
        return f"a figure is missing (on {on}, off {off})"
    return None


def pick(on: dict[str, Any], off: dict[str, Any]) -> tuple[bool, str]:
    """(arena on?, why in one line) from both settings' rss_mb, peak_mb, p50_ms (absent: not timed) and cpu_ms (the
    CPU time of a run: off must stay within MAX_SLOWER by both)."""
    short = saves(on, off)
    if short is not None:
        return True, f"on: {short}"
    saved = on["rss_mb"] - off["rss_mb"]
    if not on.get("p50_ms") or not off.get("p50_ms"):
        return True, f"on: off saves {saved:.1f} MiB, but its p50 was not measured"
    slower = off["p50_ms"] / on["p50_ms"]
    cpu = off["cpu_ms"] / on["cpu_ms"] if on.get("cpu_ms") and off.get("cpu_ms") else slower
    figures = f"off saves {saved:.1f} MiB ({saved / on['rss_mb']:.0%}) of {on['rss_mb']:.1f} at p50 x{slower:.2f}"
    figures += f", CPU x{cpu:.2f}"
    if max(slower, cpu) > MAX_SLOWER:
        return True, f"on: {figures}, over x{MAX_SLOWER:g}"
    return False, f"off: {figures} (>= {SAVE_MIB:g} MiB and {SAVE_SHARE:.0%} saved, both within x{MAX_SLOWER:g})"


def measure_isolated(
    chosen: Candidate,
    path: Path,
    model_format: str,
    options: dict[str, Any],
    sets: list[Inputs],
    on: dict[str, Any],
    budget_s: float,
) -> dict[str, Any]:
    """The arena trial of the winner (`on`: its trial figures, arena on) in a fresh worker: the record reported in
    selection.memory (`chosen` "on"/"off", `why`, both settings' figures, the seconds it took). A worker that fails
    or dies leaves the arena on, saying why."""
    started = time.perf_counter()
    figures_on: dict[str, Any] = {k: on.get(k) for k in ("rss_mb", "peak_mb")}
    if (on.get("rss_mb") or 0.0) < SAVE_MIB:  # off cannot save SAVE_MIB of less: no worker for a small model
        return {"chosen": "on", "why": f"on: the model takes {on.get('rss_mb')} MiB in all", "on": figures_on}
    with tempfile.TemporaryDirectory(prefix="edge-arena-") as tmp:
        request = Path(tmp) / "request.json"
        (Path(tmp) / "samples.npz").write_bytes(pack_samples(sets))
        request.write_text(json.dumps({
            "arena": True, "path": str(path.absolute()), "format": model_format, "candidate": asdict(chosen),
            "options": options, "samples": str(Path(tmp) / "samples.npz"), "budget_s": budget_s, "on": figures_on,
        }))  # fmt: skip
        try:
            proc = trial_spare.run(request, TIMEOUT_S)  # on the spare worker when one waits
        except (OSError, subprocess.TimeoutExpired) as exc:
            return _failed(path, f"{type(exc).__name__}: {exc}", started)
        try:
            answer = json.loads((Path(tmp) / "arena.json").read_text())
        except (OSError, ValueError):
            tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or [f"status {proc.returncode}"]
            return _failed(path, f"its worker ended with {tail[0]}", started)
    if answer["on_p50_ms"] is not None:
        figures_on |= {"p50_ms": answer["on_p50_ms"], "cpu_ms": answer["on_cpu_ms"]}
    keep, why = pick(figures_on, answer["off"])
    log.info("%s: ONNX Runtime's CPU arena %s", path.name, why)
    return {
        "chosen": "on" if keep else "off", "why": why, "on": figures_on, "off": answer["off"],
        "trial_s": round(time.perf_counter() - started, 2),
    }  # fmt: skip


def _failed(path: Path, why: str, started: float) -> dict[str, Any]:
    record = {"chosen": "on", "why": f"on: the arena-off measurement failed: {why}"[:300]}
    log.warning("%s: ONNX Runtime's CPU arena %s", path.name, record["why"])
    return record | {"trial_s": round(time.perf_counter() - started, 2)}


def work(request: dict[str, Any], out: Path) -> None:
    """The worker's side: the arena-off load measured as the trial measured the reference (load, a run on every
    input, one more on the first), then, where off saves enough to matter, both settings timed turn about; `out`
    gets the figures."""
    cand = Candidate(**request["candidate"])
    sets = unpack_samples(Path(request["samples"]))
    path, fmt, options = Path(request["path"]), request["format"], request["options"]
    meter = Meter()
    off = load(cand, path, fmt, options | {OPTION: False}, meter)
    for inputs in [*sets, sets[0]]:
        off.infer(inputs)
    footprint = meter.stop()
    figures = {"rss_mb": footprint.rss_mb, "peak_mb": footprint.peak_mb}
    if saves(request["on"], figures) is not None:  # not worth timing: the arena stays on
        out.write_text(json.dumps({"off": figures, "on_p50_ms": None}))
        return
    on = load(cand, path, fmt, options | {OPTION: True})
    on.infer(sets[0])
    cpu: tuple[list[float], list[float]] = ([], [])

    def runner(backend: Any, cpu_s: list[float]) -> Callable[[], None]:
        def run() -> None:
            started = time.process_time()
            backend.infer(sets[0])
            cpu_s.append(time.process_time() - started)

        return run

    block_s = max(request["budget_s"], 0.05) / 2 / (ROUNDS * 2)  # half the trial's budget for two runners
    timed = turn_about(
        [runner(on, cpu[0]), runner(off, cpu[1])], rounds=ROUNDS, block_s=block_s, min_runs=MIN_RUNS, max_runs=15
    )  # fmt: skip
    # wall: the best round's median (a round hit by other work on the box does not count against either setting);
    # CPU: the median of the process' CPU time per run, which other work on the box inflates far less
    on_p50, off_p50 = (round(best_block_ms(t, 50), 4) for t in timed)
    on_cpu, off_cpu = (round(statistics.median(c) * 1000, 4) for c in cpu)
    runs = sum(len(r) for r in timed[1])
    off_figures = figures | {"p50_ms": off_p50, "cpu_ms": off_cpu, "runs": runs}
    out.write_text(json.dumps({"off": off_figures, "on_p50_ms": on_p50, "on_cpu_ms": on_cpu}))
