"""What the agent's quality summaries cost a small model's requests (issue 30's target: at most 5% on p50).

    .venv/bin/python bench/telemetry_cost.py [--rounds 30] [--calls 200] [--json]

The request path is the agent's own: `LoadedModel.infer` (input check, ONNX Runtime, `ModelStats.record`) on the
4-class MLP of edgectl.sample_models at batch 1 and at batch 64, with the inputs and outputs it really produces.
Four ways, timed in interleaved rounds in one process (drifting load hits all alike): the bare runtime call, the
request path with summaries off (the counters only: no request sampled), with the default sampling (one request in
16, raised to keep within telemetry_budget_us = 2.5 µs), and with every request summarised (telemetry_sample_every
= 1, telemetry_budget_us = 0: the worst case). p50 and mean per way and their ratio to "off". Sampling hides the
cost from p50 (15 requests in 16 skip it), so the mean is the honest figure for the amortized cost.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from time import perf_counter
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGET_RATIO = 1.05  # summaries on vs off, p50


def ways(model_path: Path) -> dict[str, Any]:
    """name -> a callable serving one request the way named."""
    from agent.serving.table import LoadedModel
    from agent.telemetry.stats import ModelStats
    from targets import registry

    backend = registry.create("onnxruntime")
    backend.load(model_path, "onnx")

    def loaded(stats: ModelStats) -> LoadedModel:
        return LoadedModel("mlp", "1", "0" * 64, backend, stats=stats)

    return {
        "bare runtime": backend.infer,
        "summaries off": loaded(ModelStats("mlp", "1", sample_every=1_000_000, budget_us=None)).infer,
        "summaries default": loaded(ModelStats("mlp", "1")).infer,
        "every request": loaded(ModelStats("mlp", "1", sample_every=1, budget_us=None)).infer,
    }


def measure(batch: int, rounds: int, calls: int) -> dict[str, dict[str, float]]:
    import numpy as np

    from edgectl import sample_models

    with tempfile.TemporaryDirectory() as tmp:
        served = ways(Path(sample_models.mlp(Path(tmp) / "mlp.onnx")))
        rng = np.random.default_rng(0)
        inputs = [{"x": rng.standard_normal((batch, 16)).astype(np.float32)} for _ in range(64)]
        times: dict[str, list[float]] = {name: [] for name in served}
        for call in served.values():  # warm-up
            for x in inputs:
                call(x)
        for r in range(rounds):
            order = list(served.items())
            order = order[r % len(order) :] + order[: r % len(order)]  # who goes first rotates
            for name, call in order:
                for i in range(calls):
                    x = inputs[i % len(inputs)]
                    started = perf_counter()
                    call(x)
                    times[name].append((perf_counter() - started) * 1e6)
    result = {}
    for name, values in times.items():
        result[name] = {"p50_us": statistics.median(values), "mean_us": statistics.fmean(values), "n": len(values)}
    off = result["summaries off"]
    for row in result.values():
        row["p50_vs_off"] = row["p50_us"] / off["p50_us"]
        row["mean_vs_off"] = row["mean_us"] / off["mean_us"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    results = {f"batch {b}": measure(b, args.rounds, args.calls) for b in (1, 64)}
    console = Console(stderr=args.json)
    table = Table(title="quality summaries on the request path (4-class MLP, ONNX Runtime, in process)")
    for col in ("input", "way", "requests", "p50 µs", "mean µs", "p50 vs off", "mean vs off", "result"):
        table.add_column(col)
    ok = True
    for batch, rows in results.items():
        for name, row in rows.items():
            passed = row["p50_vs_off"] <= TARGET_RATIO if name == "summaries default" else None
            ok = ok and passed is not False
            table.add_row(
                batch, name, str(row["n"]), f"{row['p50_us']:.1f}", f"{row['mean_us']:.1f}",
                f"{row['p50_vs_off']:.3f}", f"{row['mean_vs_off']:.3f}",
                "" if passed is None else ("PASS" if passed else f"FAIL (> {TARGET_RATIO:.2f})"),
            )  # fmt: skip
    console.print(table)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
