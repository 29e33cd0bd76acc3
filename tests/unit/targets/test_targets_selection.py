"""Measured backend selection on real runtimes: rule order, the trial, failures skipped with reasons, the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgectl import sample_models
from targets import registry, selection
from targets.base import BackendError
from targets.probe import probe
from targets.selection import select_backend

pytest.importorskip("onnx")
FIXTURES = Path(__file__).parents[2] / "fixtures" / "probe"
BOTH = {"onnxruntime", "openvino"} <= set(registry.installed_backends("onnx"))


@pytest.fixture(scope="module")
def hardware() -> dict:
    return probe()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    import onnx

    d = tmp_path_factory.mktemp("sel")
    found = {
        "mlp": sample_models.mlp(d / "mlp.onnx"),
        "control": sample_models.control_flow(d / "control.onnx"),
        "tflite": sample_models.tflite_conv_net(d / "conv.tflite"),
    }
    future = onnx.load(str(found["mlp"]))
    future.ir_version = 99  # ONNX Runtime refuses IR versions it does not know; OpenVINO reads it
    onnx.save(future, str(d / "future.onnx"))
    found["future"] = d / "future.onnx"
    return found


def names(cands) -> list[str]:
    return [c.name for c in cands]


def fake_installed(*keys: str):
    types = registry.backend_types()
    return lambda fmt=None: [k for k in keys if fmt is None or fmt in types[k].formats]


def test_rule_order_per_hardware(monkeypatch):
    monkeypatch.setattr(registry, "installed_backends", fake_installed("onnxruntime", "openvino", "litert"))
    jetson = probe(FIXTURES / "jetson-orin") | {"ort_providers": ["TensorrtExecutionProvider", "CUDAExecutionProvider"]}
    assert names(selection.candidates("onnx", jetson))[:3] == [
        "onnxruntime:tensorrt",
        "onnxruntime:cuda",
        "onnxruntime:cpu",
    ]
    nuc = probe(FIXTURES / "intel-nuc") | {"openvino_devices": ["CPU", "GPU", "NPU"], "ort_providers": None}
    assert names(selection.candidates("onnx", nuc)) == [
        "openvino:gpu",
        "openvino:cpu",
        "onnxruntime:cpu",
        # reduced precision competes last and only if it agrees with the reference; the NPU computes in fp16
        "openvino:gpu:fp16",
        "openvino:npu",
    ]
    amx = nuc | {"cpu_flags": ["avx512f", "amx_bf16"], "openvino_devices": ["CPU"]}
    assert names(selection.candidates("onnx", amx))[-1] == "openvino:cpu:bf16"
    rpi = probe(FIXTURES / "rpi5") | {"ort_providers": ["CPUExecutionProvider"], "openvino_devices": None}
    monkeypatch.setattr(registry, "installed_backends", fake_installed("litert", "openvino"))
    assert names(selection.candidates("tflite", rpi)) == ["litert", "openvino:cpu"]
    monkeypatch.setattr(registry, "installed_backends", fake_installed("onnxruntime", "openvino"))
    assert names(selection.candidates("onnx", rpi)) == ["onnxruntime:cpu", "openvino:cpu"]
    tensorrt = selection.candidates("onnx", jetson, cache_dir=Path("/var/cache/x"))[0]
    assert tensorrt.options["tensorrt_cache_dir"] == "/var/cache/x/tensorrt"


@pytest.mark.parametrize("model", ["mlp", "control"])
def test_trial_picks_the_fastest_that_agrees(models, hardware, model):
    chosen = select_backend(models[model], "onnx", hardware, budget_s=1.0)
    tried = {r.name: r for r in chosen.candidates}
    working = [r for r in chosen.candidates if r.agreed]
    assert working and all(r.error is None and r.p50_ms > 0 and r.runs >= 3 for r in working)
    fastest = min(working, key=lambda r: r.p50_ms)
    assert chosen.label == fastest.name == chosen.backend.label
    assert chosen.label in chosen.reason
    if BOTH:
        assert {"onnxruntime:cpu", "openvino:cpu"} <= set(tried)
    json.dumps(chosen.as_dict())
    out = chosen.backend.infer(chosen.probe.sets[0])
    assert set(out) == {s.name for s in chosen.backend.outputs}


@pytest.mark.skipif(not BOTH, reason="needs onnxruntime and openvino")
def test_failing_backend_is_skipped_with_its_reason(models, hardware):
    chosen = select_backend(models["future"], "onnx", hardware, budget_s=1.0)
    tried = {r.name: r for r in chosen.candidates}
    assert chosen.label == "openvino:cpu"
    assert not tried["onnxruntime:cpu"].agreed
    assert "ONNX Runtime could not load" in tried["onnxruntime:cpu"].error
    assert "passed over: onnxruntime:cpu" in chosen.reason


def test_nothing_works_names_every_failure(tmp_path, hardware):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(BackendError, match=r"^ONNX Runtime could not load the model: .*\(nor could openvino:cpu"):
        select_backend(bad, "onnx", hardware, budget_s=0.5)
    with pytest.raises(BackendError, match="no installed backend reads 'pmml'"):
        select_backend(bad, "pmml", hardware)


def test_disagreeing_backend_is_passed_over(models, hardware, monkeypatch):
    import numpy as np

    from targets.backends.openvino import OpenVinoBackend

    if not BOTH:
        pytest.skip("needs onnxruntime and openvino")
    real = OpenVinoBackend.infer
    monkeypatch.setattr(OpenVinoBackend, "infer", lambda self, x: {k: v + 1.0 for k, v in real(self, x).items()})
    hw = hardware | {"cpu_vendor": "amd"}  # onnxruntime first: it is the reference
    chosen = select_backend(models["mlp"], "onnx", hw, budget_s=0.5)
    tried = {r.name: r for r in chosen.candidates}
    assert chosen.label == "onnxruntime:cpu"
    assert "differs from the reference" in tried["openvino:cpu"].error
    monkeypatch.setattr(OpenVinoBackend, "infer", lambda self, x: {k: v * np.nan for k, v in real(self, x).items()})
    chosen = select_backend(models["mlp"], "onnx", hw, budget_s=0.5)
    assert "differs from the reference" in {r.name: r for r in chosen.candidates}["openvino:cpu"].error


def test_cache_hit_skips_the_trial(models, hardware, tmp_path, monkeypatch):
    first = select_backend(models["mlp"], "onnx", hardware, cache_dir=tmp_path, sha256="a" * 64, budget_s=0.5)
    assert not first.cached
    stored = json.loads((tmp_path / selection.CACHE_FILE).read_text())
    assert len(stored) == 1 and next(iter(stored.values()))["choice"] == first.label

    def no_trial(*args, **kwargs):
        raise AssertionError("the trial ran again")

    monkeypatch.setattr(selection, "run_trial", no_trial)
    again = select_backend(models["mlp"], "onnx", hardware, cache_dir=tmp_path, sha256="a" * 64)
    assert again.cached and again.label == first.label and again.reason == first.reason
    assert [r.name for r in again.candidates] == [r.name for r in first.candidates]
    monkeypatch.undo()
    other_hw = select_backend(models["mlp"], "onnx", hardware | {"cores": 999}, cache_dir=tmp_path, sha256="a" * 64)
    assert not other_hw.cached  # another machine's timings do not apply here
    assert len(json.loads((tmp_path / selection.CACHE_FILE).read_text())) == 2


def test_override_is_respected(models, hardware):
    for override, label in (("onnxruntime", "onnxruntime:cpu"), ("openvino", "openvino:cpu")):
        if override not in registry.installed_backends("onnx"):
            continue
        chosen = select_backend(models["mlp"], "onnx", hardware, override=override)
        assert chosen.label == label and "set by the operator" in chosen.reason
    chosen = select_backend(models["mlp"], "onnx", hardware, override="onnxruntime", options={"intra_op_threads": 1})
    assert chosen.backend.config.intra_op_threads == 1
    with pytest.raises(BackendError, match="set by the operator"):
        select_backend(models["future"], "onnx", hardware, override="onnxruntime")


def test_trial_disabled_takes_first_that_loads(models, hardware):
    chosen = select_backend(models["future"], "onnx", hardware | {"cpu_vendor": "amd"}, trial=False)
    assert chosen.label == "openvino:cpu" if BOTH else True
    assert "trial disabled" in chosen.reason


@pytest.mark.skipif("litert" not in registry.installed_backends("tflite"), reason="LiteRT is not installed")
def test_tflite_selection(models, hardware):
    chosen = select_backend(models["tflite"], "tflite", hardware, budget_s=1.0)
    assert {r.name for r in chosen.candidates} >= {"litert"}
    assert all(r.agreed for r in chosen.candidates if r.precision == "full")
    assert chosen.reference == "litert" and chosen.precision == "full"


@pytest.fixture(scope="module")
def fixed_size_model(tmp_path_factory) -> Path:
    """A dynamic input that only 15 elements fit (a Reshape to 3x5): no size on the ladder runs it."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape = numpy_helper.from_array(np.array([3, 5], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "fifteen",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])],
        [shape],
    )
    path = tmp_path_factory.mktemp("fifteen") / "fifteen.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_no_synthetic_input_runs_serves_untimed_on_the_reference(fixed_size_model, hardware):
    """A model its own runtime loads is never refused because synthetic inputs fail: it serves on the reference,
    untimed, and the reason says how to give inputs; a shape hint or a sample then makes the full trial run."""
    import numpy as np

    chosen = select_backend(fixed_size_model, "onnx", hardware | {"cpu_vendor": "intel"}, budget_s=0.3)
    assert chosen.choice == "onnxruntime:cpu" and not chosen.timed and not chosen.probe.sets
    assert "untimed" in chosen.reason and "--sample" in chosen.reason and "--input-shape" in chosen.reason
    assert chosen.backend.infer({"x": np.arange(15, dtype=np.float32)})["y"].shape == (3, 5)

    hinted = select_backend(fixed_size_model, "onnx", hardware, budget_s=0.3, hints={"x": [15]})
    assert hinted.timed and hinted.probe.source == "synthetic" and "shape hints" in hinted.probe.note
    sampled = select_backend(fixed_size_model, "onnx", hardware, budget_s=0.3, samples=[{"x": np.ones(15, "f4")}])
    assert sampled.timed and sampled.probe.source == "samples"
    assert all(r.agreed for r in sampled.candidates if r.precision == "full")


def test_dynamic_dims_climb_the_ladder_and_share_names():
    """Dimensions that share a name get one size; a batch dimension stays 1; lengths and rates get plausible values."""
    import numpy as np

    from targets.inputs import find_runnable
    from targets.tensors import TensorSpec

    specs = [
        TensorSpec("audio", "FP32", (-1, -1), ("batch", "samples")),
        TensorSpec("mask", "BOOL", (-1, -1), ("batch", "samples")),
        TensorSpec("sr", "INT64", ()),
        TensorSpec("lengths", "INT64", (-1,), ("batch",)),
    ]

    def needs_256(x):
        if x["audio"].shape[1] < 256 or x["audio"].shape != x["mask"].shape:
            raise ValueError("too short")
        return {"ok": np.ones(1)}

    probe, out = find_runnable(specs, needs_256)
    (found,) = probe.sets
    assert found["audio"].shape == (1, 256) and found["mask"].shape == (1, 256) and out is not None
    assert int(found["sr"]) == 16000 and found["lengths"].tolist() == [256]
    assert [t.split(":")[0] for t in probe.tried] == ["size 32", "size 1", "size 32", "size 64"]


def test_many_sets_at_the_size_that_ran_each_one_sample_along_axis_0():
    """What the converters calibrate on without data: `count` sets of the size the reference accepted, each its own
    draw, the first axis a batch of 1 (samples stack along it), and never more than MAX_ELEMENTS in all."""
    import numpy as np

    from targets.inputs import MAX_ELEMENTS, find_runnable
    from targets.tensors import TensorSpec

    image = TensorSpec("x", "FP32", (-1, 3, -1, -1))
    rows = TensorSpec("x", "FP32", (-1, 4))  # an unnamed first axis is sized like the rest, unless `batch` says

    def needs_256(x):
        if min(x["x"].shape[2:]) < 256:
            raise ValueError("[CPU] MaxPool node: kernel larger than the input")
        return {}

    probe, _ = find_runnable([image], needs_256, count=5, batch=1)
    assert [s["x"].shape for s in probe.sets] == [(1, 3, 256, 256)] * 5
    assert not np.array_equal(probe.sets[0]["x"], probe.sets[1]["x"])
    assert find_runnable([rows], lambda x: {})[0].sets[0]["x"].shape == (32, 4)
    assert find_runnable([rows], lambda x: {}, batch=1)[0].sets[0]["x"].shape == (1, 4)
    big, _ = find_runnable([image], needs_256, count=1000, batch=1)
    assert 1 < len(big.sets) < 1000 and sum(s["x"].size for s in big.sets) <= MAX_ELEMENTS


def test_a_runtime_that_crashes_the_trial_fails_only_its_candidate(models, hardware, tmp_path, monkeypatch):
    """The isolated trial: a runtime that dies with SIGSEGV while loading is left out with the signal named, the
    trial runs again without it, and the caller (the agent) never loaded it."""
    if not BOTH:
        pytest.skip("needs onnxruntime and openvino")
    (tmp_path / "sitecustomize.py").write_text(
        "import os, signal\n"
        "from targets.backends import openvino\n"
        "def crash(self, path, model_format):\n"
        "    os.kill(os.getpid(), signal.SIGSEGV)\n"
        "openvino.OpenVinoBackend.load = crash\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    chosen = select_backend(models["mlp"], "onnx", hardware | {"cpu_vendor": "intel"}, budget_s=0.3, isolated=True)
    tried = {r.name: r for r in chosen.candidates}
    assert chosen.choice == "onnxruntime:cpu"
    assert tried["openvino:cpu"].error == "crashed the trial process with SIGSEGV"
    assert "passed over: openvino:cpu" in chosen.reason


def test_an_image_of_dynamic_height_and_width_is_tried_as_a_text_line_and_never_under_32():
    """PaddleOCR's recognizer (x: [-1, 3, ?, -1]) runs only on 48-high lines, though its own runtime answers a 1x1
    image that OpenVINO refuses: after the typical 224x224, text lines (48x320, 32x320) come before the ladder, and
    the ladder's images are never under MIN_IMAGE; an image with a fixed height gets no line rung."""
    from targets.inputs import MIN_IMAGE, find_runnable
    from targets.tensors import TensorSpec

    seen: list[tuple[int, ...]] = []

    def height_48(x):
        seen.append(x["x"].shape)
        if x["x"].shape[2] != 48:
            raise ValueError("Concat: non concat axis dimensions must match")
        return {}

    probe, _ = find_runnable([TensorSpec("x", "FP32", (-1, 3, -1, -1))], height_48)
    assert seen == [(1, 3, 224, 224), (1, 3, 48, 320)] and "images 48x320" in probe.note

    seen.clear()
    probe, _ = find_runnable([TensorSpec("x", "FP32", (1, 1, 64, -1))], lambda x: seen.append(x["x"].shape) or 1 / 0)
    assert not probe.sets and seen[0] == (1, 1, 64, 224) and all(s[3] >= MIN_IMAGE for s in seen)
    assert all(s[2] == 64 for s in seen)
