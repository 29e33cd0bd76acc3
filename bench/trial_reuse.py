"""Whether a trial's choice holds for a weights-only update (issue 29): the evidence a reuse of the timing would need.

For each ONNX model of the zoo (real third-party files from PyPI wheels, their realistic inputs as samples) and the
bench's 10 MB MLP, a *retrained* twin: the same graph, every float initializer of more than 16 values multiplied by
(1 + 0.02 N(0, 1)) (shape tensors, scales and other small ones untouched). The backend trial (targets.trial.run_trial,
the agent's candidates and budget) runs on the original and the twin turn about, ROUNDS times each, in one process.
A reuse is as good as a new trial where the twin's choices agree with the original's as often as each side's own
trials agree with each other (the timing's noise); the output gives both, per model and in all.

    .venv/bin/python bench/trial_reuse.py [--rounds 2] [--models all|name,...] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "tests"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))  # `python bench/trial_reuse.py` from a checkout; tests/zoo for the models

import numpy as np  # noqa: E402

SMALL = 16  # float initializers of at most this many values are kept (scales, epsilons, resize factors)
NOISE = 0.02


def retrained(src: Path, dst: Path, seed: int) -> Path:
    """`src` with its large float initializers perturbed: the same graph, other weights."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    rng = np.random.default_rng(seed)
    for i, init in enumerate(model.graph.initializer):
        values = numpy_helper.to_array(init)
        if values.dtype.kind == "f" and values.size > SMALL:
            noisy = values * (1 + NOISE * rng.standard_normal(values.shape))
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(noisy.astype(values.dtype), init.name))
    onnx.save(model, str(dst))
    return dst


def models(names: str, work: Path) -> list[tuple[str, Path, list[dict[str, Any]] | None]]:
    """(name, path, samples) of the zoo's ONNX models that are at hand, and the bench's 10 MB MLP (no samples);
    `names` picks some ("all": every one); SystemExit naming any that is no such model."""
    from zoo.catalog import MODELS
    from zoo.fetch import ZooUnavailable, model_path

    from edgectl import sample_models

    known = ["mlp_10mb"] + [zm.name for zm in MODELS if zm.format == "onnx"]
    wanted = set(known) if names == "all" else set(names.split(","))
    if unknown := sorted(wanted - set(known)):
        raise SystemExit(f"trial_reuse: no ONNX model named {', '.join(unknown)}; known: {', '.join(known)}")
    found: list[tuple[str, Path, list[dict[str, Any]] | None]] = []
    if "mlp_10mb" in wanted:
        found.append(("mlp_10mb", sample_models.mlp(work / "mlp.onnx", pad_mb=10, seed=1), None))
    for zm in MODELS:
        if zm.name in wanted and zm.format == "onnx":
            try:
                found.append((zm.name, model_path(zm), [zm.inputs()]))
            except ZooUnavailable as exc:
                print(f"{zm.name}: skipped ({exc})", file=sys.stderr)
    return found


def trials(path: Path, twin: Path, samples: list[dict[str, Any]] | None, rounds: int) -> dict[str, list[str]]:
    """The choice of each trial, original and twin turn about."""
    from targets.candidates import candidates
    from targets.probe import probe
    from targets.trial import run_trial

    cands = candidates("onnx", probe())
    chosen: dict[str, list[str]] = {"original": [], "twin": []}
    for _ in range(rounds):
        for side, file in (("original", path), ("twin", twin)):
            outcome = run_trial(file, "onnx", cands, 3.0, samples, None)
            chosen[side].append(outcome.chosen.name if outcome.chosen else "-")
    return chosen


def agreement(pairs: list[tuple[str, str]]) -> tuple[int, int]:
    return sum(a == b for a, b in pairs), len(pairs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="trials of each side (default 2)")
    parser.add_argument("--models", default="all", help="comma-separated names (default all)")
    parser.add_argument("--json", action="store_true", help="the figures as JSON on stdout")
    args = parser.parse_args()
    rows, same, cross = [], [], []
    with tempfile.TemporaryDirectory(prefix="edge-reuse-") as tmp:
        for name, path, samples in models(args.models, Path(tmp)):
            twin = retrained(path, Path(tmp) / f"{name}-twin.onnx", seed=7)
            chosen = trials(path, twin, samples, args.rounds)
            own = [p for side in chosen.values() for p in itertools.combinations(side, 2)]  # each side's own noise
            other = [(a, b) for a in chosen["original"] for b in chosen["twin"]]
            same += own
            cross += other
            rows.append({"model": name, **chosen, "own": agreement(own), "cross": agreement(other)})
            print(f"{name:32s} original {chosen['original']}  twin {chosen['twin']}", file=sys.stderr, flush=True)
    total = {"own": agreement(same), "cross": agreement(cross)}
    if args.json:
        print(json.dumps({"rows": rows, "total": total}, indent=1))
    else:
        for key, (agree, n) in total.items():
            print(f"{key:6s} pairs agreeing: {agree}/{n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
