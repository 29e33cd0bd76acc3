"""Converters benchmark: per model and variant, size, transfer size, p50 latency, speedup over FP32 on the same
backend, and agreement with the original, measured in one run on this machine.

    python bench/converters.py [--variants all] [--json]

Models are built on the spot (conv-net classifier with its own validation images, MLP, transformer block).
The conv net's ONNX Runtime and OpenVINO rows sit side by side: quantization is not always faster, and the
table says so as measured.

Part 2 pushes each model with the variants that passed to a real agent (controller in this process, embedded
broker): the agent times the original and every variant on the backends its trial picks and serves the fastest; the
table re-times each of them here and checks the served one is the fastest within 10% (bench/served.py).

Part 3 (mixed precision): per model, FP32 vs full INT8 (`mixed_precision` off) vs partial INT8 (the accuracy-driven
search of converters.mixed): agreement on the validation data, size, p50 against FP32 on the same runtime, layers
kept in float, for int8-static (ONNX Runtime) and openvino-int8 (OpenVINO, NNCF ignored scope). It adds the real
text-orientation classifier (PaddleOCR's, from the rapidocr wheel) with rendered text lines.

Part 4 (honest figures, issue 28): every variant of part 1 with its agreement in sample (on the calibration share it
was calibrated on) beside the report's (the held-out share it never saw) and the independent validation data; then
the real classifier given 64, 256 and 512 rendered lines and no validation data: what `int8-static` reports
(verdict, held-out figure, its 95% lower bound, the search's in- and out-of-sample figures) against 300 independent
lines of the same renderer.

    python bench/converters.py --honest-only [--lines 64,256,512]

Part 5 (`--zoo-openvino`): `convert --to openvino` of every ONNX model of the zoo without calibration data: the IR
built, and its answers against ONNX Runtime's on the catalog's realistic inputs (max abs difference, and whether
they are within rtol = atol = 1e-3).
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the zoo package, ahead of bench/zoo.py

from rich.table import Table  # noqa: E402
from served import check_served, served_table  # noqa: E402 - bench/served.py (the script's own directory)
from zoo import lines  # noqa: E402
from zoo.catalog import MODELS, by_name  # noqa: E402
from zoo.fetch import ZooUnavailable, model_path  # noqa: E402

from converters import (  # noqa: E402
    VARIANTS,
    CalibrationError,
    ConversionError,
    convert,
    convert_many,
    load_calibration,
)
from converters.evidence import Thresholds, split  # noqa: E402
from converters.measure import load, load_onnx, paired_answers  # noqa: E402
from converters.report import agreement  # noqa: E402
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


def mixed_models(work: Path) -> list[tuple[str, Path, Path, Path]]:
    """The benchmark models plus the real text-orientation classifier on rendered lines (256 to calibrate on, 1000
    others to validate on), when its wheel can be had."""
    found = models(work)
    try:
        src = model_path(by_name("ppocr_mobile_v2_cls"))
    except ZooUnavailable as exc:
        print(f"ppocr_mobile_v2_cls skipped: {exc}", file=sys.stderr)
        return found
    np.savez(work / "lines_cal.npz", x=lines.orientation_set(256, seed=1)[0])
    np.savez(work / "lines_val.npz", x=lines.orientation_set(1000, seed=7)[0])
    return [*found, ("ppocr_mobile_v2_cls", src, work / "lines_cal.npz", work / "lines_val.npz")]


def mixed_rows(work: Path, budget: float) -> list[dict]:
    """Per model and runtime: FP32, full INT8 and partial INT8, measured on the validation data; on ONNX Runtime
    (int8-static) and on OpenVINO (openvino-int8: full INT8 there is NNCF with its accuracy control)."""
    rows = []
    for name, model, calib, valid in mixed_models(work):
        for variant in ("int8-static", "openvino-int8"):
            rows += _mixed_rows(work, name, model, calib, valid, variant, budget)
    return rows


def _mixed_rows(work: Path, name: str, model: Path, calib: Path, valid: Path, variant: str, budget: float) -> list:
    options = {"latency_budget_s": budget, "eval_samples": 1000}
    full = convert(model, variant, calib, work / "full", options=options | {"mixed_precision": False},
                   validation=valid)  # fmt: skip
    part = convert(model, variant, calib, work / "mixed", options=options, validation=valid)
    mixed = part.mixed_precision or {}
    runtime = "OpenVINO" if variant == "openvino-int8" else "ORT"
    default = "NNCF defaults + accuracy control" if variant == "openvino-int8" else "MinMax, per-channel"
    rows = [{"model": name, "variant": f"FP32 ({runtime})", "agreement": 1.0, "size_bytes": full.source_size_bytes,
             "p50_ms": full.source_latency_ms_p50, "float_layers": "all", "passed": True}]  # fmt: skip
    for label, r in ((f"full INT8 ({runtime})", full), (f"partial INT8 ({runtime})", part)):
        a = r.agreement
        rows.append({
            "model": name, "variant": label, "agreement": a.get("top1") if a.get("top1") is not None
            else a.get("cosine"), "metric": "top-1" if a.get("top1") is not None else "cosine",
            "size_bytes": r.size_bytes, "size_ratio": r.size_ratio, "p50_ms": r.latency_ms_p50,
            "fp32_p50_ms": r.source_latency_ms_p50, "speedup": r.speedup, "passed": r.passed,
            "float_layers": len(mixed.get("float_layers", [])) if r is part else 0,
            "setting": mixed.get("setting", default) if r is part else default,
            "stopped": mixed.get("stopped", "") if r is part else "", "error": r.error,
        })  # fmt: skip
    return rows


def mixed_table(rows: list[dict]) -> Table:
    title = "mixed precision: FP32 vs full INT8 vs partial INT8 (ONNX Runtime, OpenVINO)"
    table = Table(title=title, title_justify="left")
    for column in ("model", "variant", "agreement", "size", "vs FP32", "p50 ms", "speedup", "float layers",
                   "calibration", "search", "result"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("model", "variant", "calibration", "search") else "right")
    for r in rows:
        fp32 = r["variant"].startswith("FP32")
        table.add_row(
            r["model"], r["variant"], f"{r['agreement']:.2%}" if r.get("agreement") is not None else "-",
            f"{r['size_bytes'] / 1e6:.3f} MB", "100%" if fp32 else f"{(r.get('size_ratio') or 0):.0%}",
            f"{r['p50_ms']:.3f}" if r.get("p50_ms") else "-", "1.00x" if fp32 else f"{(r.get('speedup') or 0):.2f}x",
            str(r["float_layers"]), r.get("setting", "-"), r.get("stopped", ""),
            "-" if fp32 else ("pass" if r["passed"] else "refused" if not r.get("error") else "failed"),
        )  # fmt: skip
    table.caption = "agreement with FP32 on the validation data (top-1 for classifiers, else cosine)"
    return table


def _agree(model: Path, r: dict, samples: list[dict]) -> float | None:
    """Top-1 (classifiers) or cosine agreement of a built variant with its float model on `samples`."""
    reference = load_onnx(model)
    names = list(reference.inputs), list(reference.outputs)
    try:
        variant = load(r["runtime"], Path(r["path"]), r["format"], *names)
    except Exception:
        reference.close()
        return None
    try:
        summary, _ = agreement([reference.run(s) for s in samples], [variant.run(s) for s in samples], Thresholds())
    finally:
        reference.close()
        variant.close()
    return summary.get("top1") if summary.get("top1") is not None else summary.get("cosine")


def honest_rows(model: Path, name: str, calib: Path, valid: Path, reports: list[dict]) -> list[dict]:
    """Per built variant: agreement in sample (the calibration share), held out (the report), on `valid`."""
    reference = load_onnx(model)
    specs = reference.backend.inputs
    reference.close()
    parts = split(load_calibration(calib, specs))
    kept = parts[0] if parts else load_calibration(calib, specs)
    independent = load_calibration(valid, specs).batches(1, 300)
    rows = []
    for r in reports:
        if not r["ok"]:
            continue
        a = r["agreement"]
        rows.append({
            "model": name, "variant": r["variant"], "verdict": r["verdict"],
            "in_sample": _agree(model, r, kept.batches(1, 300)), "in_n": min(len(kept), 300),
            "held_out": a.get("top1") if a.get("top1") is not None else a.get("cosine"), "held_n": r["samples"],
            "lower": a.get("top1_lower") if a.get("top1") is not None else a.get("cosine_lower"),
            "independent": _agree(model, r, independent), "independent_n": len(independent),
        })  # fmt: skip
    return rows


def ocr_rows(work: Path, counts: list[int], budget: float) -> list[dict]:
    """The real classifier given `counts` rendered lines and nothing else: int8-static's report against 300
    independent lines (seed 11), full INT8 beside it."""
    try:
        src = model_path(by_name("ppocr_mobile_v2_cls"))
    except ZooUnavailable as exc:
        print(f"ppocr_mobile_v2_cls skipped: {exc}", file=sys.stderr)
        return []
    independent = lines.orientation_set(300, seed=11)[0]
    np.savez(work / "independent.npz", x=independent)
    rows = []
    for count in counts:
        np.savez(work / f"lines{count}.npz", x=lines.orientation_set(count, seed=1)[0])
        for label, extra in (("full INT8", {"mixed_precision": False}), ("int8-static (search)", {})):
            r = convert(src, "int8-static", work / f"lines{count}.npz", work / f"out{count}",
                        options={"latency_budget_s": budget} | extra).as_dict()  # fmt: skip
            mixed = r["mixed_precision"] or {}
            chosen = next((s for s in mixed.get("steps", []) if s["float_layers"] == mixed.get("float_layers")
                           and s["setting"] == mixed.get("setting")), {})  # fmt: skip
            (row,) = honest_rows(src, f"ppocr cls, {count} lines", work / f"lines{count}.npz",
                                 work / "independent.npz", [r])  # fmt: skip
            rows.append(row | {
                "variant": label, "search_in": chosen.get("in_top1"), "search_out": chosen.get("top1"),
                "judged_on": mixed.get("judged_on"), "float_layers": len(mixed.get("float_layers", [])),
                "setting": mixed.get("setting", ""), "size_ratio": r["size_ratio"], "note": "; ".join(r["unproven"]
                or r["failed_metrics"])[:90],
            })  # fmt: skip
    return rows


def honest_table(rows: list[dict]) -> Table:
    table = Table(title="honest figures: in sample vs held out (the report) vs independent", title_justify="left")
    for column in ("model", "variant", "verdict", "in sample", "search out", "held out (report)", "95% lower",
                   "independent", "float layers", "size", "why not pass"):  # fmt: skip
        table.add_column(
            column, justify="left" if column in ("model", "variant", "verdict", "why not pass") else "right"
        )

    def pct(x: float | None, n: int | None = None) -> str:
        return "-" if x is None else f"{x:.2%}" + (f" ({n})" if n else "")

    for r in rows:
        table.add_row(
            r["model"], r["variant"], r["verdict"], pct(r["in_sample"], r["in_n"]),
            pct(r.get("search_out"), r.get("judged_on")), pct(r["held_out"], r["held_n"]), pct(r["lower"]),
            pct(r["independent"], r["independent_n"]), str(r.get("float_layers", "-")),
            f"{r['size_ratio']:.0%}" if r.get("size_ratio") else "-", r.get("note", ""),
        )  # fmt: skip
    table.caption = "top-1 for classifiers, else cosine; (n) = samples; in sample = the calibration share it was fit on"
    return table


def _shapes(inputs: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k} {'x'.join(map(str, a.shape)) or 'scalar'}" for k, a in inputs.items())


def _compare(want: dict, got: dict) -> dict:
    """Max |OV - ORT| and max |OV - ORT| / |ORT| (where |ORT| > 1e-3) over every output; within rtol = atol = 1e-3."""
    pairs = [(np.asarray(want[k], np.float64), np.asarray(got[k], np.float64)) for k in want]
    pairs = [(a, b) for a, b in pairs if a.size]
    rel = [np.abs(a - b)[np.abs(a) > 1e-3] / np.abs(a)[np.abs(a) > 1e-3] for a, b in pairs]
    return {
        "max_abs_diff": max((float(np.max(np.abs(a - b))) for a, b in pairs), default=0.0),
        "max_rel_diff": max((float(r.max()) for r in rel if r.size), default=0.0),
        "within_1e-3": all(np.allclose(b, a, rtol=1e-3, atol=1e-3) for a, b in pairs),
    }


def zoo_openvino_rows(work: Path, only: set[str] | None = None) -> list[dict]:
    """Every ONNX model of the zoo converted to OpenVINO with no calibration data, its answers against ORT's on the
    catalog's realistic inputs."""
    rows = []
    for entry in (m for m in MODELS if m.format == "onnx" and (not only or m.name in only)):
        try:
            src = model_path(entry)
        except ZooUnavailable as exc:
            rows.append({"model": entry.name, "built": False, "note": f"skipped: {exc}"})
            continue
        try:
            r = convert(src, "openvino", None, work / entry.name, options={"latency_budget_s": 0.2})
        except (CalibrationError, ConversionError) as exc:  # the model itself: no synthetic input runs it
            rows.append({"model": entry.name, "built": False, "note": str(exc)[:160]})
            continue
        row = {"model": entry.name, "built": r.ok, "verdict": r.verdict, "note": r.error or r.measured_on,
               "fixes": " | ".join(f[:110] for f in r.fixes if "IR weights" in f or "already INT8" in f)}  # fmt: skip
        if r.ok and r.path:
            inputs = entry.inputs()
            try:
                ((want, got),) = paired_answers(src, "openvino", Path(r.path), "openvino", [inputs])
                row |= {"inputs": _shapes(inputs)} | _compare(want, got)
            except Exception as exc:
                row |= {"note": f"does not run on the catalog's inputs: {str(exc).splitlines()[0][:100]}"}
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="all", help="comma-separated variants, or 'all'")
    parser.add_argument("--latency-budget", type=float, default=2.0, help="seconds of timing per measurement")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-serve", action="store_true", help="skip part 2 (push to a real agent)")
    parser.add_argument("--no-mixed", action="store_true", help="skip part 3 (full vs partial INT8)")
    parser.add_argument("--mixed-only", action="store_true", help="run part 3 only")
    parser.add_argument("--honest-only", action="store_true", help="run part 4 only (the real classifier)")
    parser.add_argument("--lines", default="64,256,512", help="part 4: rendered lines given to the converter")
    parser.add_argument("--zoo-openvino", action="store_true", help="run part 5 only (every zoo ONNX model)")
    parser.add_argument("--only", default="", help="part 5: comma-separated zoo model names")
    args = parser.parse_args()
    if args.zoo_openvino:
        with tempfile.TemporaryDirectory(prefix="bench-zoo-ov-") as tmp:
            rows = zoo_openvino_rows(Path(tmp), {n for n in args.only.split(",") if n})
        for row in rows:
            print(json.dumps(row) if args.json else "  ".join(f"{k}={v}" for k, v in row.items()))
        return
    if args.honest_only:
        args.no_serve = args.no_mixed = args.mixed_only = True
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    console = Console(width=170)
    everything = {}
    with tempfile.TemporaryDirectory(prefix="bench-converters-") as tmp:
        work = Path(tmp)
        honest: list[dict] = []
        for name, model, calib, valid in [] if args.mixed_only else models(work):
            results = convert_many(
                model, names, calib, work / "out", options={"latency_budget_s": args.latency_budget},
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
            honest += honest_rows(model, name, calib, valid, reports)
            if not args.json:
                source = f"{name} (FP32 {results[0].source_size_bytes / 1e6:.2f} MB)"
                console.print(report_table(reports, source))
                for r in results:
                    if r.error:
                        console.print(f"  {r.variant}: {r.error}", highlight=False)
        if not args.no_serve and not args.mixed_only:
            passing = {
                name: [
                    r["variant"] for r in reports if r["verdict"] in ("pass", "unproven") and r["variant"] in VARIANTS
                ]
                for name, reports in everything.items()
            }
            (work / "serve").mkdir()
            rows = check_served(models(work / "serve"), passing, work / "serve")
            everything = {"conversions": everything, "served": rows}
            if not args.json:
                console.print(served_table(rows))
        if args.honest_only or not args.mixed_only:
            (work / "honest").mkdir()
            honest += ocr_rows(work / "honest", [int(n) for n in args.lines.split(",")], args.latency_budget)
            everything = {"conversions": everything, "honest": honest}
            if not args.json:
                console.print(honest_table(honest))
        if not args.no_mixed:
            (work / "mixed").mkdir()
            rows = mixed_rows(work / "mixed", args.latency_budget)
            everything = {"conversions": everything, "mixed_precision": rows}
            if not args.json:
                console.print(mixed_table(rows))
    if args.json:
        sys.stdout.write(json.dumps(everything, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
