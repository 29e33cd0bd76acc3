"""Converters benchmark: per model and variant, size, transfer size, p50 latency, speedup over FP32 on the same
backend, and agreement with the original, measured in one run on this machine.

    python bench/converters.py [--variants all] [--json]

Models are built on the spot (conv-net classifier with its own validation images, MLP, transformer block).
The conv net's ONNX Runtime and OpenVINO rows sit side by side: quantization is not always faster, and the
table says so as measured.

Part 2 pushes each model with the variants that passed to a real agent (controller in this process, embedded
broker): the agent times the original and every variant on the backends its trial picks and serves the fastest; the
table re-times each of them here and checks the served one is the fastest within 10% (bench/served.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from served import check_served, served_table  # noqa: E402 - bench/served.py (the script's own directory)

from converters import VARIANTS, convert, convert_many  # noqa: E402
from edgectl import sample_models  # noqa: E402
from edgectl.commands.convert import report_table  # noqa: E402


def models(work: Path) -> list[tuple[str, Path, Path, Path]]:
    """(name, model, calibration, validation) for each benchmark model."""
    rng = np.random.default_rng(0)
    conv = sample_models.conv_classifier(work / "conv_classifier.onnx")
    np.savez(work / "conv_cal.npz", image=sample_models.classifier_images(128, seed=1)[0])
    np.savez(work / "conv_val.npz", image=sample_models.classifier_images(300, seed=2)[0])
    mlp = sample_models.mlp(work / "mlp.onnx", n_in=256, hidden=1024, n_out=16)
    np.savez(work / "mlp_cal.npz", x=rng.standard_normal((128, 256)).astype(np.float32))
    np.savez(work / "mlp_val.npz", x=rng.standard_normal((300, 256)).astype(np.float32))
    block = sample_models.transformer_block(work / "transformer_block.onnx")
    np.savez(work / "tf_cal.npz", x=rng.standard_normal((64, 16, 128)).astype(np.float32))
    np.savez(work / "tf_val.npz", x=rng.standard_normal((128, 16, 128)).astype(np.float32))
    return [
        ("conv_classifier", conv, work / "conv_cal.npz", work / "conv_val.npz"),
        ("mlp", mlp, work / "mlp_cal.npz", work / "mlp_val.npz"),
        ("transformer_block", block, work / "tf_cal.npz", work / "tf_val.npz"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="all", help="comma-separated variants, or 'all'")
    parser.add_argument("--latency-budget", type=float, default=2.0, help="seconds of timing per measurement")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-serve", action="store_true", help="skip part 2 (push to a real agent)")
    args = parser.parse_args()
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    console = Console(width=170)
    everything = {}
    with tempfile.TemporaryDirectory(prefix="bench-converters-") as tmp:
        work = Path(tmp)
        for name, model, calib, valid in models(work):
            results = convert_many(
                model, names, calib, work / "out", options={"latency_budget_s": args.latency_budget},
                validation=valid,
            )  # fmt: skip
            if "pruned" in names:  # the fixed point too: 50% sparsity, whatever it costs in agreement
                half = convert(
                    model, "pruned", calib, work / "out-50", options={"latency_budget_s": args.latency_budget,
                    "sparsity": 0.5}, validation=valid,
                )  # fmt: skip
                half.variant = "pruned@50%"
                results.append(half)
            reports = [r.as_dict() for r in results]
            everything[name] = reports
            if not args.json:
                source = f"{name} (FP32 {results[0].source_size_bytes / 1e6:.2f} MB)"
                console.print(report_table(reports, source))
                for r in results:
                    if r.error:
                        console.print(f"  {r.variant}: {r.error}", highlight=False)
        if not args.no_serve:
            passing = {
                name: [r["variant"] for r in reports if r["passed"] and r["variant"] in VARIANTS]
                for name, reports in everything.items()
            }
            (work / "serve").mkdir()
            rows = check_served(models(work / "serve"), passing, work / "serve")
            everything = {"conversions": everything, "served": rows}
            if not args.json:
                console.print(served_table(rows))
    if args.json:
        sys.stdout.write(json.dumps(everything, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
