"""TensorRT engines (issue 29, item 4), without a GPU: the engine cache is keyed by what the engine depends on (a
retrained model under the same file name gets its own), the timing cache is shared per hardware class, the shape
profile comes from the samples, and the trial loads the TensorRT candidate with exactly the provider options the
agent then loads the winner with, so the engine built during the trial is the one served. ONNX Runtime here has no
TensorRT provider: a recording stand-in takes the provider options and runs the model on the CPU. Unverified on
hardware: no engine is built."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgectl.sample_models import mlp
from targets import tensorrt
from targets.backends.onnxruntime import OnnxRuntimeConfig, _provider_entry
from targets.candidates import Candidate
from targets.tensors import TensorSpec
from targets.trial import load, run_trial

# the TensorRT execution provider's option names (ONNX Runtime's TensorRT EP documentation)
TRT_OPTIONS = {
    "device_id", "trt_fp16_enable", "trt_engine_cache_enable", "trt_engine_cache_path", "trt_timing_cache_enable",
    "trt_timing_cache_path", "trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes",
}  # fmt: skip
GPU = {"onnxruntime": "1.20.0", "tensorrt": "10.3.0", "cuda": "12.6", "compute_capability": "8.7"}
TRT = Candidate("onnxruntime:tensorrt", "onnxruntime", {"providers": ["TensorrtExecutionProvider"], "fallback": False})
CPU = Candidate("onnxruntime:cpu", "onnxruntime", {"providers": ["CPUExecutionProvider"]})


def _dirs(tmp_path: Path, sha: str, fp16: bool = False, profile=None, versions=GPU) -> tuple[str, str]:
    options = tensorrt.provider_options(tmp_path, sha, fp16, profile or {}, versions)
    return options["trt_engine_cache_path"], options["trt_timing_cache_path"]


def test_engines_are_keyed_by_weights_precision_profile_runtimes_and_gpu(tmp_path: Path):
    engine, timing = _dirs(tmp_path, "a" * 64)
    assert _dirs(tmp_path, "a" * 64) == (engine, timing)  # the same model and setting: the same engine
    retrained = _dirs(tmp_path, "b" * 64)  # same file name, new weights (onnxruntime#6455)
    assert retrained[0] != engine and retrained[1] == timing  # its own engine, the shared timing cache
    assert _dirs(tmp_path, "a" * 64, fp16=True)[0] != engine
    assert _dirs(tmp_path, "a" * 64, profile={"trt_profile_max_shapes": "x:8x16"})[0] != engine
    for key, value in (("tensorrt", "10.4.0"), ("cuda", "12.8"), ("onnxruntime", "1.21.0")):
        assert _dirs(tmp_path, "a" * 64, versions={**GPU, key: value})[0] != engine
    orin, xavier = _dirs(tmp_path, "a" * 64), _dirs(tmp_path, "a" * 64, versions={**GPU, "compute_capability": "7.2"})
    assert orin[0] != xavier[0] and orin[1] != xavier[1]  # another GPU: another engine and timing cache
    record = json.loads((Path(engine) / "key.json").read_text())
    assert record["model_sha256"] == "a" * 64 and record["precision"] == "fp32" and record["tensorrt"] == "10.3.0"


def test_the_shape_profile_comes_from_the_samples_or_the_hints():
    specs = [TensorSpec("x", "FP32", (-1, 3, -1, -1)), TensorSpec("k", "INT64", ())]
    sets = [{"x": np.zeros((2, 3, 224, 320))}, {"x": np.zeros((1, 3, 160, 640))}, {"x": np.zeros((4, 3, 224, 224))}]
    assert tensorrt.shape_profile(specs, sets) == {
        "trt_profile_min_shapes": "x:1x3x160x224",
        "trt_profile_opt_shapes": "x:2x3x224x320",
        "trt_profile_max_shapes": "x:4x3x224x640",
    }
    hinted = tensorrt.shape_profile(specs, sets, {"x": [1, 3, 800, 608]})
    assert set(hinted.values()) == {"x:1x3x800x608"}
    assert tensorrt.shape_profile([TensorSpec("x", "FP32", (1, 16))], sets) == {}  # static: no profile


def test_the_provider_gets_the_keyed_cache_and_the_profile(tmp_path: Path):
    model = mlp(tmp_path / "model.onnx", seed=1)
    config = OnnxRuntimeConfig(
        providers=["TensorrtExecutionProvider"], tensorrt_cache_dir=str(tmp_path / "trt"),
        tensorrt_profile={"trt_profile_min_shapes": "x:1x16"},
    )  # fmt: skip
    provider, options = _provider_entry("TensorrtExecutionProvider", config, model)  # type: ignore[misc]
    assert provider == "TensorrtExecutionProvider" and set(options) <= TRT_OPTIONS
    assert options["trt_engine_cache_enable"] and options["trt_timing_cache_enable"]
    assert options["trt_profile_min_shapes"] == "x:1x16"
    key = json.loads((Path(options["trt_engine_cache_path"]) / "key.json").read_text())
    from protocol.files import sha256_file

    assert key["model_sha256"] == sha256_file(model)  # hashed at load when the trial did not say
    mlp(tmp_path / "model.onnx", seed=2)  # retrained, same file name
    _, retrained = _provider_entry("TensorrtExecutionProvider", config, model)  # type: ignore[misc]
    assert retrained["trt_engine_cache_path"] != options["trt_engine_cache_path"]


class _Recorder:
    """ONNX Runtime with a TensorRT provider: sessions asked for TensorRT record its options and run on the CPU
    (the CPU candidate is made slower, so TensorRT wins the trial)."""

    real = ort.InferenceSession

    def __init__(self) -> None:
        self.trt_options: list[dict] = []

    def session(self, path, options=None, providers=None, **kwargs):
        entry = (providers or ["CPUExecutionProvider"])[0]
        inner = self.real(path, options, providers=["CPUExecutionProvider"])
        if isinstance(entry, tuple) and entry[0] == tensorrt.PROVIDER:
            self.trt_options.append(dict(entry[1]))
            return _Session(inner, tensorrt.PROVIDER, 0.0)
        return _Session(inner, "CPUExecutionProvider", 0.002)


class _Session:
    def __init__(self, inner, provider: str, delay: float) -> None:
        self.inner, self.provider, self.delay = inner, provider, delay

    def get_providers(self):
        return [self.provider]

    def run(self, *args, **kwargs):
        if self.delay:
            import time

            time.sleep(self.delay)
        return self.inner.run(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture
def recorder(monkeypatch):
    rec = _Recorder()
    monkeypatch.setattr(ort, "InferenceSession", rec.session)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [tensorrt.PROVIDER, "CPUExecutionProvider"])
    return rec


def test_the_trial_builds_the_engine_the_agent_then_serves(tmp_path: Path, recorder: _Recorder):
    """The build-before-swap flow: the trial loads TensorRT with the keyed cache and the samples' profile (the build
    happens there, timed as the candidate's load), and the winner's load in the agent asks for the same engine."""
    model = mlp(tmp_path / "detector.onnx", seed=3)
    trt = Candidate(TRT.name, TRT.backend, {**TRT.options, "tensorrt_cache_dir": str(tmp_path / "trt")})
    samples = [{"x": np.ones((b, 16), np.float32)} for b in (2, 1, 8)]
    outcome = run_trial(model, "onnx", [CPU, trt], 0.3, samples)
    assert outcome.chosen is not None and outcome.chosen.name == "onnxruntime:tensorrt"
    built = recorder.trt_options[-1]
    assert built["trt_profile_min_shapes"] == "x:1x16" and built["trt_profile_max_shapes"] == "x:8x16"
    assert built["trt_profile_opt_shapes"] == "x:2x16"
    result = next(r for r in outcome.results if r.name == "onnxruntime:tensorrt")
    assert result.load_ms is not None  # the engine build, reported with the trial in the status
    load(outcome.chosen, model, "onnx", outcome.options)  # what the agent does with the trial's outcome
    assert recorder.trt_options[-1] == built  # the same engine directory, timing cache and profile: no rebuild
