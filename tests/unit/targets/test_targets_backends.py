"""The three backends on real runtimes: ONNX, OpenVINO IR and TFLite models built on the spot."""

from __future__ import annotations

import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from edgectl import sample_models
from targets import registry
from targets.base import BackendError
from targets.inputs import synthesize

pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    found = {
        "mlp": sample_models.mlp(d / "mlp.onnx"),
        "conv": sample_models.conv_net(d / "conv.onnx"),
        "control": sample_models.control_flow(d / "control.onnx"),
        "tflite": sample_models.tflite_conv_net(d / "conv.tflite"),
    }
    for name in ("mlp", "tflite"):  # as the agent's store keeps them: no file extension
        bare = d / f"{name}-object"
        bare.write_bytes(found[name].read_bytes())
        found[f"{name}-bare"] = bare
    return found


def needs(backend: str):
    return pytest.mark.skipif(backend not in registry.installed_backends(), reason=f"{backend} is not installed")


def reference_mlp(path: Path, x: np.ndarray) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    w = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    logits = np.maximum(x @ w["w1"] + w["b1"], 0) @ w["w2"] + w["b2"]
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_registry_discovers_every_backend_and_validates_options():
    assert {"onnxruntime", "openvino", "litert"} <= set(registry.backend_types())
    assert registry.create("openvino", {"device": "CPU", "performance_hint": "THROUGHPUT"}).config.device == "CPU"
    with pytest.raises(ValueError):
        registry.create("openvino", {"device": "TPU"})
    with pytest.raises(ValueError):
        registry.create("litert", {"providers": []})  # another backend's option
    assert registry.create("litert", {"num_threads": 2}).config.num_threads == 2


@needs("openvino")
@pytest.mark.parametrize("key", ["mlp", "mlp-bare"])
def test_openvino_runs_onnx(models, key):
    backend = registry.create("openvino", {"performance_hint": "LATENCY"})
    backend.load(models[key], "onnx")
    assert backend.label == "openvino:cpu"
    assert [(s.name, s.datatype, s.shape) for s in backend.inputs] == [("x", "FP32", (-1, 16))]
    assert [(s.name, s.shape) for s in backend.outputs] == [("probs", (-1, 4))]
    x = synthesize(backend.inputs, 1, batch=3)
    out = backend.infer(x)["probs"]
    np.testing.assert_allclose(out, reference_mlp(models["mlp"], x["x"]), rtol=1e-4, atol=1e-5)


@needs("openvino")
def test_openvino_reads_ir_artifact_tar_with_cache_dir(models, tmp_path):
    import openvino as ov

    ov.save_model(ov.Core().read_model(str(models["mlp"])), str(tmp_path / "model.xml"), compress_to_fp16=False)
    artifact = tmp_path / "artifact"
    with tarfile.open(artifact, "w") as tar:
        tar.add(tmp_path / "model.xml", "model.xml")
        tar.add(tmp_path / "model.bin", "model.bin")
    backend = registry.create("openvino", {"cache_dir": str(tmp_path / "cache"), "num_streams": 1})
    backend.load(artifact, "openvino")
    x = synthesize(backend.inputs, 1, batch=2)
    np.testing.assert_allclose(backend.infer(x)["probs"], reference_mlp(models["mlp"], x["x"]), rtol=1e-4, atol=1e-5)
    direct = registry.create("openvino")
    direct.load(tmp_path / "model.xml", "openvino")
    assert direct.inputs == backend.inputs


@needs("openvino")
def test_openvino_rejects_garbage_and_missing_device(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"not a model")
    with pytest.raises(BackendError, match="OpenVINO"):
        registry.create("openvino").load(bad, "openvino")
    with pytest.raises(BackendError, match="OpenVINO"):
        registry.create("openvino").load(bad, "onnx")
    with pytest.raises(BackendError, match="NPU is not present|could not load"):
        registry.create("openvino", {"device": "NPU"}).load(bad, "onnx")


@needs("openvino")
def test_openvino_one_infer_request_per_thread(models):
    backend = registry.create("openvino")
    backend.load(models["mlp"], "onnx")
    errors: list[str] = []

    def work(seed: int) -> None:
        x = synthesize(backend.inputs, 1, seed=seed, batch=1 + seed % 3)
        want = reference_mlp(models["mlp"], x["x"])
        for _ in range(30):
            got = backend.infer(x)["probs"]
            if not np.allclose(got, want, rtol=1e-4, atol=1e-5):
                errors.append(f"thread {seed}: wrong result")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@needs("litert")
@pytest.mark.parametrize("backend_name", ["litert", "openvino"])
def test_tflite_model_on_litert_and_openvino_agree_with_onnx_twin(models, backend_name):
    if backend_name not in registry.installed_backends("tflite"):
        pytest.skip(f"{backend_name} is not installed")
    tfl = registry.create(backend_name, {"num_threads": 2} if backend_name == "litert" else None)
    tfl.load(models["tflite-bare"], "tflite")
    assert [(s.name, s.shape) for s in tfl.inputs] == [("x", (-1, 32, 32, 3))]
    assert [(s.name, s.shape) for s in tfl.outputs] == [("probs", (-1, 10))]
    for batch in (1, 3, 2):  # dynamic batch: the interpreter is resized from the request
        x = synthesize(tfl.inputs, 1, seed=batch, batch=batch)["x"]
        onnx_twin = registry.create("onnxruntime")
        onnx_twin.load(models["conv"], "onnx")
        want = onnx_twin.infer({"x": x.transpose(0, 3, 1, 2).copy()})["probs"]
        got = tfl.infer({"x": x})["probs"]
        assert got.shape == (batch, 10)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@needs("litert")
def test_litert_serialises_calls_across_threads(models):
    backend = registry.create("litert")
    backend.load(models["tflite"], "tflite")
    assert backend.label == "litert"
    results: dict[int, bool] = {}

    def work(batch: int) -> None:
        x = synthesize(backend.inputs, 1, seed=batch, batch=batch)
        first = backend.infer(x)["probs"]
        results[batch] = all(np.array_equal(backend.infer(x)["probs"], first) for _ in range(20))

    threads = [threading.Thread(target=work, args=(b,)) for b in (1, 2, 3, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {1: True, 2: True, 3: True, 4: True}


def test_litert_installed_with_either_package(monkeypatch):
    from targets.backends import litert

    def only(name):
        return lambda module: object() if module == name else None

    monkeypatch.setattr(litert.importlib.util, "find_spec", only("tflite_runtime"))
    assert litert.LiteRtBackend.installed()
    assert litert._find_interpreter_module() == "tflite_runtime.interpreter"
    monkeypatch.setattr(litert.importlib.util, "find_spec", only("nothing"))
    assert not litert.LiteRtBackend.installed()


@needs("litert")
def test_litert_rejects_onnx(models):
    with pytest.raises(BackendError, match="LiteRT"):
        registry.create("litert").load(models["mlp"], "tflite")


def test_onnxruntime_records_provider_fallback(models, tmp_path):
    backend = registry.create(
        "onnxruntime",
        {
            "providers": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
            "tensorrt_fp16": True,
            "tensorrt_cache_dir": str(tmp_path / "trt"),
        },
    )
    backend.load(models["control"], "onnx")
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA: the fallback path is not taken")
    assert backend.label == "onnxruntime:cpu"
    assert backend.provider_notes["TensorrtExecutionProvider"] == "not available in this onnxruntime build"
    assert backend.provider_notes["CUDAExecutionProvider"] == "not available in this onnxruntime build"
    assert backend.provider_notes["CPUExecutionProvider"] == "selected"
    strict = registry.create("onnxruntime", {"providers": ["CUDAExecutionProvider"], "fallback": False})
    with pytest.raises(BackendError, match="CUDAExecutionProvider is not available"):
        strict.load(models["mlp"], "onnx")


def test_onnxruntime_runs_control_flow(models):
    backend = registry.create("onnxruntime")
    backend.load(models["control"], "onnx")
    x = np.ones((2, 8), np.float32)
    y = backend.infer({"x": x})["y"]
    assert y.shape == (2, 8) and np.isfinite(y).all()
    y_neg = backend.infer({"x": -x})["y"]
    assert not np.allclose(y, y_neg)  # the If took the other branch
