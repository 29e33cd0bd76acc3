"""Each backend's p50/p95 on a set of models side by side, failures named, and what the selection picked.

.venv/bin/python bench/backends.py [--runs 200] [--budget 3.0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgectl import sample_models  # noqa: E402
from targets import selection  # noqa: E402
from targets.base import BackendError  # noqa: E402
from targets.inputs import synthesize  # noqa: E402
from targets.probe import probe  # noqa: E402
from targets.timing import pooled_ms, turn_about  # noqa: E402


def models(d: Path) -> list[tuple[str, Path, str]]:
    found = [
        ("conv net (onnx)", sample_models.conv_net(d / "conv.onnx", size=64, channels=32), "onnx"),
        ("mlp 256->1024->16 (onnx)", sample_models.mlp(d / "mlp.onnx", n_in=256, hidden=1024, n_out=16), "onnx"),
        ("control flow If+Loop (onnx)", sample_models.control_flow(d / "control.onnx", n=64, steps=8), "onnx"),
    ]
    try:
        found.append(("conv net (tflite)", sample_models.tflite_conv_net(d / "conv.tflite", 64, 32), "tflite"))
    except ImportError as exc:
        print(f"no TFLite model: {exc}")
    return found


def measure(cands: list[selection.Candidate], path: Path, fmt: str, runs: int) -> dict[str, tuple[float, float] | str]:
    """p50/p95 (ms) of every candidate that loads, timed turn about (targets.timing), or why it could not run."""
    loaded, found = {}, {}
    for cand in cands:
        try:
            backend = selection.load_candidate(cand, path, fmt)
            x = synthesize(backend.inputs, 1, batch=1)  # the sample models have no dims that cannot be 1
            for _ in range(5):
                backend.infer(x)
            loaded[cand.name] = (backend, x)
        except BackendError as exc:
            found[cand.name] = str(exc)[:90]
    per_block = max(runs // 10, 3)
    runners = [lambda b=b, x=x: b.infer(x) for b, x in loaded.values()]
    measured = turn_about(runners, rounds=10, block_s=0.0, min_runs=per_block, max_runs=per_block)
    for name, rounds in zip(loaded, measured, strict=True):
        found[name] = (pooled_ms(rounds, 50), pooled_ms(rounds, 95))
        loaded[name][0].close()
    return found


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--budget", type=float, default=3.0)
    args = parser.parse_args()
    hardware = probe()
    console = Console()
    console.print(f"{hardware['cpu_model']}, {hardware['cores']} cores, flags {hardware['cpu_flags']}")
    table = Table(title="backends: p50 / p95 ms (batch 1)")
    table.add_column("model")
    names = sorted({c.name for fmt in ("onnx", "tflite") for c in selection.candidates(fmt, hardware)})
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("selected")
    table.add_column("trial s", justify="right")
    table.add_column("within 10%")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for title, path, fmt in models(Path(tmp)):
            cells: dict[str, str] = {}
            p50s: dict[str, float] = {}
            exact = [c for c in selection.candidates(fmt, hardware) if c.precision == "full"]
            for name, result in measure(exact, path, fmt, args.runs).items():
                cand = next(c for c in exact if c.name == name)
                if isinstance(result, str):
                    cells[cand.name] = f"[red]failed[/red]: {result}"
                else:
                    p50s[cand.name] = result[0]
                    cells[cand.name] = f"{result[0]:.3f} / {result[1]:.3f}"
            t0 = time.perf_counter()
            try:
                chosen = selection.select_backend(path, fmt, hardware, budget_s=args.budget)
                pick, trial_s = chosen.choice, time.perf_counter() - t0
            except BackendError as exc:
                pick, trial_s = f"none: {exc}", time.perf_counter() - t0
            fastest = min(p50s.values()) if p50s else None
            within = pick in p50s and fastest is not None and p50s[pick] <= fastest * 1.10
            ok &= within
            table.add_row(
                title,
                *(cells.get(n, "-") for n in names),
                pick,
                f"{trial_s:.2f}",
                "[green]yes[/green]" if within else "[red]no[/red]",
            )
    console.print(table)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
