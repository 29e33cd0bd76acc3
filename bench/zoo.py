"""Real third-party models (tests/zoo: files PyPI wheels ship) through the agent's backend choice, bare and with
samples: what was chosen, at what precision, how far its answers are from the model's own runtime, and its p50
against that runtime's, timed turn about in the same run.

.venv/bin/python bench/zoo.py [--budget 1.0] [--runs 200] [--only NAME,...] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # first: the zoo package, not this script
sys.path.insert(1, str(ROOT))

from zoo import catalog, fetch, native  # noqa: E402

from targets.agreement import worst_deviation  # noqa: E402
from targets.base import Backend, BackendError  # noqa: E402
from targets.candidates import REFERENCE, candidates  # noqa: E402
from targets.probe import probe  # noqa: E402
from targets.selection import load_candidate, select_backend  # noqa: E402
from targets.timing import pooled_ms, turn_about  # noqa: E402


def turn_about_p50(a: Backend, b: Backend, inputs: dict[str, np.ndarray], runs: int) -> tuple[float, float]:
    """p50 (ms) of two loaded backends after a warm-up, blocks taken in turn (targets.timing, the one timer)."""
    for backend in (a, b):
        for _ in range(3):
            backend.infer(inputs)
    per_block = max(runs // 8, 3)
    measured = turn_about(
        [lambda: a.infer(inputs), lambda: b.infer(inputs)], rounds=8, block_s=0.0, min_runs=per_block,
        max_runs=per_block,
    )  # fmt: skip
    return pooled_ms(measured[0], 50), pooled_ms(measured[1], 50)


def one(model: catalog.ZooModel, mode: str, hardware: dict[str, Any], budget: float, runs: int) -> dict[str, Any]:
    path = fetch.model_path(model)
    inputs = model.inputs()
    row: dict[str, Any] = {"model": model.name, "mode": mode, "format": model.format, "mb": path.stat().st_size / 1e6}
    started = time.perf_counter()
    try:
        chosen = select_backend(
            path, model.format, hardware, budget_s=budget, samples=[inputs] if mode == "samples" else None,
            isolated=True,
        )  # fmt: skip
    except BackendError as exc:
        return row | {"result": "refused", "reason": str(exc)[:160], "decide_s": time.perf_counter() - started}
    row |= {"decide_s": time.perf_counter() - started, "result": "served" if chosen.timed else "served untimed"}
    row |= {"backend": chosen.choice, "precision": chosen.precision, "inputs": chosen.probe.source}
    want = native.native_outputs(path, model.format, inputs)
    row["deviation"] = worst_deviation(chosen.backend.infer(inputs), want)
    own = next(c for c in candidates(model.format, hardware) if c.name == REFERENCE[model.format])
    reference = load_candidate(own, path, model.format)
    row["p50_ms"], row["native_p50_ms"] = turn_about_p50(chosen.backend, reference, inputs, runs)
    row["vs_native"] = row["p50_ms"] / row["native_p50_ms"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=1.0, help="trial budget per model (the agent's default is 3)")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per backend for the p50 comparison")
    parser.add_argument("--only", default="", help="comma-separated zoo model names")
    parser.add_argument("--json", action="store_true", help="rows as JSON on stdout")
    args = parser.parse_args()
    hardware = probe()
    wanted = {n for n in args.only.split(",") if n}
    models = [m for m in catalog.MODELS if not wanted or m.name in wanted]
    rows = [one(m, mode, hardware, args.budget, args.runs) for m in models for mode in ("bare", "samples")]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    console = Console(width=160)
    console.print(f"{hardware['cpu_model']}, {hardware['cores']} cores, flags {', '.join(hardware['cpu_flags'])}")
    table = Table(title="zoo: the agent's choice against the model's own runtime (deviation: 1 = the tolerance)")
    for column in ("model", "MB", "mode", "result", "backend", "precision", "inputs", "deviation", "p50 ms",
                   "native p50 ms", "vs native", "decide s"):  # fmt: skip
        table.add_column(
            column, justify="right" if column in ("MB", "p50 ms", "native p50 ms", "vs native") else "left"
        )
    for r in rows:
        table.add_row(
            r["model"], f"{r['mb']:.2f}", r["mode"], r["result"] if "reason" not in r else f"refused: {r['reason']}",
            r.get("backend", "-"), r.get("precision", "-"), r.get("inputs", "-"),
            f"{r['deviation']:.3g}" if "deviation" in r else "-", f"{r.get('p50_ms', 0):.3f}",
            f"{r.get('native_p50_ms', 0):.3f}", f"{r['vs_native']:.2f}" if "vs_native" in r else "-",
            f"{r['decide_s']:.1f}",
        )  # fmt: skip
    console.print(table)
    served = {m: [r for r in rows if r["mode"] == m and r["result"].startswith("served")] for m in ("bare", "samples")}
    agree = all(r["deviation"] <= 1.0 for rs in served.values() for r in rs)
    console.print(
        f"served bare {len(served['bare'])}/{len(models)}, with samples {len(served['samples'])}/{len(models)}; "
        f"every served answer within tolerance of the model's own runtime: {agree}"
    )
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
