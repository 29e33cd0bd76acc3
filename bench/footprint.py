"""Predicted vs measured footprint (issue 27: predicted within 15%): for each model, the isolated trial worker's figure
for the chosen candidate (`predicted_mb`, steady; `peak_mb`) against what the agent's own admission measured as the
winner loaded and warmed up in the calling process, as the agent's loader does (agent/serving/eviction.py's
Admission: runtime and its environment imported first, resident memory before the load, after footprint.warm_up).

Each model runs in a fresh process that first loads the tests' MLP (an agent already serving a model).

    .venv/bin/python bench/footprint.py [--backend onnxruntime:cpu] [--agent-runtimes all|onnxruntime]
        [--models all|name,...] [--json]
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


def measure(path: str, zoo: str | None, backend: str, work: str, agent_runtimes: str = "all") -> dict[str, Any]:
    """In this (fresh) process: the agent's admission around a real isolated trial and the winner's load here; where
    the trial chose another, `backend` is loaded too, under its own admission (as a pinned backend would be)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import numpy as np

    from agent.serving.eviction import Residency
    from agent.serving.inflight import TrackedTable
    from agent.serving.memory import MIB, Budget
    from edgectl import sample_models
    from targets.candidates import candidates
    from targets.footprint import warm_up
    from targets.probe import probe
    from targets.trial import load as load_candidate
    from targets.trial_worker import run_isolated

    hardware = probe()
    cands = [c for c in candidates("onnx", hardware) if c.name in (backend, "onnxruntime:cpu")]
    mlp = sample_models.mlp(Path(work) / "serving.onnx")
    # the model the agent already serves, on every runtime in play ("all": their one-time setup paid before) or on
    # ONNX Runtime alone ("onnxruntime": `backend`'s runtime is new to the agent)
    served = [c for c in cands if agent_runtimes == "all" or c.name == "onnxruntime:cpu"]
    servings = [load_candidate(c, mlp, "onnx") for c in served]
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
        if inputs is not None:
            warm_up(outcome.backend, inputs)
    chosen = next(r for r in outcome.results if outcome.chosen and r.name == outcome.chosen.name)
    figures = admission.report()
    asked = next((r for r in outcome.results if r.name == backend), None)
    if chosen.name != backend and asked is not None and asked.rss_mb is not None and inputs is not None:
        names = {"input_names": [s.name for s in outcome.backend.inputs]}
        names["output_names"] = [s.name for s in outcome.backend.outputs]
        cand = next(c for c in cands if c.name == backend)
        with residency.loading("asked", Path(path).stat().st_size, trial=False) as forced:
            forced.admit(asked)
            loaded = load_candidate(cand, Path(path), "onnx", names)
            warm_up(loaded, inputs)
        figures = forced.report() | {"winner": admission.report()}
    for serving in servings:
        assert serving.infer({s.name: np.ones([1, *s.shape[1:]], np.float32) for s in serving.inputs})
    del MIB
    results = {r.name: [r.rss_mb, r.peak_mb] for r in outcome.results}
    return {"chosen": chosen.name, "sets": len(outcome.probe.sets), **figures, "results": results}


def run_fresh(path: Path, zoo: str | None, backend: str, work: Path, agent_runtimes: str = "all") -> dict[str, Any]:
    args = f"{str(path)!r}, {zoo!r}, {backend!r}, {str(work)!r}, {agent_runtimes!r}"
    code = (  # os._exit: OpenVINO's threads torn down at exit can abort the process after the answer
        f"import sys, os, json; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(1, {str(ROOT / 'bench')!r}); "
        f"from footprint import measure; print(json.dumps(measure({args})), flush=True); os._exit(0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="onnxruntime:cpu", help="measured even where the trial chose another")
    parser.add_argument(
        "--agent-runtimes",
        choices=["all", "onnxruntime"],
        default="all",
        help="runtimes the agent already serves a model on (onnxruntime: --backend's is new to it)",
    )
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
            figures = run_fresh(path, zoo, args.backend, Path(tmp), args.agent_runtimes)
            predicted, measured = figures.get("predicted_mb"), figures.get("measured_mb")
            off = round(100 * (predicted - measured) / measured, 1) if predicted and measured else None
            rows.append({"model": name, **figures, "off_pct": off})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| model | runtime | trial chose | predicted MiB | peak MiB | measured MiB | off |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {args.backend} | {r.get('chosen', r.get('error'))} | {r.get('predicted_mb')} | "
              f"{r.get('peak_mb')} | {r.get('measured_mb')} | {r['off_pct']}% |")  # fmt: skip


if __name__ == "__main__":
    main()
