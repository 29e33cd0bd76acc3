"""Load a converted artifact in the runtime a device would use, run it, and time it."""

from __future__ import annotations

import statistics
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


class Runner:
    """One loaded model: `run` takes and returns arrays keyed by the ONNX tensor names."""

    runtime = ""

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


class OnnxRunner(Runner):
    runtime = "onnxruntime"

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs):
        return dict(zip(self.output_names, self.session.run(self.output_names, inputs), strict=True))


class OpenVinoRunner(Runner):
    """An OpenVINO IR packed as a tar of model.xml + model.bin, or any file `read_model` takes (e.g. .onnx)."""

    runtime = "openvino"

    def __init__(self, path: Path) -> None:
        import openvino as ov

        core = ov.Core()
        if path.suffix == ".tar":
            self._tmp = tempfile.TemporaryDirectory(prefix="ov-ir-")
            with tarfile.open(path) as tar:
                tar.extractall(self._tmp.name, filter="data")
            model = core.read_model(str(Path(self._tmp.name) / "model.xml"))
        else:
            model = core.read_model(str(path))
        self.compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY"})
        self.request = self.compiled.create_infer_request()
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]

    def run(self, inputs):
        results = self.request.infer(inputs)
        return {name: results[out].copy() for name, out in zip(self.output_names, self.compiled.outputs, strict=True)}

    def close(self) -> None:
        tmp = self.__dict__.pop("_tmp", None)
        if tmp is not None:
            tmp.cleanup()


def _tflite_key(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


class TfliteRunner(Runner):
    """A .tflite file on LiteRT (ai-edge-litert), addressed by the ONNX input/output names onnx2tf copied over."""

    runtime = "tflite"

    def __init__(self, path: Path, input_names: list[str], output_names: list[str]) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path))
        signatures = self.interpreter.get_signature_list()
        self.runner = None
        if signatures:  # named inputs/outputs through the signature
            key = next(iter(signatures))
            self.runner = self.interpreter.get_signature_runner(key)
            self._inputs = self._match(input_names, signatures[key]["inputs"], "input")
            self._outputs = self._match(output_names, signatures[key]["outputs"], "output")
            return
        self.interpreter.allocate_tensors()  # no signature: tensor details, by name or position
        ins, outs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        self._in_index = {d["name"]: d["index"] for d in ins}
        self._out_index = {d["name"]: d["index"] for d in outs}
        self._inputs = self._match(input_names, [d["name"] for d in ins], "input")
        self._outputs = self._match(output_names, [d["name"] for d in outs], "output")

    @staticmethod
    def _match(onnx_names: list[str], tflite_names: list[str], kind: str) -> dict[str, str]:
        if len(onnx_names) == 1 and len(tflite_names) == 1:
            return {onnx_names[0]: tflite_names[0]}
        by_key = {_tflite_key(n.removeprefix("serving_default_").split(":")[0]): n for n in tflite_names}
        mapping = {}
        for name in onnx_names:
            match = name if name in tflite_names else by_key.get(_tflite_key(name))
            if match is None:
                raise RuntimeError(f"TFLite model has no {kind} named like {name!r} (it has {tflite_names})")
            mapping[name] = match
        return mapping

    def run(self, inputs):
        if self.runner is not None:
            results = self.runner(**{self._inputs[k]: v for k, v in inputs.items()})
            return {onnx: results[tfl] for onnx, tfl in self._outputs.items()}
        for name, array in inputs.items():
            index = self._in_index[self._inputs[name]]
            details = {d["index"]: d for d in self.interpreter.get_input_details()}
            if tuple(details[index]["shape"]) != array.shape:
                self.interpreter.resize_tensor_input(index, array.shape)
                self.interpreter.allocate_tensors()
            self.interpreter.set_tensor(index, array)
        self.interpreter.invoke()
        return {onnx: self.interpreter.get_tensor(self._out_index[tfl]).copy() for onnx, tfl in self._outputs.items()}


def p50_latency_ms(runner: Runner, sample: dict[str, np.ndarray], budget_s: float = 1.5, max_runs: int = 200) -> float:
    """Median wall time of one inference, after warm-up: at least 10 runs, then until `budget_s` or `max_runs`."""
    for _ in range(3):
        runner.run(sample)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 10 or (len(times) < max_runs and time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        runner.run(sample)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000.0


def paired_p50_ms(
    a: Runner, b: Runner, sample: dict[str, np.ndarray], budget_s: float = 1.5, rounds: int = 6
) -> tuple[float, float]:
    """p50 of two runners after a warm-up, timed in turn (`rounds` blocks each, best block kept): this box's speed
    drifts by over 1.5x between seconds, so a variant timed apart from its baseline gives a speedup off by as much."""
    calls = [lambda: a.run(sample), lambda: b.run(sample)]
    a_p50, b_p50 = round_robin_p50_ms(calls, block_s=budget_s / (2 * rounds), rounds=rounds)
    return a_p50, b_p50


def round_robin_p50_ms(
    calls: list[Callable[[], object]], *, block_s: float, rounds: int, warmup: int = 3, min_runs: int = 3
) -> list[float]:
    """p50 in ms of each call after `warmup` runs, over `rounds` blocks of block_s (at least min_runs runs) taken in
    turn, best block kept: drifting load on the box hits every call alike."""
    for call in calls:
        for _ in range(warmup):
            call()
    best = [float("inf")] * len(calls)
    for _ in range(rounds):
        for i, call in enumerate(calls):
            times: list[float] = []
            deadline = time.perf_counter() + block_s
            while len(times) < min_runs or time.perf_counter() < deadline:
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
            best[i] = min(best[i], statistics.median(times) * 1000.0)
    return best
