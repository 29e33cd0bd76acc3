"""The converters' one runtime layer: an artifact loads in the backend a device would use (through targets.registry),
runs by the ONNX model's tensor names, and is timed with the interleaved timer (targets.timing)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from targets import registry
from targets.base import Backend
from targets.timing import best_block_ms, pooled_ms, turn_about

if TYPE_CHECKING:
    import numpy as np

# where each variant runtime's artifacts load: the backend's registry key
BACKENDS = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tflite": "litert"}
WARMUP_RUNS = 3


def _key(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def match_names(onnx_names: list[str], names: list[str], kind: str) -> dict[str, str]:
    """ONNX tensor name -> the backend's name for it: the same name, or one alike but for punctuation and case
    (TFLite's `serving_default_x:0`); a lone tensor maps to the lone tensor."""
    if len(onnx_names) == 1 and len(names) == 1:
        return {onnx_names[0]: names[0]}
    by_key = {_key(n.removeprefix("serving_default_").split(":")[0]): n for n in names}
    mapping = {}
    for name in onnx_names:
        match = name if name in names else by_key.get(_key(name))
        if match is None:
            raise RuntimeError(f"the model has no {kind} named like {name!r} (it has {names})")
        mapping[name] = match
    return mapping


class Loaded:
    """A backend loaded on one artifact, run with and answering arrays keyed by the ONNX model's tensor names."""

    def __init__(self, backend: Backend, input_names: list[str], output_names: list[str]) -> None:
        self.backend = backend
        self.inputs = match_names(input_names, [s.name for s in backend.inputs], "input")
        self.outputs = match_names(output_names, [s.name for s in backend.outputs], "output")

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.backend.infer({self.inputs[k]: v for k, v in inputs.items()})
        return {onnx: results[name] for onnx, name in self.outputs.items()}

    def close(self) -> None:
        self.backend.close()


def load(runtime: str, path: Path, model_format: str, input_names: list[str], output_names: list[str]) -> Loaded:
    """`path` loaded on the runtime's backend (CPU, the model's own precision); BackendError says why it cannot."""
    options: dict[str, Any] = {}
    if runtime == "openvino":  # the ONNX names by position; no background static-shape compiles while timing
        options = {"input_names": input_names, "output_names": output_names, "specialize_shapes": 0}
    backend = registry.create(BACKENDS[runtime], options)
    backend.load(path, model_format)
    try:
        return Loaded(backend, input_names, output_names)
    except Exception:
        backend.close()
        raise


def load_onnx(path: Path) -> Loaded:
    """An ONNX model on ONNX Runtime, by its own tensor names (the reference runtime)."""
    backend = registry.create("onnxruntime")
    backend.load(path, "onnx")
    return Loaded(backend, [s.name for s in backend.inputs], [s.name for s in backend.outputs])


def _warm(runs: list[Any]) -> None:
    for run in runs:
        for _ in range(WARMUP_RUNS):
            run()


def p50_ms(model: Loaded, sample: dict[str, np.ndarray], budget_s: float = 1.5, max_runs: int = 200) -> float:
    """Median wall time of one inference, after warm-up: at least 10 runs, then until `budget_s` or `max_runs`."""
    run = partial(model.run, sample)
    _warm([run])
    (rounds,) = turn_about([run], rounds=1, block_s=budget_s, min_runs=10, max_runs=max_runs)
    return pooled_ms(rounds, 50)


def paired_p50_ms(
    a: Loaded, b: Loaded, sample: dict[str, np.ndarray], budget_s: float = 1.5, rounds: int = 6
) -> tuple[float, float]:
    """p50 of two models after a warm-up, timed in turn (`rounds` blocks each, best block kept): this box's speed
    drifts by over 1.5x between seconds, so a variant timed apart from its baseline gives a speedup off by as much."""
    runs = [partial(a.run, sample), partial(b.run, sample)]
    _warm(runs)
    mine, theirs = turn_about(runs, rounds=rounds, block_s=budget_s / (2 * rounds), min_runs=3)
    return best_block_ms(mine, 50), best_block_ms(theirs, 50)


def paired_answers(
    source: Path, runtime: str, path: Path, model_format: str, samples: list[dict[str, np.ndarray]]
) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """(ONNX Runtime's answers on the float source, the built variant's) for each sample, by the ONNX names: what a
    check of a conversion against its reference compares."""
    reference = load_onnx(source)
    try:
        variant = load(runtime, path, model_format, list(reference.inputs), list(reference.outputs))
    except Exception:
        reference.close()
        raise
    try:
        return [(reference.run(s), variant.run(s)) for s in samples]
    finally:
        reference.close()
        variant.close()
