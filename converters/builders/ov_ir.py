"""The OpenVINO IR as the converters make it: the float model read from ONNX, and the packed tar (model.xml +
model.bin) the agent loads; shared by the OpenVINO builders and their mixed-precision search."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path
from typing import Any

from converters import fixes as fx
from converters.job import ConversionError, Job


def ov_model(job: Job) -> Any:
    """The prepared float model as an OpenVINO model; ConversionError naming the op OpenVINO cannot read."""
    import openvino as ov

    try:
        return ov.convert_model(str(job.source))
    except Exception as exc:
        raise ConversionError(fx.unsupported_op_message(exc, job.ops, "OpenVINO")) from exc


def save_ir(model: Any, folder: Path, compress_to_fp16: bool) -> Path:
    """model.xml + model.bin in `folder`; the path of model.bin (the weights, what quantization shrinks)."""
    import openvino as ov

    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=compress_to_fp16)
    return folder / "model.bin"


def pack_ir(model: Any, out: Path, work: Path, compress_to_fp16: bool) -> Path:
    """Save the model as IR and pack model.xml + model.bin into one reproducible tar (the "openvino" artifact)."""
    folder = work / f"ir-{out.stem}"
    save_ir(model, folder, compress_to_fp16)
    with tarfile.open(out, "w") as tar:
        for name in ("model.xml", "model.bin"):
            info = tar.gettarinfo(str(folder / name), arcname=name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with open(folder / name, "rb") as f:
                tar.addfile(info, f)
    shutil.rmtree(folder, ignore_errors=True)
    return out
