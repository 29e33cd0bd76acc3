"""OpenVINO CPU cache settings and resident memory (issue 27, point 5): the CPU plugin's runtime cache of kernels
compiled per input shape (CPU_RUNTIME_CACHE_CAPACITY: OpenVINO's 5000 entries, 0, a small 50) and the compiled
model cache (CACHE_DIR, loaded from a cache a previous process wrote), each model in a fresh process per setting
as the trial worker measures (runtime imported first, targets/footprint.py), settings in turn `--rounds` times.

    .venv/bin/python bench/openvino_cache.py [--models ppocr_v4_rec,ppocr_v4_det,tashkeel_bilstm_int8] [--rounds 2]
    .venv/bin/python bench/openvino_cache.py --interleaved   # the runtime cache's cost per run, in one process

Per setting: steady and peak MiB after the load and two runs on the zoo input (what the trial predicts), the p50 of
20 runs on the zoo input, MiB after one run on each of 16 other input shapes (a dynamic model serving varied
requests), the p50 of two more passes over those shapes (where a kept kernel saves compiling it again), and the
load's seconds."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "runtime cache 0": {"runtime_cache_capacity": 0},
    "runtime cache 50": {"runtime_cache_capacity": 50},
    "runtime cache 500": {"runtime_cache_capacity": 500},
    "cache_dir (warm)": {"cache_dir": "CACHE"},
}


def shapes(inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """16 variants of the zoo input along its last axis (text width, image width, sequence length)."""
    import numpy as np

    name, x = max(inputs.items(), key=lambda kv: kv[1].size)
    out = []
    for i in range(1, 17):
        size = max(x.shape[-1] + (i - 8) * max(x.shape[-1] // 16, 1), 1)
        size = (size // 32) * 32 or size if x.ndim == 4 else size  # image models: multiples of 32
        grown = np.resize(x, (*x.shape[:-1], size)).astype(x.dtype)
        out.append(inputs | {name: grown})
    return out


def measure(zoo: str, options: dict[str, Any]) -> dict[str, Any]:
    """In this (fresh) process: the OpenVINO backend loaded with `options`, its memory and timings."""
    sys.path.insert(0, str(ROOT / "tests"))
    from zoo import catalog, fetch

    from targets.backends.openvino import OpenVinoBackend, OpenVinoConfig
    from targets.footprint import MIB, Meter, import_runtime, rss_bytes

    model = catalog.by_name(zoo)
    path, inputs = fetch.model_path(model), model.inputs()
    import_runtime("openvino")
    meter = Meter()
    meter.start()
    started = time.perf_counter()
    backend = OpenVinoBackend(OpenVinoConfig(specialize_shapes=0, **options))
    backend.load(path, "onnx")
    load_s = time.perf_counter() - started
    backend.infer(inputs)
    backend.infer(inputs)
    footprint = meter.stop()
    fixed = []
    for _ in range(20):
        t = time.perf_counter()
        backend.infer(inputs)
        fixed.append((time.perf_counter() - t) * 1000)
    varied = shapes(inputs)
    for x in varied:  # each shape once: what the runtime cache then holds
        backend.infer(x)
    shapes_mb = round((rss_bytes() - meter.before) / MIB, 1)
    again = []
    for _ in range(2):  # the same shapes again: where a kept kernel saves its compilation
        for x in varied:
            t = time.perf_counter()
            backend.infer(x)
            again.append((time.perf_counter() - t) * 1000)
    return {
        "rss_mb": footprint.rss_mb, "peak_mb": footprint.peak_mb, "shapes_mb": shapes_mb,
        "p50_ms": round(statistics.median(fixed), 2), "varied_p50_ms": round(statistics.median(again), 2),
        "load_s": round(load_s, 2),
    }  # fmt: skip


def interleaved(zoo: str, capacities: tuple[int | None, ...] = (None, 50, 0), rounds: int = 4) -> list[dict[str, Any]]:
    """In this process: one compilation per capacity, each shown the 16 shapes once, then passes over them taken in
    turn `rounds` times: per run, the best pass's wall time and the median CPU time of this process, against the
    default's (the fresh-process p50s above swing x2 on a busy box; this comparison is interleaved)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from zoo import catalog, fetch

    from targets.backends.openvino import OpenVinoBackend, OpenVinoConfig
    from targets.footprint import import_runtime

    model = catalog.by_name(zoo)
    path, inputs = fetch.model_path(model), model.inputs()
    import_runtime("openvino")
    varied = shapes(inputs)
    backends = []
    for capacity in capacities:
        backend = OpenVinoBackend(OpenVinoConfig(specialize_shapes=0, runtime_cache_capacity=capacity))
        backend.load(path, "onnx")
        for x in varied:
            backend.infer(x)
        backends.append(backend)
    wall: list[list[float]] = [[] for _ in capacities]
    cpu: list[list[float]] = [[] for _ in capacities]
    for _ in range(rounds):
        for i, backend in enumerate(backends):
            w, c = time.perf_counter(), time.process_time()
            for x in varied:
                backend.infer(x)
            wall[i].append((time.perf_counter() - w) * 1000 / len(varied))
            cpu[i].append((time.process_time() - c) * 1000 / len(varied))
    return [
        {"model": zoo, "capacity": "default" if cap is None else cap, "wall_ms": round(min(wall[i]), 2),
         "wall_x": round(min(wall[i]) / min(wall[0]), 2), "cpu_ms": round(statistics.median(cpu[i]), 2),
         "cpu_x": round(statistics.median(cpu[i]) / statistics.median(cpu[0]), 2)}
        for i, cap in enumerate(capacities)
    ]  # fmt: skip


def one_process(zoo: str, options: dict[str, Any]) -> dict[str, Any]:
    """measure() in a fresh interpreter running this file with --one."""
    argv = [sys.executable, __file__, "--one", zoo, json.dumps(options)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]) if done.returncode == 0 and lines else {"error": done.stderr.strip()[-200:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="ppocr_v4_rec,ppocr_v4_det,tashkeel_bilstm_int8")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--interleaved", action="store_true", help="the runtime cache's cost per run, interleaved")
    parser.add_argument("--one", nargs=2, metavar=("ZOO", "OPTIONS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.interleaved:
        sys.path.insert(0, str(ROOT))
        print("| model | runtime cache | wall ms/run (best pass) | x default | CPU ms/run (median) | x default |")
        print("|---|---|---|---|---|---|")
        for zoo in args.models.split(","):
            for r in interleaved(zoo):
                print(f"| {zoo} | {r['capacity']} | {r['wall_ms']} | {r['wall_x']} | {r['cpu_ms']} | {r['cpu_x']} |")
        os._exit(0)
    if args.one:
        sys.path.insert(0, str(ROOT))
        print(json.dumps(measure(args.one[0], json.loads(args.one[1]))), flush=True)
        os._exit(0)  # OpenVINO's threads torn down at exit can abort the process after the answer
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as cache:
        for zoo in args.models.split(","):
            one_process(zoo, {"cache_dir": cache})  # writes the compiled model that "cache_dir (warm)" loads
            for _ in range(args.rounds):
                for label, options in SETTINGS.items():
                    opts = {k: (cache if v == "CACHE" else v) for k, v in options.items()}
                    rows.setdefault((zoo, label), []).append(one_process(zoo, opts))
                    print(zoo, label, json.dumps(rows[(zoo, label)][-1]), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps([{"model": m, "setting": s, "runs": r} for (m, s), r in rows.items()], indent=2))
        return
    keys = ("rss_mb", "peak_mb", "shapes_mb", "p50_ms", "varied_p50_ms", "load_s")
    print("| model | setting | steady MiB | peak MiB | after 16 shapes MiB | p50 ms | varied p50 ms | load s |")
    print("|---|---|---|---|---|---|---|---|")
    for (model, label), runs in rows.items():
        cells = [" / ".join(str(r.get(k, r.get("error"))) for r in runs) for k in keys]
        print(f"| {model} | {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
