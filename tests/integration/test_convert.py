"""Converters on real small models built here: every variant loads in its runtime and is measured; the report's
numbers are consistent with its verdict; targets from the issue (int8-static size/agreement, pruned transfer)."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
# fp16 and int4 are asserted on every model: until pyproject's `convert` extra lists these, a fresh machine skips
pytest.importorskip("onnxconverter_common", reason="the convert extra needs onnxconverter-common")
pytest.importorskip("onnx_ir", reason="the convert extra needs onnx-ir (int4 MatMulNBits quantizer)")

from converters import (  # noqa: E402
    VARIANTS,
    CalibrationError,
    ConversionError,
    ConversionResult,
    Thresholds,
    convert,
    convert_many,
    load_calibration,
)
from converters.builders.tflite import flex_ops  # noqa: E402
from converters.calibration import SYNTHETIC_WARNING  # noqa: E402
from edgectl import sample_models  # noqa: E402
from targets.tensors import TensorSpec  # noqa: E402

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
HAVE_NNCF = importlib.util.find_spec("nncf") is not None
HAVE_ONNX2TF = all(importlib.util.find_spec(m) for m in ("onnx2tf", "tensorflow", "ai_edge_litert"))
FAST = {"latency_budget_s": 0.2, "eval_samples": 100}


def check_report(r: ConversionResult, thresholds: Thresholds = Thresholds()) -> None:
    """A built variant: loaded and ran in its runtime, and its verdict follows from its own numbers."""
    assert r.ok, r.error
    assert r.error is None and r.path and r.size_bytes > 0 and r.samples > 0
    assert r.latency_ms_p50 and r.latency_ms_p50 > 0
    assert r.transfer_bytes <= r.size_bytes
    assert r.size_ratio == pytest.approx(r.size_bytes / r.source_size_bytes)
    if r.source_latency_ms_p50:
        assert r.speedup == pytest.approx(r.source_latency_ms_p50 / r.latency_ms_p50)
    a = r.agreement
    assert 0 <= a["mean_abs_error"] <= a["max_abs_error"]
    for name, m in a["outputs"].items():
        below = m["top1"] < thresholds.top1 if "top1" in m else m["cosine"] < thresholds.cosine
        assert below == any(f.startswith(f"{name}:") for f in r.failed_metrics), (name, m, r.failed_metrics)
    assert r.passed == (not r.failed_metrics and not r.unproven)
    assert r.verdict == ("pass" if r.passed else "unproven" if r.unproven else "below")
    assert "samples" in r.measured_on or "inputs" in r.measured_on  # what every figure was measured on, how many
    json.dumps(r.as_dict())  # storable as it is


def keeps_bar(r: ConversionResult) -> bool:
    """Measured at or above the bar: `pass`, or `unproven` where the held-out/validation samples are too few for
    its 95% lower bound to clear it too (converters.evidence)."""
    return r.ok and not r.failed_metrics and r.verdict in ("pass", "unproven")


@pytest.fixture(scope="module")
def conv_files(tmp_path_factory):
    """The conv-net classifier, with one draw of its images to calibrate on and another to validate on."""
    d = tmp_path_factory.mktemp("conv")
    model = sample_models.conv_classifier(d / "conv.onnx")
    np.savez(d / "calib.npz", image=sample_models.classifier_images(128, seed=1)[0])
    np.savez(d / "valid.npz", image=sample_models.classifier_images(200, seed=2)[0])
    return model, d / "calib.npz", d / "valid.npz"


@pytest.fixture(scope="module")
def conv(conv_files, tmp_path_factory):
    model, calib, valid = conv_files
    out = tmp_path_factory.mktemp("conv-out")
    results = convert_many(model, list(VARIANTS), calib, out, options=FAST, validation=valid)
    return {r.variant: r for r in results}


def test_conv_int8_static_meets_the_issue_target(conv):
    r = conv["int8-static"]
    check_report(r)
    assert r.size_ratio <= 0.30
    assert r.agreement["top1"] >= 0.99 and keeps_bar(r)
    assert any("ORT pre-processing" in f for f in r.fixes)
    assert r.runtime == "onnxruntime" and r.validation.endswith("valid.npz")


def test_conv_pruned_auto_sparsity_keeps_agreement(conv):
    """Without a sparsity the highest one that keeps agreement on the calibration data is chosen; it then also
    passes on the separate validation data, and travels zstd-compressed."""
    r = conv["pruned"]
    check_report(r)
    assert keeps_bar(r), r.failed_metrics
    (chosen,) = [f for f in r.fixes if "chosen" in f]
    assert "did not" in chosen  # higher sparsities were tried and refused: this net loses accuracy fast
    assert r.transfer_compressed and r.transfer_bytes <= 0.8 * r.source_size_bytes


def test_conv_pruned_half_with_zstd_transfer_under_55_percent(conv_files, tmp_path):
    """A given sparsity is applied as given, and the report says it falls short (no fine-tuning after pruning)."""
    model, calib, valid = conv_files
    r = convert(model, "pruned", calib, tmp_path, options={**FAST, "sparsity": 0.5}, validation=valid)
    check_report(r)
    assert any("magnitude pruning" in f and "(50%" in f for f in r.fixes)
    assert r.transfer_compressed and r.transfer_bytes <= 0.55 * r.source_size_bytes
    assert not r.passed and "short by" in r.failed_metrics[0]


@pytest.mark.parametrize("variant", ["int8", "fp16", "openvino", "openvino-int8", "tflite", "tflite-int8"])
def test_conv_variants_load_and_report(conv, variant):
    r = conv[variant]
    if variant.startswith("openvino") and not (HAVE_OPENVINO and HAVE_NNCF):
        assert "needs" in r.error
        return
    if variant.startswith("tflite") and not HAVE_ONNX2TF:
        assert "needs" in r.error and "onnx2tf" in r.error
        return
    check_report(r)
    assert r.agreement["top1"] is not None  # a classifier: judged on top-1
    assert keeps_bar(r), r.failed_metrics  # every variant meets the threshold on the validation images
    if variant in ("fp16", "openvino", "tflite"):  # float conversions keep every decision
        assert r.agreement["top1"] == 1.0
    if variant == "openvino-int8":  # real calibration data: the mixed-precision search says what it did
        assert any(f.startswith("mixed precision") for f in r.fixes), r.fixes
    if variant.startswith("openvino"):
        assert r.path.endswith(".tar") and r.baseline.startswith("openvino")


def test_conv_int4_is_refused_with_the_reason(conv):
    r = conv["int4"]
    assert not r.ok and not r.passed and "MatMul" in r.error


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    d = tmp_path_factory.mktemp("tf")
    model = sample_models.transformer_block(d / "block.onnx")
    rng = np.random.default_rng(0)
    np.save(d / "x.npy", rng.standard_normal((64, 16, 128)).astype(np.float32))
    names = ["int8", "int8-static", "fp16", "int4", "openvino", "openvino-int8", "tflite", "tflite-int8"]
    return {r.variant: r for r in convert_many(model, names, d / "x.npy", d / "out", options=FAST)}


@pytest.mark.parametrize("variant", ["int8", "int8-static", "fp16", "int4", "openvino", "openvino-int8"])
def test_transformer_variants(transformer, variant):
    r = transformer[variant]
    if variant.startswith("openvino") and not (HAVE_OPENVINO and HAVE_NNCF):
        pytest.skip("openvino/nncf not installed")
    check_report(r)
    assert r.agreement["top1"] is None  # not a classifier: judged on cosine similarity
    assert keeps_bar(r), r.failed_metrics
    if variant == "int4":
        assert any("MatMulNBits" in f for f in r.fixes)
        assert r.size_ratio < 0.25


@pytest.mark.parametrize("variant", ["tflite", "tflite-int8"])
def test_transformer_tflite_builds_with_named_fallbacks(transformer, variant):
    """onnx2tf's channels-last guess trips on [batch, seq, dim] and its Erf needs the Flex delegate, which LiteRT
    lacks: the shapes are kept as they are, Erf is built from builtin ops, and a full-int8 model that LiteRT cannot
    run gives way to int8 weights with float activations; the report names each of these."""
    r = transformer[variant]
    if not HAVE_ONNX2TF:
        assert "needs" in r.error and "onnx2tf" in r.error
        return
    check_report(r)
    assert keeps_bar(r), r.failed_metrics
    assert any("kept in their ONNX shape" in f for f in r.fixes), r.fixes
    assert any("pseudo-Erf" in f for f in r.fixes), r.fixes
    assert flex_ops(Path(r.path)) == []
    if variant == "tflite-int8":
        assert r.size_ratio < 0.35
        assert any(f.startswith("int8 weights") for f in r.fixes), r.fixes


def test_flex_ops_are_named(tmp_path):
    blob = tmp_path / "m.tflite"
    blob.write_bytes(b"TFL3\x00\x00FlexErf\x00\x10FlexRFFT\x00builtin")
    assert flex_ops(blob) == ["Erf", "RFFT"]


def test_mlp_variants(tmp_path):
    model = sample_models.mlp(tmp_path / "mlp.onnx", n_in=64, hidden=256, n_out=8)
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).standard_normal((100, 64)).astype(np.float32))
    names = ["int8", "int8-static", "fp16", "int4", "pruned"] + (["openvino"] if HAVE_OPENVINO else [])
    results = {r.variant: r for r in convert_many(model, names, tmp_path / "cal.npz", tmp_path, options=FAST)}
    for r in results.values():
        check_report(r)
    assert keeps_bar(results["fp16"]) and keeps_bar(results["int8"])
    assert results["int4"].size_ratio < 0.5


def _scaler_model(path):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Scaler", ["x"], ["xs"], domain="ai.onnx.ml", offset=[0.5] * 16, scale=[2.0] * 16),
        helper.make_node("MatMul", ["xs", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "scaler",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [w],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_unsupported_op_is_named_and_other_variants_still_build(tmp_path):
    model = _scaler_model(tmp_path / "scaler.onnx")
    names = ["openvino", "int8", "tflite", "fp16"]
    results = {r.variant: r for r in convert_many(model, names, None, tmp_path, options=FAST)}
    if HAVE_OPENVINO:
        assert not results["openvino"].ok and "Scaler" in results["openvino"].error
    if HAVE_ONNX2TF:
        assert not results["tflite"].ok and "Scaler" in results["tflite"].error
    check_report(results["int8"])
    assert results["int8"].calibration == "synthetic"
    assert SYNTHETIC_WARNING in results["int8"].warnings


def test_old_opset_and_constant_weights_are_fixed_and_named(tmp_path):
    """An opset-11 model whose weights are Constant nodes: upgraded and folded for per-channel QDQ."""
    from onnx import helper, numpy_helper

    src = onnx.load(str(sample_models.mlp(tmp_path / "mlp.onnx", n_in=32, hidden=64)))
    weights = {i.name: i for i in src.graph.initializer}
    constants = [helper.make_node("Constant", [], [n], value=numpy_helper.from_array(numpy_helper.to_array(t), n))
                 for n, t in weights.items()]  # fmt: skip
    del src.graph.initializer[:]
    nodes = constants + list(src.graph.node)
    del src.graph.node[:]
    src.graph.node.extend(nodes)
    del src.opset_import[:]
    src.opset_import.extend([helper.make_opsetid("", 11)])
    onnx.save(src, str(tmp_path / "old.onnx"))
    np.save(tmp_path / "x.npy", np.random.default_rng(1).standard_normal((64, 32)).astype(np.float32))
    r = convert(tmp_path / "old.onnx", "int8-static", tmp_path / "x.npy", tmp_path, options=FAST)
    check_report(r)
    assert any("opset upgrade 11 -> 13" in f for f in r.fixes), r.fixes
    assert any("Constant node(s) into initializers" in f for f in r.fixes), r.fixes
    quantized = onnx.load(r.path)
    assert any(n.op_type == "DequantizeLinear" for n in quantized.graph.node)


def test_unknown_variant_and_missing_package_are_results_not_exceptions(tmp_path):
    model = sample_models.mlp(tmp_path / "mlp.onnx")
    r = convert(model, "int3", None, tmp_path, options=FAST)
    assert not r.ok and "unknown variant" in r.error and "int8-static" in r.error


# --- calibration data ---------------------------------------------------------------------------------------------

SPEC = [TensorSpec("x", "FP32", (-1, 4))]
TWO = [TensorSpec("a", "FP32", (-1, 3)), TensorSpec("b", "INT64", (-1,))]


def test_calibration_npz_npy_and_directories(tmp_path):
    x = np.arange(20, dtype=np.float32).reshape(5, 4)
    np.savez(tmp_path / "c.npz", x=x)
    np.save(tmp_path / "c.npy", x)
    assert np.array_equal(load_calibration(tmp_path / "c.npz", SPEC).arrays["x"], x)
    assert np.array_equal(load_calibration(tmp_path / "c.npy", SPEC).arrays["x"], x)
    d = tmp_path / "dir"
    d.mkdir()
    np.savez(d / "0.npz", x=x[:2])
    np.savez(d / "1.npz", x=x[2:])
    cal = load_calibration(d, SPEC)
    assert len(cal) == 5 and np.array_equal(cal.arrays["x"], x)
    assert [b["x"].shape for b in cal.batches(2)] == [(2, 4), (2, 4)]
    named = tmp_path / "named"
    named.mkdir()
    np.save(named / "a.npy", np.ones((3, 3), np.float64))
    np.save(named / "b.npy", np.arange(3))
    cal = load_calibration(named, TWO)
    assert cal.arrays["a"].dtype == np.float32 and any("cast from float64" in n for n in cal.notes)


def test_calibration_single_sample_gets_a_batch_axis(tmp_path):
    np.save(tmp_path / "one.npy", np.ones(4, np.float32))
    assert load_calibration(tmp_path / "one.npy", SPEC).arrays["x"].shape == (1, 4)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: np.savez(p / "c.npz", y=np.ones((2, 4), np.float32)), "do not match the model inputs"),
        (lambda p: np.savez(p / "c.npz", x=np.ones((2, 5), np.float32)), "expects [-1, 4]"),
        (lambda p: (p / "c.txt").write_text("1 2 3"), "must be .npz, .npy"),
    ],
)
def test_calibration_errors_say_what_was_expected(tmp_path, make, message):
    make(tmp_path)
    path = next(tmp_path.iterdir())
    with pytest.raises(CalibrationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_calibration(path, SPEC)


def test_npy_for_a_two_input_model_needs_names(tmp_path):
    np.save(tmp_path / "c.npy", np.ones((2, 3), np.float32))
    with pytest.raises(CalibrationError, match="one-input model"):
        load_calibration(tmp_path / "c.npy", TWO)


def test_synthetic_calibration_warns_loudly(caplog):
    with caplog.at_level(logging.WARNING, logger="converters"):
        cal = load_calibration(None, SPEC)
    assert cal.synthetic and len(cal) > 0 and "UNPROVEN" in caplog.text


# --- synthetic data of a size the reference runtime accepts (issue 28) -------------------------------------------


def _late_pooling_model(path: Path) -> Path:
    """An image classifier with dynamic height and width: two stride-2 convolutions, then a 7x7 MaxPool (stride 7).
    On a tiny image that kernel is wider than the feature map: ONNX Runtime still answers, OpenVINO's CPU refuses."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    shapes = {"w1": (8, 3, 3, 3), "b1": (8,), "w2": (16, 8, 3, 3), "b2": (16,), "fc": (16, 4), "fcb": (4,)}
    weights = [numpy_helper.from_array((0.2 * rng.standard_normal(s)).astype(np.float32), n) for n, s in shapes.items()]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p"], kernel_shape=[7, 7], strides=[7, 7]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "late_pooling",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _answers(source: Path, artifact: Path, inputs: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The first output of the ONNX source on ONNX Runtime and of the OpenVINO artifact, on each input, stacked."""
    from converters.measure import load, load_onnx

    reference = load_onnx(source)
    names = list(reference.inputs), list(reference.outputs)
    converted = load("openvino", artifact, "openvino", *names)
    try:
        want = [reference.run(x)[names[1][0]] for x in inputs]
        got = [converted.run(x)[names[1][0]] for x in inputs]
    finally:
        reference.close()
        converted.close()
    return np.concatenate(want), np.concatenate(got)


@pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino is not installed")
def test_openvino_without_calibration_data_runs_the_sizes_the_reference_accepts(tmp_path):
    """The converters once drew synthetic data from a generator of their own that set every dynamic dimension to 1:
    ONNX Runtime ran a 1x1 image through the 7x7 pooling, OpenVINO failed ("[CPU] MaxPool node ... Check
    'cmp::le(kernel, dim.get_length())' failed"). They draw from targets' ladder now, as devices do."""
    model = _late_pooling_model(tmp_path / "pool.onnx")
    r = convert(model, "openvino", None, tmp_path, options=FAST)
    check_report(r)
    assert r.calibration == "synthetic" and SYNTHETIC_WARNING in r.warnings
    rng = np.random.default_rng(3)
    inputs = [{"x": rng.standard_normal(shape).astype(np.float32)} for shape in [(1, 3, 224, 224), (2, 3, 96, 160)]]
    want, got = _answers(model, Path(r.path), inputs)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino is not installed")
def test_cli_converts_the_real_ocr_classifier_to_openvino_without_calibration_data(tmp_path):
    """Issue 28's command on the model it failed on, PaddleOCR's text-orientation classifier (x: [-1, 3, ?, ?]) from
    the rapidocr wheel: `edgectl convert ocr_cls.onnx --to openvino` with no calibration data builds an IR that keeps
    every threshold and answers like ONNX Runtime on rendered text lines (its FP16-stored weights move probabilities
    by ~1e-2 at most)."""
    from typer.testing import CliRunner
    from zoo import lines
    from zoo.catalog import by_name
    from zoo.fetch import ZooUnavailable, model_path

    from edgectl.cli import app

    try:
        source = model_path(by_name("ppocr_mobile_v2_cls"))
    except ZooUnavailable as exc:
        pytest.skip(str(exc))
    model = tmp_path / "ocr_cls.onnx"
    model.write_bytes(source.read_bytes())
    result = CliRunner().invoke(app, ["convert", str(model), "--to", "openvino", "--out", str(tmp_path), "--json"])
    (report,) = json.loads(result.stdout)
    assert report["error"] is None and report["path"] and report["failed_metrics"] == [], report
    assert report["calibration"] == "synthetic" and result.exit_code == (0 if report["passed"] else 1)
    x, _ = lines.orientation_set(64, seed=9)
    want, got = _answers(model, Path(report["path"]), [{"x": x[i : i + 1]} for i in range(len(x))])
    assert np.array_equal(got.argmax(1), want.argmax(1))
    np.testing.assert_allclose(got, want, atol=2e-2)


def test_bad_model_is_an_error(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(ConversionError, match="not a valid ONNX model"):
        convert(tmp_path / "bad.onnx", "int8", None, tmp_path)


# --- CLI ------------------------------------------------------------------------------------------------------------


def test_cli_convert_json_and_table(tmp_path):
    from typer.testing import CliRunner

    from edgectl.cli import app

    model = sample_models.mlp(tmp_path / "mlp.onnx")
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32))
    runner = CliRunner()
    result = runner.invoke(
        app, ["convert", str(model), "--to", "fp16,int9", "--calibration", str(tmp_path / "cal.npz"),
              "--out", str(tmp_path / "out"), "--json"],
    )  # fmt: skip
    assert result.exit_code == 1  # int9 does not exist
    reports = json.loads(result.stdout)
    assert [r["variant"] for r in reports] == ["fp16", "int9"]
    assert reports[0]["verdict"] in ("pass", "unproven") and not reports[0]["failed_metrics"]
    assert (tmp_path / "out" / "mlp.fp16.onnx").exists()
    assert "unknown variant" in reports[1]["error"]
    result = runner.invoke(app, ["convert", str(model), "--to", "fp16", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "fp16" in result.stdout and "pass" in result.stdout
    assert "UNPROVEN" in result.output  # synthetic data warning
    result = runner.invoke(app, ["convert", str(model), "--list"])
    assert result.exit_code == 0 and "openvino-int8" in result.stdout


def test_paired_latency_ranks_two_models_timed_in_turn(tmp_path):
    """The report's speedup comes from the variant and its float baseline timed in turn, so it ranks them right
    whatever the box's speed does meanwhile."""
    from converters.measure import load_onnx, paired_p50_ms

    small = load_onnx(sample_models.mlp(tmp_path / "small.onnx", n_in=64, hidden=32))
    big = load_onnx(sample_models.mlp(tmp_path / "big.onnx", n_in=64, hidden=8192))
    sample = {"x": np.ones((1, 64), np.float32)}
    try:
        fast, slow = paired_p50_ms(small, big, sample, budget_s=0.3)
    finally:
        small.close()
        big.close()
    assert fast > 0 and slow > 2 * fast
