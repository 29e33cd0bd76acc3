"""Predicted vs measured footprint (issue 27: predicted within 15%): for each model, the isolated trial worker's figure
for the chosen candidate (`predicted_mb`, steady; `peak_mb`) against what the agent's own admission measured as the
winner loaded and warmed up in the calling process, as the agent's loader does (agent/serving/eviction.py's
Admission: runtime and its environment imported first, resident memory before the load, after WARM_UP_RUNS runs).

Each model runs in a fresh process that first loads the tests' MLP (an agent already serving a model).

    .venv/bin/python bench/footprint.py [--backend onnxruntime:cpu] [--models all|name,...] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def measure(path: str, zoo: str | None, backend: str, work: str) -> dict[str, Any]:
    """In this (fresh) process: the agent's admission around a real isolated trial and the winner's load here."""
    sys.path.insert(0, str(ROOT / "tests"))
    import numpy as np

    from agent.deploy.loader import WARM_UP_RUNS
    from agent.serving.eviction import Residency
    from agent.serving.inflight import TrackedTable
    from agent.serving.memory import MIB, Budget
    from edgectl import sample_models
    from targets.candidates import candidates
    from targets.probe import probe
    from targets.trial import load as load_candidate
    from targets.trial_worker import run_isolated

    hardware = probe()
    cands = [c for c in candidates("onnx", hardware) if c.name in (backend, "onnxruntime:cpu")]
    mlp = sample_models.mlp(Path(work) / "serving.onnx")
    serving = load_candidate(cands[0], mlp, "onnx")  # the model the agent already serves
    samples = None
    if zoo:
        from zoo import catalog

        samples = [catalog.by_name(zoo).inputs()]
    residency = Residency(Budget(1 << 40, "bench"), TrackedTable(), headroom_mb=0)
    wanted = [c for c in cands if c.name == backend]
    if backend != "onnxruntime:cpu":  # the reference (the format's own runtime) always runs; the other must win
        wanted = [c for c in cands if c.name == backend] + [c for c in cands if c.name == "onnxruntime:cpu"]
    with residency.loading("m", Path(path).stat().st_size, trial=True) as admission:
        outcome = run_isolated(Path(path), "onnx", hardware, wanted, 1.0, samples, None, admission.admit)
        assert outcome.backend is not None
        inputs = outcome.probe.sets[0] if outcome.probe.sets else None
        for _ in range(WARM_UP_RUNS if inputs is not None else 0):
            outcome.backend.infer(inputs)
    chosen = next(r for r in outcome.results if outcome.chosen and r.name == outcome.chosen.name)
    assert serving.infer({s.name: np.ones([1, *s.shape[1:]], np.float32) for s in serving.inputs})
    del MIB
    results = {r.name: [r.rss_mb, r.peak_mb] for r in outcome.results}
    return {"chosen": chosen.name, "sets": len(outcome.probe.sets), **admission.report(), "results": results}


def run_fresh(path: Path, zoo: str | None, backend: str, work: Path) -> dict[str, Any]:
    code = (
        f"import sys, json; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(1, {str(ROOT / 'bench')!r}); "
        f"from footprint import measure; print(json.dumps(measure({str(path)!r}, {zoo!r}, {backend!r}, {str(work)!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="onnxruntime:cpu")
    parser.add_argument("--models", default="all")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(1, str(ROOT))
    from zoo import catalog, fetch

    from edgectl.sample_weighty import weighty

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models: list[tuple[str, Path, str | None]] = [("matmul_64mib", weighty(Path(tmp) / "w.onnx"), None)]
        for zm in catalog.MODELS:
            if zm.format == "onnx" and (args.models == "all" or zm.name in args.models.split(",")):
                models.append((zm.name, fetch.model_path(zm), zm.name))
        for name, path, zoo in models:
            figures = run_fresh(path, zoo, args.backend, Path(tmp))
            predicted, measured = figures.get("predicted_mb"), figures.get("measured_mb")
            off = round(100 * (predicted - measured) / measured, 1) if predicted and measured else None
            rows.append({"model": name, **figures, "off_pct": off})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| model | chosen | predicted MiB | peak MiB | measured MiB | off |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r.get('chosen', r.get('error'))} | {r.get('predicted_mb')} | {r.get('peak_mb')} | "
              f"{r.get('measured_mb')} | {r['off_pct']}% |")  # fmt: skip


if __name__ == "__main__":
    main()
