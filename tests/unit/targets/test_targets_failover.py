"""Run-time failover: a backend that starts failing while serving (a simulated accelerator loss: the one thing that
cannot happen for real here) hands requests to ONNX Runtime CPU, and is promoted back once it works again."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edgectl.sample_models import mlp
from targets import registry
from targets.base import Backend, BackendError
from targets.failover import FailoverBackend


class LosableAccelerator(Backend):
    """A real ONNX Runtime session standing in for an accelerator that can be unplugged."""

    type_key = "test-accelerator"
    config_class = registry.backend_types()["onnxruntime"].config_class
    formats = frozenset({"onnx"})
    runtime_module = "onnxruntime"

    def __init__(self, path) -> None:
        self.real = registry.create("onnxruntime")
        self.real.load(path, "onnx")
        super().__init__(self.real.config)
        self.inputs, self.outputs = self.real.inputs, self.real.outputs
        self.lost = threading.Event()
        self.calls = 0

    def load(self, path, model_format):  # pragma: no cover
        pass

    @property
    def label(self) -> str:
        return "accelerator"

    def infer(self, inputs):
        self.calls += 1
        if self.lost.is_set():
            raise BackendError("CUDA error: device lost")
        return self.real.infer(inputs)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def model(tmp_path):
    return mlp(tmp_path / "m.onnx")


def cpu_loader(path):
    def load():
        backend = registry.create("onnxruntime")
        backend.load(path, "onnx")
        return backend

    return load


def test_failover_serves_every_request_and_promotes_back(model):
    accel = LosableAccelerator(model)
    clock = Clock()
    x = {"x": np.ones((2, 16), np.float32)}
    fo = FailoverBackend(
        accel, [("onnxruntime:cpu", cpu_loader(model))], max_failures=3, recheck_s=30, clock=clock, probe=x
    )

    expected = accel.real.infer(x)["probs"]
    assert fo.label == "accelerator" and fo.chain[1].backend is None  # fallback not loaded until needed

    accel.lost.set()
    for _ in range(5):  # no request fails
        np.testing.assert_allclose(fo.infer(x)["probs"], expected, rtol=1e-6)
    assert fo.label == "onnxruntime:cpu"
    status = fo.status()
    assert status["failed_over"] and status["failovers"] == 1 and "device lost" in status["reason"]
    calls = accel.calls
    fo.infer(x)
    assert accel.calls == calls  # after the switch the lost accelerator is not tried per request

    assert not fo.recheck()  # still lost
    accel.lost.clear()
    clock.now = 31.0
    fo.infer(x)  # due: a background re-check runs
    for thread in threading.enumerate():
        if thread.name == "backend-recheck":
            thread.join(5)
    assert fo.label == "accelerator" and "re-promoted" in fo.status()["reason"]


def test_bad_input_fails_everywhere_and_demotes_nothing(model):
    accel = LosableAccelerator(model)
    fo = FailoverBackend(accel, [("onnxruntime:cpu", cpu_loader(model))], max_failures=2)
    for _ in range(4):
        with pytest.raises(BackendError, match="accelerator|onnxruntime"):
            fo.infer({"x": np.ones((2, 7), np.float32)})  # wrong width: every runtime refuses it
    assert fo.label == "accelerator" and fo.failovers == 0


def test_fallback_that_cannot_load_is_reported(model):
    accel = LosableAccelerator(model)

    def broken_loader():
        raise BackendError("openvino is not installed")

    fo = FailoverBackend(accel, [("openvino:cpu", broken_loader)])
    accel.lost.set()
    with pytest.raises(BackendError) as info:
        fo.infer({"x": np.ones((1, 16), np.float32)})
    assert "device lost" in str(info.value) and "openvino is not installed" in str(info.value)
