"""ONNX Runtime's CPU memory arena and memory pattern on and off (issue 27, point 5): resident memory a load and runs
add, its high-water mark, and the p50 of a run, each model in a fresh process per setting (as the trial worker
measures: the runtime and its environment loaded first, targets/footprint.py).

    .venv/bin/python bench/arena.py [--runs 50] [--zoo ppocr_v4_det,silero_vad] [--json]

Models: the tests' small MLP, a 64 MiB MatMul (edgectl/sample_weighty.py) and the named zoo models (cached wheels,
tests/zoo/fetch.py). Prints one row per model and setting, and which setting the rule picks: arena off where its
footprint is smaller and its p50 within 5% of arena on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"arena on": (True, True), "arena off": (False, True), "both off": (False, False)}


def measure(path: str, zoo: str | None, arena: bool, pattern: bool, runs: int) -> dict[str, Any]:
    """In this (fresh) process: load `path` with the settings, run it, and time `runs` more runs."""
    import numpy as np

    from targets.backends.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeConfig
    from targets.footprint import Meter, import_runtime

    if zoo:
        sys.path.insert(0, str(ROOT / "tests"))
        from zoo import catalog

        inputs = catalog.by_name(zoo).inputs()
    import_runtime("onnxruntime")
    meter = Meter()
    meter.start()
    backend = OnnxRuntimeBackend(OnnxRuntimeConfig(cpu_mem_arena=arena, mem_pattern=pattern))
    backend.load(Path(path), "onnx")
    if not zoo:
        inputs = {s.name: np.random.default_rng(0).standard_normal(
            [d if d > 0 else 1 for d in s.shape], dtype=np.float32) for s in backend.inputs}  # fmt: skip
    backend.infer(inputs)
    footprint = meter.stop()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        backend.infer(inputs)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"rss_mb": footprint.rss_mb, "peak_mb": footprint.peak_mb, "p50_ms": round(times[len(times) // 2], 3)}


def run_fresh(path: Path, zoo: str | None, arena: bool, pattern: bool, runs: int) -> dict[str, Any]:
    code = (
        f"import sys, json; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(1, {str(ROOT / 'bench')!r}); "
        f"from arena import measure; print(json.dumps(measure({str(path)!r}, {zoo!r}, {arena}, {pattern}, {runs})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def models(work: Path, zoo: list[str]) -> list[tuple[str, Path, str | None]]:
    sys.path.insert(0, str(ROOT))
    from edgectl import sample_models
    from edgectl.sample_weighty import weighty

    found = [("mlp", sample_models.mlp(work / "mlp.onnx"), None), ("matmul_64mib", weighty(work / "w.onnx"), None)]
    if zoo:
        sys.path.insert(0, str(ROOT / "tests"))
        from zoo import catalog, fetch

        found += [(name, fetch.model_path(catalog.by_name(name)), name) for name in zoo]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--zoo", default="ppocr_v4_det,silero_vad")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path, zoo in models(Path(tmp), [z for z in args.zoo.split(",") if z]):
            figures = {label: run_fresh(path, zoo, a, p, args.runs) for label, (a, p) in SETTINGS.items()}
            on, off = figures["arena on"], figures["arena off"]
            smaller = (off["rss_mb"] or 0) < (on["rss_mb"] or 0)
            pick = "arena off" if smaller and off["p50_ms"] <= on["p50_ms"] * 1.05 else "arena on"
            rows.append({"model": name, **{k: v for k, v in figures.items()}, "pick": pick})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'model':<16} {'setting':<10} {'rss MiB':>8} {'peak MiB':>9} {'p50 ms':>8}  pick")
    for row in rows:
        for label in SETTINGS:
            f = row[label]
            pick = row["pick"] if label == "arena on" else ""
            print(f"{row['model']:<16} {label:<10} {f['rss_mb']:>8} {f['peak_mb']:>9} {f['p50_ms']:>8}  {pick}")


if __name__ == "__main__":
    main()
