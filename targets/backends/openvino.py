"""OpenVINO backend: CPU / GPU / NPU / AUTO devices; reads ONNX, OpenVINO IR (a tar of model.xml + model.bin, or an
`.xml` with its `.bin` beside it) and TFLite."""

from __future__ import annotations

import logging
import tarfile
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from protocol.compat import zip_strict
from targets.base import Backend, BackendConfig, BackendError
from targets.tensors import TensorSpec

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

# OpenVINO element type names -> v2 datatypes
_OV_TYPES = {
    "boolean": "BOOL",
    "u8": "UINT8",
    "u16": "UINT16",
    "u32": "UINT32",
    "u64": "UINT64",
    "i8": "INT8",
    "i16": "INT16",
    "i32": "INT32",
    "i64": "INT64",
    "f16": "FP16",
    "f32": "FP32",
    "f64": "FP64",
}


class OpenVinoConfig(BackendConfig):
    type: Literal["openvino"] = "openvino"
    device: Literal["CPU", "GPU", "NPU", "AUTO"] = "CPU"
    performance_hint: Literal["LATENCY", "THROUGHPUT"] = "LATENCY"
    cache_dir: str | None = None  # compiled-blob cache: later loads of the same model skip compilation
    # CPU plugin's cache of kernels compiled per input shape (CPU_RUNTIME_CACHE_CAPACITY, entries); None: OpenVINO's
    # default (5000), kept by measurement (bench/openvino_cache.py, bench/README.md): 0 or 50 saved 11-15% only once
    # a dynamic-shape model had served 16 shapes, none of the trial's steady figure, and cost 3-14% CPU per run.
    runtime_cache_capacity: int | None = Field(default=None, ge=0)
    num_streams: int | None = None  # None = what the performance hint picks
    # Models with dynamic dims called with one shape all day run faster compiled for it: after `specialize_after`
    # calls with the same input shapes, compile a static copy in the background (at most `specialize_shapes`, LRU).
    specialize_shapes: int = Field(default=4, ge=0, le=64)
    specialize_after: int = Field(default=3, ge=1)
    # The model's own precision by default: on CPUs with AVX-512 BF16/AMX OpenVINO would otherwise compute in bf16
    # and drift 0.3-12% from the exact answer. bf16/f16 are reduced-precision candidates that must pass agreement.
    precision: Literal["f32", "bf16", "f16"] = "f32"
    # The model's own tensor names by position (from the reference runtime): OpenVINO's "any name" of a port can be
    # an internal tensor name such as '/attn_layers.0/ccm/gru1/Cast_output_0'.
    input_names: list[str] | None = None
    output_names: list[str] | None = None


def _name(port: Any, fallback: str) -> str:
    """The port's public name: a tensor fused into another carries both names, and OpenVINO's "any name" can be the
    internal one ('/attn/Cast_output_0' for 'input_lengths'); names without a leading '/' are the model's own."""
    names = port.get_names()
    if not names:
        return fallback
    public = sorted(n for n in names if not n.startswith("/"))
    return public[0] if len(public) == 1 else str(port.get_any_name())


def _spec(port: Any, fallback: str) -> TensorSpec:
    name = _name(port, fallback)
    type_name = port.get_element_type().get_type_name()
    datatype = _OV_TYPES.get(type_name)
    if datatype is None:
        raise BackendError(f"tensor {name!r} has unsupported type {type_name}")
    shape = port.get_partial_shape()
    if shape.rank.is_dynamic:
        raise BackendError(f"tensor {name!r} has a dynamic rank, which cannot be described")
    dims = tuple(-1 if d.is_dynamic else d.get_length() for d in shape)
    return TensorSpec(name, datatype, dims, tuple(None for _ in dims))


def _named(specs: list[TensorSpec], names: list[str] | None) -> list[TensorSpec]:
    """The specs renamed by position when the reference's names are known and the counts agree."""
    if not names or len(names) != len(specs):
        return specs
    return [TensorSpec(name, s.datatype, s.shape, s.dim_names) for name, s in zip_strict(names, specs)]


def _read_ir_tar(core: Any, path: Path) -> Any:
    """An "openvino" artifact: one tar holding model.xml and model.bin, read from memory (nothing unpacked)."""
    import numpy as np
    import openvino as ov

    try:
        with tarfile.open(path) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            xml = next((n for n in members if n.endswith(".xml")), None)
            if xml is None:
                raise BackendError("the OpenVINO artifact holds no .xml file")
            xml_bytes = tar.extractfile(members[xml]).read()  # type: ignore[union-attr]
            bin_name = xml[:-4] + ".bin"
            weights = tar.extractfile(members[bin_name]).read() if bin_name in members else b""  # type: ignore[union-attr]
    except tarfile.TarError as exc:
        raise BackendError(f"the OpenVINO artifact is not a readable tar: {exc}") from exc
    tensor = ov.Tensor(np.frombuffer(weights, dtype=np.uint8).copy()) if weights else ov.Tensor(ov.Type.u8, [0])
    return core.read_model(model=xml_bytes, weights=tensor)


def _read(core: Any, path: Path, model_format: str) -> Any:
    if model_format == "openvino":
        if path.suffix == ".xml":
            return core.read_model(str(path))
        return _read_ir_tar(core, path)
    suffix = "." + model_format  # OpenVINO picks its frontend by file extension: store objects have none
    if path.suffix == suffix:
        return core.read_model(str(path))
    with tempfile.TemporaryDirectory(prefix="edge-ov-") as tmp:
        link = Path(tmp) / f"model{suffix}"
        link.symlink_to(path.resolve())
        return core.read_model(str(link))


def compile_properties(config: OpenVinoConfig) -> dict[str, str]:
    """The properties the model is compiled with, from the backend's config."""
    properties: dict[str, str] = {"PERFORMANCE_HINT": config.performance_hint}
    if config.device != "NPU":  # the NPU computes in f16 whatever it is told
        properties["INFERENCE_PRECISION_HINT"] = config.precision
    if config.cache_dir:
        properties["CACHE_DIR"] = config.cache_dir
    if config.num_streams is not None:
        properties["NUM_STREAMS"] = str(config.num_streams)
    if config.runtime_cache_capacity is not None and config.device == "CPU":
        properties["CPU_RUNTIME_CACHE_CAPACITY"] = str(config.runtime_cache_capacity)
    return properties


class OpenVinoBackend(Backend):
    type_key = "openvino"
    config_class = OpenVinoConfig
    formats = frozenset({"onnx", "openvino", "tflite"})
    runtime_module = "openvino"

    def load(self, path: Path, model_format: str) -> None:
        import openvino as ov

        config: OpenVinoConfig = self.config  # type: ignore[assignment]
        if model_format not in self.formats:
            raise BackendError(f"OpenVINO does not read {model_format!r} models")
        core = ov.Core()
        if config.device not in ("AUTO",) and config.device not in core.available_devices:
            available = ", ".join(core.available_devices) or "none"
            raise BackendError(f"OpenVINO device {config.device} is not present here (available: {available})")
        properties = compile_properties(config)
        if config.cache_dir:
            Path(config.cache_dir).mkdir(parents=True, exist_ok=True)
        try:
            model = _read(core, path, model_format)
            self.compiled = core.compile_model(model, config.device, properties)
        except BackendError:
            raise
        except Exception as exc:  # OpenVINO raises RuntimeError and friends with multi-line messages
            raise BackendError(f"OpenVINO could not load the model: {_first_lines(exc)}") from exc
        self.inputs = _named([_spec(p, f"input{i}") for i, p in enumerate(self.compiled.inputs)], config.input_names)
        outputs = [_spec(p, f"output{i}") for i, p in enumerate(self.compiled.outputs)]
        self.outputs = _named(outputs, config.output_names)
        self._ports = list(self.compiled.outputs)
        self._local = threading.local()  # an InferRequest is not thread-safe: one per serving thread per model
        dynamic = any(d < 0 for spec in self.inputs for d in spec.shape)
        self.specializer = (
            ShapeSpecializer(core, model, config.device, properties, config.specialize_shapes, config.specialize_after)
            if dynamic and config.specialize_shapes
            else None
        )

    @property
    def label(self) -> str:
        return f"openvino:{self.config.device.lower()}"  # type: ignore[attr-defined]

    @property
    def precision(self) -> str:
        config: OpenVinoConfig = self.config  # type: ignore[assignment]
        if config.device == "NPU":
            return "fp16"
        return {"f32": "full", "bf16": "bf16", "f16": "fp16"}[config.precision]

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # by position: names of TFLite/IR tensors may differ from the port's "any name"
        feeds = {i: inputs[s.name] for i, s in enumerate(self.inputs)}
        compiled = self.compiled
        if self.specializer is not None:
            compiled = self.specializer.lookup(tuple(a.shape for a in feeds.values())) or compiled
        requests = getattr(self._local, "requests", None)
        if requests is None:
            requests = self._local.requests = {}
        request = requests.get(id(compiled))
        if request is None:
            request = requests[id(compiled)] = compiled.create_infer_request()
        try:
            results = request.infer(feeds, share_outputs=False)
        except Exception as exc:
            raise BackendError(f"OpenVINO inference failed: {_first_lines(exc)}") from exc
        return {spec.name: results[i] for i, spec in enumerate(self.outputs)}

    def settle(self, timeout_s: float = 60.0) -> bool:
        return self.specializer.settle(timeout_s) if self.specializer is not None else False

    def close(self) -> None:
        self.__dict__.pop("compiled", None)
        self.__dict__.pop("_local", None)


Shapes = tuple[tuple[int, ...], ...]


class ShapeSpecializer:
    """Static-shape compilations of a dynamic model for the input shapes actually seen (bounded, LRU). The dynamic
    compilation keeps serving every other shape, and serves a shape while its static copy compiles."""

    def __init__(
        self, core: Any, model: Any, device: str, properties: dict[str, str], capacity: int, after: int
    ) -> None:
        self.core, self.model, self.device, self.properties = core, model, device, properties
        self.capacity, self.after = capacity, after
        self.compiled: OrderedDict[Shapes, Any] = OrderedDict()
        self.seen: OrderedDict[Shapes, int] = OrderedDict()
        self.failed: set[Shapes] = set()
        self._compiling: set[Shapes] = set()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def lookup(self, shapes: Shapes) -> Any:
        """The static compilation for these shapes, or None (then maybe start compiling one)."""
        found = self.compiled.get(shapes)
        if found is not None:
            return found
        with self._lock:
            if shapes in self.failed or shapes in self._compiling:
                return None
            count = self.seen.pop(shapes, 0) + 1
            self.seen[shapes] = count
            while len(self.seen) > 256:  # remember a bounded number of shapes
                self.seen.popitem(last=False)
            if count < self.after:
                return None
            self._compiling.add(shapes)
            thread = threading.Thread(target=self._compile, args=(shapes,), name="ov-specialize", daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return None

    def settle(self, timeout_s: float) -> bool:
        """Wait for the static copies compiling now; True when there were some."""
        with self._lock:
            running = [t for t in self._threads if t.is_alive()]
        for thread in running:
            thread.join(timeout_s)
        return bool(running)

    def _compile(self, shapes: tuple[tuple[int, ...], ...]) -> None:
        import openvino as ov

        try:
            static = self.model.clone()
            static.reshape({i: ov.PartialShape(list(shape)) for i, shape in enumerate(shapes)})
            compiled = self.core.compile_model(static, self.device, self.properties)
        except Exception as exc:
            log.info("no static compilation for shapes %s: %s", shapes, _first_lines(exc))
            with self._lock:
                self.failed.add(shapes)
                self._compiling.discard(shapes)
            return
        with self._lock:
            self.compiled[shapes] = compiled
            self.compiled.move_to_end(shapes)
            while len(self.compiled) > self.capacity:
                self.compiled.popitem(last=False)
            self._compiling.discard(shapes)
        log.info("compiled a static specialization for input shapes %s", shapes)


def _first_lines(exc: Exception) -> str:
    """OpenVINO prefixes messages with source locations; keep the informative part."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    summary = next((ln for ln in lines if ln.startswith("-- Conversion is failed for:")), None)
    if summary is not None:
        return "unsupported operations: " + summary.split(":", 1)[1].strip()
    noise = ("Exception from", "Check '", "FrontEnd API failed")
    return " ".join(ln for ln in lines if not ln.startswith(noise))[:300] or type(exc).__name__
