"""LiteRT backend for TFLite models: `ai-edge-litert`, or `tflite-runtime` where only that is installed (older
Raspberry Pi OS images). XNNPACK runs the float kernels with `num_threads` threads."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from protocol.tensors import NUMPY_TO_V2
from targets.base import Backend, BackendConfig, BackendError
from targets.tensors import TensorSpec

if TYPE_CHECKING:
    import numpy as np

# interpreter modules, most preferred first
INTERPRETER_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")


class LiteRtConfig(BackendConfig):
    type: Literal["litert"] = "litert"
    num_threads: int | None = None  # XNNPACK threads; None = the interpreter's default


def _find_interpreter_module() -> str | None:
    for name in INTERPRETER_MODULES:
        if importlib.util.find_spec(name.split(".")[0]) is not None:
            return name
    return None


def _spec(detail: dict[str, Any]) -> TensorSpec:
    import numpy as np

    dtype = np.dtype(detail["dtype"]).name
    datatype = NUMPY_TO_V2.get(dtype)
    if datatype is None:
        raise BackendError(f"tensor {detail['name']!r} has unsupported type {dtype}")
    signature = detail.get("shape_signature")
    dims = tuple(int(d) for d in (signature if signature is not None and len(signature) else detail["shape"]))
    return TensorSpec(detail["name"], datatype, dims, tuple(None for _ in dims))


class LiteRtBackend(Backend):
    type_key = "litert"
    config_class = LiteRtConfig
    formats = frozenset({"tflite"})
    runtime_module = "ai_edge_litert"

    @classmethod
    def installed(cls) -> bool:
        return _find_interpreter_module() is not None

    def load(self, path: Path, model_format: str) -> None:
        import importlib

        if model_format not in self.formats:
            raise BackendError(f"LiteRT does not read {model_format!r} models")
        module_name = _find_interpreter_module()
        if module_name is None:
            raise BackendError("neither ai-edge-litert nor tflite-runtime is installed")
        config: LiteRtConfig = self.config  # type: ignore[assignment]
        self._module = module_name.split(".")[0]
        try:
            interpreter_class = importlib.import_module(module_name).Interpreter
            self.interpreter = interpreter_class(model_path=str(path), num_threads=config.num_threads)
            self._input_details = self.interpreter.get_input_details()
            self._output_details = self.interpreter.get_output_details()
            self._allocate_default()
        except Exception as exc:  # the interpreter raises ValueError/RuntimeError with the TFLite message
            raise BackendError(f"LiteRT could not load the model: {str(exc).strip()[:500]}") from exc
        self.inputs = [_spec(d) for d in self._input_details]
        self.outputs = [_spec(d) for d in self._output_details]
        self._shapes = {d["index"]: tuple(int(x) for x in d["shape"]) for d in self._input_details}
        self._lock = threading.Lock()  # one interpreter, one set of tensor buffers: calls run one at a time

    def _allocate_default(self) -> None:
        """Allocate for the default shapes; a model with dynamic dims whose placeholder shape (1) cannot run (an
        STFT needs more than one sample) is allocated at its first request's shapes instead."""
        try:
            self.interpreter.allocate_tensors()
        except (RuntimeError, ValueError):
            dynamic = any(int(d) < 0 for x in self._input_details for d in x.get("shape_signature", ()))
            if not dynamic:
                raise
            self._input_details = [{**d, "shape": [0] * len(d["shape"])} for d in self._input_details]

    @property
    def label(self) -> str:

        runtime = getattr(self, "_module", "")
        return "litert" if runtime in ("", "ai_edge_litert") else f"litert:{runtime}"

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            try:
                resized = False
                for detail in self._input_details:
                    shape = tuple(inputs[detail["name"]].shape)
                    if self._shapes[detail["index"]] != shape:  # dynamic dims (-1 in the signature) from the request
                        self.interpreter.resize_tensor_input(detail["index"], list(shape), strict=True)
                        self._shapes[detail["index"]] = shape
                        resized = True
                if resized:
                    self.interpreter.allocate_tensors()
                for detail in self._input_details:
                    self.interpreter.set_tensor(detail["index"], inputs[detail["name"]])
                self.interpreter.invoke()
                return {d["name"]: self.interpreter.get_tensor(d["index"]).copy() for d in self._output_details}
            except Exception as exc:
                raise BackendError(f"LiteRT inference failed: {str(exc).strip()[:500]}") from exc

    def close(self) -> None:
        self.__dict__.pop("interpreter", None)
