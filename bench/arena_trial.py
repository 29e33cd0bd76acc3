"""ONNX Runtime's CPU arena as the real trial chooses it (issue 27, point 5; targets/trial_arena.py): for each model
the isolated trial (onnxruntime:cpu only) and its arena step, as an agent runs them: both settings' steady and peak
MiB, p50 (best round's median, interleaved in one worker), the choice and the seconds it added.

    .venv/bin/python bench/arena_trial.py [--models all|name,...] [--synthetic] [--json]

Models: the zoo's ONNX models (tests/zoo, cached wheels) and with --synthetic the tests' transient-tensor models
(tests/unit/targets/test_trial_arena.py: Tile to a large tensor, MatMul, ReduceSum)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def trial(path: Path, samples: list[Any] | None) -> dict[str, Any]:
    from targets.candidates import candidates
    from targets.probe import probe
    from targets.trial_worker import run_isolated

    hardware = probe()
    cands = [c for c in candidates("onnx", hardware) if c.name == "onnxruntime:cpu"]
    try:
        outcome = run_isolated(path, "onnx", hardware, cands, 3.0, samples, None)
    except Exception as exc:  # noqa: BLE001 - one model's failure is a row
        return {"error": str(exc)[:200]}
    chosen = next(r for r in outcome.results if r.name == "onnxruntime:cpu")
    if outcome.backend is not None:
        outcome.backend.close()
    return chosen.arena or {"error": chosen.error or "no arena step"}


def _models(tmp: Path, names: str, synthetic: bool) -> list[tuple[str, Path, Any]]:
    """(name, path, samples) for the synthetic models (with `synthetic`) and the named zoo ONNX models."""
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]
    from zoo import catalog, fetch

    found: list[tuple[str, Path, Any]] = []
    if synthetic:
        from unit.targets.test_trial_arena import transient

        for rows, width in ((4096, 1024), (512, 4096)):
            name = f"transient_{rows}x{width}"
            found.append((name, transient(tmp / f"{name}.onnx", rows, width), None))
    wanted = [m for m in catalog.MODELS if m.format == "onnx" and (names == "all" or m.name in names.split(","))]
    return found + [(m.name, fetch.model_path(m), [m.inputs()]) for m in wanted]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="all")
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path, samples in _models(Path(tmp), args.models, args.synthetic):
            rows.append({"model": name, **trial(path, samples)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| model | arena on: rss / peak MiB, p50 ms | arena off: rss / peak, p50 | chosen | trial s |")
    print("|---|---|---|---|---|")
    for r in rows:
        on, off = r.get("on") or {}, r.get("off") or {}
        print(f"| {r['model']} | {on.get('rss_mb')} / {on.get('peak_mb')}, {on.get('p50_ms')} | "
              f"{off.get('rss_mb')} / {off.get('peak_mb')}, {off.get('p50_ms')} | "
              f"{r.get('chosen', r.get('error'))} | {r.get('trial_s')} |")  # fmt: skip


if __name__ == "__main__":
    main()
