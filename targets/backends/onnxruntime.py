"""ONNX Runtime backend: TensorRT, CUDA and CPU execution providers, tried provider by provider with the reason each
one was passed over recorded in `provider_notes`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from protocol.compat import zip_strict
from protocol.files import sha256_file
from targets.base import Backend, BackendConfig, BackendError
from targets.tensors import TensorSpec

if TYPE_CHECKING:
    import numpy as np

# ONNX Runtime type strings -> v2 datatypes
_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}


class OnnxRuntimeConfig(BackendConfig):
    type: Literal["onnxruntime"] = "onnxruntime"
    providers: list[str] = ["CPUExecutionProvider"]
    intra_op_threads: int = 0  # 0 = ONNX Runtime's default (one per physical core)
    inter_op_threads: int = 0
    # Intra-op threads spin-wait for work by default. With two sessions on a 2-core box (the serving version and the
    # one being checked, or two models) the spinning pool starves the other: PP-OCR's classifier timed while a client
    # used the serving session had p95 10.4 ms spinning vs 2.8 ms not (p50 1.38 vs 1.48 ms). Off unless asked for.
    spinning: bool = False
    fallback: bool = True  # append CPU after the listed providers; each listed one that fails passes to the next
    tensorrt_fp16: bool = False
    # Engine and timing caches: later loads skip the (minutes-long) TensorRT build. Engines are keyed by the model's
    # sha256, precision, shape profile, runtime versions and GPU (targets/tensorrt.py), never by the file's name.
    tensorrt_cache_dir: str | None = None
    model_sha256: str | None = None  # set by the trial (hashed at load when not)
    tensorrt_profile: dict[str, str] = {}  # trt_profile_{min,opt,max}_shapes from the samples (set by the trial)
    cuda_device_id: int = 0
    # ONNX Runtime's CPU memory arena (grows in chunks and keeps what it took) and memory pattern (plans buffers from
    # the first run's shapes). The trial measures an onnxruntime:cpu winner's arena both ways and sets it off only
    # where that saves memory at little latency (targets/trial_arena.py, docs/memory.md: off gives back what a run
    # took, ppocr_v4_det 65 -> 8.5 MiB, but faults it in again every run, p50 x1.4-2.2); both-off was slower still.
    cpu_mem_arena: bool = True
    mem_pattern: bool = True


PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def short_name(provider: str) -> str:
    return provider.removesuffix("ExecutionProvider").lower()


def _provider_entry(provider: str, config: OnnxRuntimeConfig, path: Path) -> str | tuple[str, dict[str, Any]]:
    if provider == "TensorrtExecutionProvider":
        from targets.tensorrt import provider_options

        options: dict[str, Any] = {"device_id": config.cuda_device_id, "trt_fp16_enable": config.tensorrt_fp16}
        if config.tensorrt_cache_dir:
            sha256 = config.model_sha256 or sha256_file(path)
            options |= provider_options(
                config.tensorrt_cache_dir, sha256, config.tensorrt_fp16, dict(config.tensorrt_profile)
            )
        else:
            options |= dict(config.tensorrt_profile)
        return (provider, options)
    if provider == "CUDAExecutionProvider":
        return (provider, {"device_id": config.cuda_device_id})
    return provider


# scikit-learn classifiers exported with skl2onnx's default ZipMap: one {label: probability} map per row. Served as
# the probability tensor it wraps, [rows, classes] in the map's key order; the labels go to the metadata endpoint.
_ZIPMAP_TYPES = ("seq(map(int64,tensor(float)))", "seq(map(string,tensor(float)))")


def _spec(node: Any) -> TensorSpec:
    if node.type in _ZIPMAP_TYPES:
        return TensorSpec(node.name, "FP32", (-1, -1), (None, None))
    datatype = _ORT_TYPES.get(node.type)
    if datatype is None:
        hint = " (for scikit-learn models: export with tensor outputs, e.g. options={'zipmap': False})"
        raise BackendError(
            f"output {node.name!r} is a {node.type}, which is not a tensor the v2 API can serve"
            + (hint if node.type.startswith(("seq", "map")) else "")
        )
    dims = tuple(d if isinstance(d, int) else -1 for d in node.shape)
    names = tuple(d if isinstance(d, str) else None for d in node.shape)
    return TensorSpec(node.name, datatype, dims, names)


class OnnxRuntimeBackend(Backend):
    type_key = "onnxruntime"
    config_class = OnnxRuntimeConfig
    formats = frozenset({"onnx"})
    runtime_module = "onnxruntime"

    def load(self, path: Path, model_format: str) -> None:
        import onnxruntime as ort

        config: OnnxRuntimeConfig = self.config  # type: ignore[assignment]
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.intra_op_threads
        options.inter_op_num_threads = config.inter_op_threads
        options.enable_cpu_mem_arena = config.cpu_mem_arena
        options.enable_mem_pattern = config.mem_pattern
        options.log_severity_level = 4  # failures come back as exceptions with the message; no stderr noise
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if config.spinning else "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "1" if config.spinning else "0")
        wanted = list(dict.fromkeys(config.providers))
        if config.fallback and "CPUExecutionProvider" not in wanted:
            wanted.append("CPUExecutionProvider")
        available = set(ort.get_available_providers())
        self.provider_notes: dict[str, str] = {}
        last_error = "no execution provider was listed"
        for provider in wanted:
            if provider not in available:
                self.provider_notes[provider] = "not available in this onnxruntime build"
                last_error = f"{provider} is not available in this onnxruntime build"
                continue
            try:  # a lone provider per try: ONNX Runtime would otherwise fall back silently, hiding the reason
                session = ort.InferenceSession(str(path), options, providers=[_provider_entry(provider, config, path)])
            except Exception as exc:  # onnxruntime raises several unrelated exception types
                last_error = _first_line(exc)
                self.provider_notes[provider] = f"failed: {last_error}"
                continue
            if session.get_providers()[0] != provider:  # the provider failed to initialise; ORT fell back to CPU
                last_error = f"{provider} did not initialise (the session ran on {session.get_providers()[0]})"
                self.provider_notes[provider] = last_error
                continue
            self.provider_notes[provider] = "selected"
            self.session = session
            break
        if not hasattr(self, "session"):
            raise BackendError(f"ONNX Runtime could not load the model: {last_error}")
        self.inputs = [_spec(n) for n in self.session.get_inputs()]
        self.outputs = [_spec(n) for n in self.session.get_outputs()]
        self._output_names = [s.name for s in self.outputs]
        self._zipmaps = {n.name for n in self.session.get_outputs() if n.type in _ZIPMAP_TYPES}
        self._labels: dict[str, list[str | int]] = {}

    @property
    def label(self) -> str:
        provider = self.session.get_providers()[0] if hasattr(self, "session") else ""
        return f"onnxruntime:{short_name(provider)}" if provider else self.type_key

    @property
    def precision(self) -> str:
        config: OnnxRuntimeConfig = self.config  # type: ignore[assignment]
        return "fp16" if config.tensorrt_fp16 and self.label == "onnxruntime:tensorrt" else "full"

    @property
    def metadata(self) -> dict[str, object]:
        return {"class_labels": dict(self._labels)} if getattr(self, "_labels", None) else {}

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            results = self.session.run(self._output_names, inputs)
        except Exception as exc:
            raise BackendError(f"ONNX Runtime inference failed: {_first_line(exc)}") from exc
        named = dict(zip_strict(self._output_names, results))
        for name in self._zipmaps:
            named[name] = self._unzip(name, named[name])
        return named

    def _unzip(self, name: str, rows: list[dict[Any, float]]) -> np.ndarray:
        """ZipMap's list of {label: probability} as a [rows, classes] float32 tensor; labels kept once."""
        import numpy as np

        labels = list(rows[0]) if rows else self._labels.get(name, [])
        self._labels.setdefault(name, [x if isinstance(x, str) else int(x) for x in labels])
        return np.array([[row[k] for k in labels] for row in rows], dtype=np.float32).reshape(len(rows), len(labels))

    def close(self) -> None:
        self.__dict__.pop("session", None)


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : [A-Z_]+ : ")
_LOAD_PREFIX = re.compile(r"^Load model from .*? failed:\s*(Fatal error: )?")
_UNKNOWN_OP = re.compile(r"^(?P<domain>[\w.]*):(?P<op>\w+)\(-?\d+\) is not a registered function/op")


def _first_line(exc: Exception) -> str:
    """The sentence that names the cause, without ONNX Runtime's status prefix, the model's path or a schema dump;
    an unknown operator as 'operator FancyNorm of domain com.example.custom is not available in ONNX Runtime'."""
    text = " ".join(str(exc).split())
    text = _LOAD_PREFIX.sub("", _ORT_PREFIX.sub("", text))
    unknown = _UNKNOWN_OP.match(text)
    if unknown:
        domain = unknown["domain"] or "ai.onnx"
        return f"operator {unknown['op']} of domain {domain} is not available in ONNX Runtime (a custom op?)"
    return text[:300] or type(exc).__name__
