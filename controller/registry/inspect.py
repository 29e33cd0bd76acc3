"""Recognises an uploaded model's format and checks it is well formed before it is registered."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

from protocol.errors import EdgeError


class InvalidModel(EdgeError, ValueError):
    """The file is not a model this system can deploy; the message says why."""

    code = "invalid_model"


def detect_format(path: Path, filename: str) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 8 and head[4:8] == b"TFL3":
        return "tflite"
    if filename.endswith(".tflite"):
        raise InvalidModel(f"{filename} has a .tflite name but no TFLite flatbuffer header")
    if filename.endswith(".tar") or tarfile.is_tarfile(path):
        return "openvino"
    return "onnx"


def inspect_openvino(path: Path) -> dict[str, Any]:
    """An OpenVINO IR artifact is a tar with one `.xml` and its `.bin`; check that before devices download it."""
    try:
        with tarfile.open(path) as tar:
            names = [Path(m.name).name for m in tar.getmembers() if m.isfile()]
    except tarfile.TarError as exc:
        raise InvalidModel(f"not a readable OpenVINO IR tar: {exc}") from None
    xmls = [n for n in names if n.endswith(".xml")]
    if len(xmls) != 1:
        raise InvalidModel(f"an OpenVINO IR tar holds exactly one .xml file; this one holds {xmls or 'none'}")
    weights = xmls[0][:-4] + ".bin"
    if weights not in names:
        raise InvalidModel(f"the OpenVINO IR tar has {xmls[0]} but not its weights {weights}")
    return {"files": sorted(names)}


def inspect_tflite(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    if size < 32:
        raise InvalidModel(f"a {size}-byte file is too small to be a TFLite model")
    return {}


def onnx_problem(exc: Exception, path: Path) -> str:
    """What onnx found wrong, in the uploader's terms: never the controller's own path of the upload (its file
    name is the uploader's), and an unparseable file said to be cut short or not ONNX."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "Unable to parse proto" in first:
        return "it does not parse as an ONNX protobuf (cut short in transfer, or not an .onnx file); upload it again"
    return first.replace(str(path), "the file")[:300]


def inspect_onnx(path: Path) -> dict[str, Any]:
    """Parse and check an ONNX model; describe its inputs, outputs and opset."""
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - controller extra installs it
        raise InvalidModel("the controller needs the `onnx` package to accept ONNX models") from exc
    try:
        # checked from the path (the checker reads the file itself), then loaded once to describe it: about twice the
        # model's size in memory at the peak, where checking the loaded model copied it twice more
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, ...
        raise InvalidModel(f"not a valid ONNX model: {onnx_problem(exc, path)}") from None

    def describe(values) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or -1) for d in t.shape.dim]
            out.append({"name": v.name, "elem_type": onnx.TensorProto.DataType.Name(t.elem_type), "shape": dims})
        return out

    initializers = {i.name for i in model.graph.initializer}
    return {
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0),
        "inputs": describe([i for i in model.graph.input if i.name not in initializers]),
        "outputs": describe(model.graph.output),
        "producer": model.producer_name,
    }


def inspect_model(path: Path, filename: str) -> tuple[str, dict[str, Any]]:
    """(format, info) for an uploaded file, or InvalidModel."""
    if path.stat().st_size == 0:
        raise InvalidModel("the model file is empty")
    model_format = detect_format(path, filename)
    inspectors = {"onnx": inspect_onnx, "openvino": inspect_openvino, "tflite": inspect_tflite}
    return model_format, inspectors[model_format](path)
