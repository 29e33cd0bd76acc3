"""Accuracy-driven mixed precision for int8-static: on a real third-party text-orientation classifier (PaddleOCR's,
from the rapidocr wheel) with rendered text lines, and on the project's own transformer block; the search decides
out of sample (issue 28: ranges fitted on two thirds of the calibration lines, candidates judged on the third), the
chosen variant's figure on held-out lines the search never saw is the report's, and a refusal says how far it got."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from zoo import lines  # noqa: E402
from zoo.catalog import by_name  # noqa: E402
from zoo.fetch import ZooUnavailable, model_path  # noqa: E402

from converters import Thresholds, convert  # noqa: E402
from converters.measure import load_onnx  # noqa: E402
from edgectl import sample_models  # noqa: E402

FAST = {"latency_budget_s": 0.3}
HELD_OUT = 1000  # rendered lines the search never sees: the report's validation data and the test's own check


def _outputs(path, x: np.ndarray) -> np.ndarray:
    model = load_onnx(path)
    try:
        return np.concatenate([next(iter(model.run({"x": x[i : i + 1]}).values())) for i in range(len(x))])
    finally:
        model.close()


@pytest.fixture(scope="module")
def line_sets(tmp_path_factory):
    """The real classifier and its data: 256 rendered lines to calibrate on, 1000 other lines held out."""
    try:
        src = model_path(by_name("ppocr_mobile_v2_cls"))
    except ZooUnavailable as exc:
        pytest.skip(str(exc))
    d = tmp_path_factory.mktemp("ppocr")
    cal, _ = lines.orientation_set(256, seed=1)
    held, labels = lines.orientation_set(HELD_OUT, seed=7)
    np.savez(d / "cal.npz", x=cal)
    np.savez(d / "held.npz", x=held)
    return src, d, held, labels


@pytest.fixture(scope="module")
def ppocr(line_sets):
    """The real classifier, calibrated on 256 rendered lines, validated on 1000 other lines."""
    src, d, held, labels = line_sets
    options = {**FAST, "eval_samples": HELD_OUT}
    result = convert(src, "int8-static", d / "cal.npz", d / "out", options=options, validation=d / "held.npz")
    return src, result, held, labels


def test_rendered_lines_are_hard_and_balanced():
    x, labels = lines.orientation_set(40, seed=3)
    assert x.shape == (40, 3, 48, 192) and x.dtype == np.float32 and labels.sum() == 20
    assert len(lines.font_files()) >= 1 or lines.font_files() == ()
    assert float(x.std()) > 0.2  # real ink on paper, not a flat image
    again, _ = lines.orientation_set(40, seed=3)
    assert np.array_equal(x, again)


def test_search_decides_out_of_sample_and_says_why(ppocr):
    """Every step carries its in- and out-of-sample figures. Where a full-INT8 setting reaches the aim on the 85 judge
    lines (8-bit weights: x86 with VNNI, measured here 85/85 with Percentile after MinMax missed), no mix is searched
    and the report says mixed precision was not needed; the verdict is still the 1000 held-out lines' (below).
    Elsewhere full INT8 misses the aim (7-bit weights: x86 without VNNI): what the search keeps beats full INT8 out of
    sample, else full INT8 stays and the report says so."""
    _, r, _, _ = ppocr
    mixed = r.mixed_precision
    assert mixed is not None, r.error
    first = mixed["steps"][0]
    assert first["step"] == "full INT8, MinMax, per-channel"
    assert (mixed["fitted_on"], mixed["judged_on"], mixed["in_sample_on"]) == (171, 85, 64)
    assert all(s["in_top1"] is not None and s["top1"] is not None for s in mixed["steps"])
    if mixed["stopped"] == "full-int8-passed":
        assert all(not s["float_layers"] for s in mixed["steps"]) and not mixed["sensitivity"]
        assert mixed["steps"][-1]["passed"] and mixed["steps"][-1]["setting"] == mixed["setting"]
        assert not any(s["passed"] for s in mixed["steps"][:-1])  # the first setting that passes ends it
        assert not mixed["float_layers"] and not mixed["kept_full_int8"]
        assert any(f.startswith(f"mixed precision not needed: full INT8 ({mixed['setting']})") for f in r.fixes)
        return
    assert not first["passed"]
    assert {s["setting"] for s in mixed["steps"]} >= {"MinMax, per-channel", "Percentile, per-channel"}
    assert mixed["stopped"] in ("passed", "size", "budget", "exhausted")  # passed: a mix reached the aim (x86 without
    # VNNI, 7-bit weights); then it must beat full INT8 out of sample, below
    assert mixed["sensitivity"][0]["error_removed"] >= mixed["sensitivity"][-1]["error_removed"]
    if mixed["float_layers"]:
        assert set(mixed["why_float"]) == set(mixed["float_layers"]) and not mixed["kept_full_int8"]
        assert all("cut the output error by" in why for why in mixed["why_float"].values())
        chosen = next(s for s in mixed["steps"] if s["float_layers"] == mixed["float_layers"])
        full = next(s for s in mixed["steps"] if s["setting"] == chosen["setting"] and not s["float_layers"])
        assert chosen["error"] < full["error"] and chosen["top1"] >= full["top1"]  # it beats full INT8 out of sample
    else:
        assert mixed["kept_full_int8"] == "no mix beat it out of sample"
    assert any(f.startswith(f"mixed precision ({mixed['setting']})") for f in r.fixes), r.fixes


def test_chosen_variant_on_held_out_lines(ppocr):
    """The chosen variant on 1000 held-out lines: the report's figure is the test's own, within 2 points of 99%
    (measured: 98-99.5%), passed only where its 95% lower bound clears 99% (else named below or unproven), at most
    75% of the FP32 size; accuracy against the true rotation is kept; float layers are float in the file."""
    src, r, held, labels = ppocr
    assert r.ok, r.error
    assert r.samples == HELD_OUT and r.measured_on.startswith(f"{HELD_OUT} samples of the validation data")
    assert r.size_ratio <= 0.75
    assert r.latency_ms_p50 and r.source_latency_ms_p50 and r.baseline == "onnxruntime"
    reference, got = _outputs(src, held), _outputs(r.path, held)
    agree = float((reference.argmax(1) == got.argmax(1)).mean())
    assert agree == pytest.approx(r.agreement["top1"]) and agree >= 0.97, agree
    assert r.passed == (r.agreement["top1_lower"] >= 0.99), (r.verdict, r.agreement["top1_lower"])
    assert r.passed or r.failed_metrics or r.unproven
    fp32_acc, int8_acc = (float((o.argmax(1) == labels).mean()) for o in (reference, got))
    assert int8_acc >= fp32_acc - 0.015, (int8_acc, fp32_acc)
    model = onnx.load(r.path)
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    nodes = {n.name: n for n in model.graph.node}
    floats = [nodes[name] for name in r.mixed_precision["float_layers"] if nodes.get(name) is not None]
    assert len(floats) == len(r.mixed_precision["float_layers"])
    for node in floats:
        if node.op_type == "Conv":
            assert producers.get(node.input[1]) != "DequantizeLinear", node.name  # float weights
    quantized = [n for n in model.graph.node if n.op_type == "Conv" and producers.get(n.input[1]) == "DequantizeLinear"]
    assert quantized  # the rest is INT8


def test_report_json_carries_the_search(ppocr):
    _, r, _, _ = ppocr
    data = json.loads(json.dumps(r.as_dict()))
    mixed = data["mixed_precision"]
    assert mixed["setting"] and mixed["aim"].startswith("top-1 99.50%")
    assert all({"step", "setting", "float_layers", "top1", "in_top1", "size_bytes", "passed"} <= set(s)
               for s in mixed["steps"])  # fmt: skip
    assert data["speedup"] == pytest.approx(data["source_latency_ms_p50"] / data["latency_ms_p50"])


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    """The sample transformer block, its full-INT8 cosine on the validation data measured on this machine."""
    d = tmp_path_factory.mktemp("block")
    rng = np.random.default_rng(0)
    model = sample_models.transformer_block(d / "block.onnx")
    np.savez(d / "cal.npz", x=rng.standard_normal((64, 16, 128)).astype(np.float32))
    np.savez(d / "val.npz", x=rng.standard_normal((100, 16, 128)).astype(np.float32))
    full = convert(model, "int8-static", d / "cal.npz", d / "full", options={**FAST, "mixed_precision": False},
                   validation=d / "val.npz")  # fmt: skip
    assert full.ok and full.mixed_precision is None
    return model, d, full.agreement["cosine"]


def test_sample_model_stricter_bar_keeps_layers_in_float(block, tmp_path):
    """A bar a quarter of the way from what full INT8 reaches here to perfect: the search keeps some layers in
    float (within the size budget) and the chosen variant passes on the validation data."""
    model, d, full_cosine = block
    bar = Thresholds(cosine=1 - 0.75 * (1 - full_cosine))
    r = convert(model, "int8-static", d / "cal.npz", tmp_path, bar, FAST, validation=d / "val.npz")
    mixed = r.mixed_precision
    assert mixed["full_int8"]["cosine"] < 1 - (1 - bar.cosine) / 2  # the aim: full INT8 missed it
    assert r.passed and r.agreement["cosine"] >= bar.cosine, r.failed_metrics
    assert mixed["stopped"] in ("passed", "size") and mixed["float_layers"]
    assert r.agreement["cosine"] > full_cosine and r.size_ratio <= 0.75


def test_refusal_names_the_best_reached_and_the_layers_tried(block, tmp_path):
    model, d, _ = block
    r = convert(model, "int8-static", d / "cal.npz", tmp_path, Thresholds(cosine=0.9999999),
                {**FAST, "max_size_ratio": 0.4}, validation=d / "val.npz")  # fmt: skip
    mixed = r.mixed_precision
    assert r.ok and not r.passed and r.failed_metrics
    assert mixed["stopped"] in ("size", "exhausted", "budget") and mixed["layers_tried"]
    assert mixed["best_cosine"] is not None and r.size_ratio <= 0.4
    assert any("search stopped" in f and "layer(s) tried" in f for f in r.fixes), r.fixes


def test_budget_stops_the_search(block, tmp_path):
    model, d, _ = block
    r = convert(model, "int8-static", d / "cal.npz", tmp_path, Thresholds(cosine=0.9999999),
                {**FAST, "mixed_budget_s": 0}, validation=d / "val.npz")  # fmt: skip
    mixed = r.mixed_precision
    assert mixed["stopped"] == "budget" and len(mixed["steps"]) == 1
    assert not r.passed and r.ok


def test_synthetic_calibration_skips_the_search(block, tmp_path):
    model, _, _ = block
    r = convert(model, "int8-static", None, tmp_path, options=FAST)
    assert r.ok and r.mixed_precision is None
    assert any("mixed precision skipped" in f for f in r.fixes)


# openvino-int8: the same search over NNCF (ignored scope, range estimators), on OpenVINO. Two range estimators, no
# other variations and a 100 s budget (the shrink stops there, the passing mix stands) keep the file's time in bounds
# on a 2-core box; the defaults try eight calibrations within 240 s.
OV_SEARCH = {"calibration_methods": ["MeanMinMax", "Histogram"], "ov_variations": False, "mixed_budget_s": 100}


def _ir(path):
    """The IR inside an openvino-int8 artifact, read by OpenVINO."""
    import tarfile

    ov = pytest.importorskip("openvino")
    with tarfile.open(path) as tar:
        xml, weights = (tar.extractfile(n).read() for n in ("model.xml", "model.bin"))
    return ov.Core().read_model(xml, ov.Tensor(np.frombuffer(weights, np.uint8).copy()))


@pytest.fixture(scope="module")
def ppocr_ov(line_sets):
    pytest.importorskip("nncf")
    src, d, held, labels = line_sets
    options = {**FAST, **OV_SEARCH, "eval_samples": HELD_OUT}
    result = convert(src, "openvino-int8", d / "cal.npz", d / "ov", options=options, validation=d / "held.npz")
    return result


def test_openvino_int8_search_on_held_out_lines(ppocr_ov):
    """NNCF's full INT8 does not reach the aim out of sample (85 judge lines cannot vouch for 99%); the search ranks
    operations in NNCF's ignored scope and keeps a mix only where it beats full INT8 out of sample; the chosen IR's
    figure on 1000 held-out lines, measured on OpenVINO, is the report's, passed only where its bound clears 99%."""
    r = ppocr_ov
    mixed = r.mixed_precision
    assert mixed is not None, (r.error, r.fixes)
    first = mixed["steps"][0]
    assert first["step"].startswith("full INT8, MeanMinMax, per-channel") and not first["passed"]
    assert first["in_top1"] is not None and (mixed["fitted_on"], mixed["judged_on"]) == (171, 85)
    assert {s["setting"].split(",")[0] for s in mixed["steps"]} >= {"MeanMinMax", "Histogram"}
    assert mixed["stopped"] in ("passed", "size", "budget", "exhausted"), mixed["stopped"]  # passed: a mix reached
    # the aim on the judge lines (x86 without VNNI: 7-bit weights); it is then kept only where it beats full INT8
    assert r.ok and r.runtime == "openvino" and r.samples == HELD_OUT and r.agreement["top1"] >= 0.97, r.error
    assert r.passed == (r.agreement["top1_lower"] >= 0.99) and (r.passed or r.failed_metrics or r.unproven)
    assert r.latency_ms_p50 and r.source_latency_ms_p50 and r.speedup  # speed against FP32 on OpenVINO, reported
    assert "model.bin" in mixed["size_of"] and "bypassed" in mixed["ranked_by"] and mixed["sensitivity"]
    assert set(mixed["why_float"]) == set(mixed["float_layers"])
    assert not (mixed["float_layers"] and mixed["kept_full_int8"])


def test_openvino_int8_float_layers_are_float_in_the_ir(ppocr_ov):
    """The operations the report names float have no FakeQuantize and no int8 weights on their inputs in the IR the
    agent loads; the rest is still quantized."""
    r = ppocr_ov
    model = _ir(r.path)
    ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
    floats = [ops[name] for name in r.mixed_precision["float_layers"]]

    def quantized(op) -> bool:
        sources = [i.get_source_output().get_node() for i in op.inputs()]
        if any(s.get_type_name() == "FakeQuantize" for s in sources):
            return True
        weights = [s.input(0).get_source_output().get_node() for s in sources if s.get_type_name() == "Multiply"]
        chain = [w.input(0).get_source_output().get_node() if w.get_type_name() == "Convert" else w for w in weights]
        return any(c.get_type_name() == "Constant" and str(c.get_element_type()) in ("i8", "<Type: 'int8_t'>")
                   for c in chain)  # fmt: skip

    assert not any(quantized(op) for op in floats)
    assert sum(op.get_type_name() == "FakeQuantize" for op in ops.values()) > 0
    assert any(quantized(op) for name, op in ops.items() if name not in r.mixed_precision["float_layers"])


def test_openvino_int8_refusal_names_the_best_reached(line_sets, tmp_path):
    """Nothing passes (a bar of perfect agreement, no time for the search): refused on the held-out lines, with
    the best agreement the search reached and where it stopped."""
    pytest.importorskip("nncf")
    src, d, _, _ = line_sets
    options = {**FAST, "calibration_methods": ["MeanMinMax"], "ov_variations": False, "mixed_budget_s": 0}
    r = convert(src, "openvino-int8", d / "cal.npz", tmp_path, Thresholds(top1=1.0), options,
                validation=d / "held.npz")  # fmt: skip
    mixed = r.mixed_precision
    assert r.ok and not r.passed and r.failed_metrics and r.error is None
    assert mixed["stopped"] == "budget" and len(mixed["steps"]) == 1 and mixed["best_top1"] < 1.0
    assert any("search stopped (budget)" in f and "layer(s) tried" in f for f in r.fixes), r.fixes
