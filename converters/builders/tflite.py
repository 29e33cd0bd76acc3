"""TFLite variants through onnx2tf and TensorFlow: float32, and INT8 (full where LiteRT runs it, else int8 weights
with float activations). One onnx2tf run serves both, and the float32 model is the LiteRT baseline."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from converters import fixes as fx
from converters.job import ConversionError, Job
from converters.measure import load

KINDS = ("float32", "integer_quant", "dynamic_range_quant")
Layout = tuple[dict[str, Any], str | None]  # onnx2tf layout options, and the note saying what they kept


def onnx2tf(job: Job, integer: bool) -> dict[str, Path]:
    """onnx2tf's .tflite files by kind, converted once (with int8 calibration when any int8 variant is asked for) and
    reused; a failed conversion raises the same ConversionError for every variant that asks again."""
    integer = integer or bool(job.options.get("tflite_int8_requested"))  # one onnx2tf run serves both variants
    cached = job.cache.get("onnx2tf")
    if cached is not None and (cached[0] or not integer):
        if isinstance(cached[1], Exception):
            raise cached[1]
        return cached[1]
    try:
        found = _convert(job, integer)
    except ConversionError as exc:
        job.cache["onnx2tf"] = (integer, exc)
        raise
    job.cache["onnx2tf"] = (integer, found)
    return found


def _convert(job: Job, integer: bool) -> dict[str, Path]:
    folder = job.work / "onnx2tf"
    _run_layouts(job, folder, _options(job, integer))
    stem = job.source.stem
    found = {kind: folder / f"{stem}_{kind}.tflite" for kind in KINDS}
    found = {k: p for k, p in found.items() if p.exists()}
    if "float32" not in found:
        raise ConversionError(f"onnx2tf produced no {stem}_float32.tflite")
    if flex := flex_ops(found["float32"]):
        needs = ", ".join(flex)
        raise ConversionError(f"onnx2tf (TFLite) needs TensorFlow op(s) {needs} (Flex delegate); LiteRT lacks it")
    return found


def _options(job: Job, integer: bool) -> dict[str, Any]:
    """onnx2tf's options: calibration files for int8, pseudo-Erf where the model has Erf."""
    import numpy as np

    kwargs: dict[str, Any] = {}
    if integer:
        calib: list[list[Any]] = []
        for name in job.input_names:
            path = job.work / f"calib-{len(calib)}.npy"
            np.save(path, job.calibration.arrays[name][: job.options.get("calibration_samples", 100)])
            calib.append([name, str(path), 0.0, 1.0])  # mean 0, std 1: the data is used as it is
        kwargs |= {"output_integer_quantized_tflite": True, "custom_input_op_name_np_data_path": calib}
    if "Erf" in job.ops:  # TFLite has no builtin Erf (GELU): it would need the Flex delegate, which LiteRT lacks
        kwargs["replace_to_pseudo_operators"] = ["erf"]
    return kwargs


def _layouts(job: Job) -> list[Layout]:
    """onnx2tf guesses channels-last layouts; keep the ONNX one, and if that trips, keep the shapes as they are."""
    keep = [name for name, rank in job.input_ranks.items() if rank >= 3]
    if not keep:
        return [({}, None)]
    return [
        ({"keep_ncw_or_nchw_or_ncdhw_input_names": keep}, f"inputs {keep} kept in ONNX (channels-first) layout"),
        ({"keep_shape_absolutely_input_names": keep}, f"inputs {keep} kept in their ONNX shape, unchanged"),
    ]


def _run_layouts(job: Job, folder: Path, kwargs: dict[str, Any]) -> None:
    """Convert with the first layout that works; after a failed one, the note says why the next was tried."""
    first_error: ConversionError | None = None
    for layout, note in _layouts(job):
        try:
            _run_onnx2tf(job, folder, kwargs | layout)
        except ConversionError as exc:
            first_error = first_error or exc
            continue
        if note:
            job.cache["onnx2tf_note"] = f"{note} ({str(first_error).split(':')[0]})" if first_error else note
        return
    assert first_error is not None
    raise first_error


def flex_ops(path: Path | None) -> list[str]:
    """The TensorFlow ops a .tflite file calls through the Flex delegate (custom op codes named Flex<Op>)."""
    if path is None:
        return []
    return sorted({m.decode() for m in re.findall(rb"Flex([A-Z][A-Za-z0-9]+)", path.read_bytes())})


def _run_onnx2tf(job: Job, folder: Path, kwargs: dict[str, Any]) -> None:
    """One onnx2tf conversion into a fresh `folder`; ConversionError names the op it failed at."""
    shutil.rmtree(folder, ignore_errors=True)
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import onnx2tf as converter

        converter.convert(
            input_onnx_file_path=str(job.source),
            output_folder_path=str(folder),
            non_verbose=True,
            copy_onnx_input_output_names_to_tflite=True,
            **kwargs,
        )
    except BaseException as exc:  # onnx2tf raises anything, even SystemExit, on an unsupported graph
        if isinstance(exc, KeyboardInterrupt):
            raise
        text = str(exc)
        if isinstance(exc, ModuleNotFoundError) and "onnx2tf.ops." in text:  # its way of saying "no such op"
            op = text.rsplit("onnx2tf.ops.", 1)[1].strip("'\" ")
            raise ConversionError(f"onnx2tf (TFLite) does not support op {op}") from exc
        raise ConversionError(fx.unsupported_op_message(exc, job.ops, "onnx2tf (TFLite)")) from exc


def _notes(job: Job) -> list[str]:
    notes = [job.cache["onnx2tf_note"]] if job.cache.get("onnx2tf_note") else []
    if "Erf" in job.ops:
        notes.append("Erf built from TFLite builtin ops (onnx2tf pseudo-Erf): no Flex delegate needed")
    return notes


def build_tflite(job: Job, out: Path, fixes: list[str]) -> Path:
    found = onnx2tf(job, integer=False)
    fixes.extend(_notes(job))
    shutil.copyfile(found["float32"], out)
    return out


def build_tflite_int8(job: Job, out: Path, fixes: list[str]) -> Path:
    """Full int8 when LiteRT runs it; else int8 weights with float activations (a transformer's pseudo-Erf divides
    by a value that int8 rounds to zero), named in the report."""
    found = onnx2tf(job, integer=True)
    fixes.extend(_notes(job))
    full = found.get("integer_quant")
    problem = _litert_problem(job, full) if full else "onnx2tf produced no integer-quantized model"
    if full is not None and problem is None:
        fixes.append("int8 weights and activations, float32 inputs/outputs (onnx2tf integer_quant)")
        shutil.copyfile(full, out)
    elif "dynamic_range_quant" in found:
        fixes.append(f"int8 weights, float activations (onnx2tf dynamic_range_quant): full int8 {problem}")
        shutil.copyfile(found["dynamic_range_quant"], out)
    else:
        raise ConversionError(f"full int8 {problem}")
    return out


def _litert_problem(job: Job, path: Path) -> str | None:
    """Why LiteRT cannot run a .tflite file on one calibration batch, or None when it can."""
    try:
        model = load("tflite", path, "tflite", job.input_names, job.output_names)
        try:
            model.run(job.samples(1)[0])
        finally:
            model.close()
    except Exception as exc:
        return f"does not run on LiteRT: {fx.first_line(exc)}"
    return None
