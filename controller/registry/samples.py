"""Representative inputs given with a model version (`edgectl push --sample`): checked against the model's inputs,
packed into one content-addressed .npz artifact that travels to the devices with the version and is signed with it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from controller.db.database import Database
from controller.registry.artifacts import ArtifactStore
from protocol import MAX_SAMPLES, MAX_SAMPLES_BYTES
from protocol.errors import EdgeError
from targets.inputs import Inputs, SampleError, pack_samples, read_sample_sets, sample_rows, unpack_samples

_ONNX_DTYPES = {
    "FLOAT": "float32", "DOUBLE": "float64", "FLOAT16": "float16", "INT64": "int64", "INT32": "int32",
    "INT16": "int16", "INT8": "int8", "UINT8": "uint8", "UINT16": "uint16", "BOOL": "bool",
}  # fmt: skip


def parse_shape(text: str) -> tuple[str, list[int]]:
    """`NAME=1x512` (or `NAME=1,512`) as (name, dims); SampleError names what is wrong."""
    name, sep, dims = text.partition("=")
    parts = dims.replace(",", "x").split("x") if dims else []
    if not sep or not name or not parts or not all(p.strip().isdigit() for p in parts):
        raise SampleError(f"input shape {text!r}: expected NAME=DIMxDIM..., e.g. audio=1x16000")
    return name.strip(), [int(p) for p in parts]


def check_against_info(arrays: Inputs, info: dict[str, Any]) -> Inputs:
    """Name a lone .npy after the single input and check names, dtypes and fixed dims against the registered
    signature (ONNX models; other formats are checked on the device)."""
    declared = info.get("inputs") or []
    if set(arrays) == {""}:
        if len(declared) != 1:
            raise SampleError(f"a single .npy fits a one-input model; this one takes {len(declared) or 'unknown'}")
        arrays = {declared[0]["name"]: arrays[""]}
    if not declared:
        return arrays
    by_name = {d["name"]: d for d in declared}
    unknown = sorted(set(arrays) - set(by_name))
    missing = sorted(set(by_name) - set(arrays))
    if unknown or missing:
        raise SampleError(f"sample inputs {sorted(arrays)} do not match the model's inputs {sorted(by_name)}")
    for name, array in arrays.items():
        spec = by_name[name]
        want = _ONNX_DTYPES.get(spec["elem_type"])
        if want and array.dtype.name != want:
            raise SampleError(f"sample input {name!r} is {array.dtype.name}; the model takes {want}")
        fixed = [d if isinstance(d, int) and d > 0 else None for d in spec["shape"]]
        if len(fixed) != array.ndim or any(f is not None and f != g for f, g in zip(fixed, array.shape, strict=False)):
            raise SampleError(f"sample input {name!r} has shape {list(array.shape)}; the model takes {spec['shape']}")
    return arrays


def add_samples(
    artifacts: ArtifactStore, info: dict[str, Any], files: list[tuple[str, bytes]], replace: bool
) -> dict[str, Any]:
    """The version's `samples` entry after adding `files` (or replacing the old ones): {sha256, size, count, inputs}."""
    old = info.get("samples") if not replace else None
    sets = unpack_samples(artifacts.path(old["sha256"])) if old else []
    for filename, raw in files:
        sets.extend(check_against_info(arrays, info) for arrays in read_sample_sets(raw, filename))
    if len(sets) > MAX_SAMPLES:
        raise SampleError(f"{len(sets)} samples: at most {MAX_SAMPLES} travel with a version")
    packed = pack_samples(sets)
    if len(packed) > MAX_SAMPLES_BYTES:
        raise SampleError(f"samples take {len(packed) >> 20} MiB packed; at most {MAX_SAMPLES_BYTES >> 20} MiB travel")
    sha256 = hashlib.sha256(packed).hexdigest()
    tmp = artifacts.begin()
    Path(tmp).write_bytes(packed)
    artifacts.commit(tmp, sha256)
    shapes = {name: {"shape": list(a.shape), "dtype": a.dtype.name} for name, a in sets[0].items()}
    rows = sample_rows(sets)  # as the converters count samples: x: 8x16 is 8 (run as one batch of 8)
    return {"sha256": sha256, "size": len(packed), "count": len(sets), "rows": rows, "inputs": shapes}


def version_info(db: Database, name: str, version: str) -> dict[str, Any]:
    """The registered version's info, or unknown_model."""
    row = db.get_model(name, version)
    if row is None:
        raise EdgeError(f"model {name!r} version {version!r} is not registered", code="unknown_model")
    return dict(row.info or {})


def add_sample(
    db: Database, artifacts: ArtifactStore, name: str, version: str, sample: tuple[str, bytes], replace: bool
) -> dict[str, Any]:
    """Add one (filename, bytes) sample to the version (bad_sample says why not); its new `samples` entry."""
    filename = sample[0]
    try:
        entry = add_samples(artifacts, version_info(db, name, version), [sample], replace)
    except SampleError as exc:
        raise EdgeError(f"{filename}: {exc}", code="bad_sample") from None
    db.update_model_info(name, version, {"samples": entry})
    return entry


def set_input_shapes(db: Database, name: str, version: str, texts: list[str]) -> dict[str, list[int]]:
    """Record `NAME=DIMxDIM` hints for the version's synthetic inputs (replacing earlier ones); bad_shape says why
    not."""
    info = version_info(db, name, version)
    try:
        shapes = dict(parse_shape(text) for text in texts)
    except SampleError as exc:
        raise EdgeError(str(exc), code="bad_shape") from None
    declared = {d["name"] for d in info.get("inputs") or []}
    unknown = sorted(set(shapes) - declared) if declared else []
    if unknown:
        raise EdgeError(f"unknown input(s) {unknown}; the model takes {sorted(declared)}", code="bad_shape")
    db.update_model_info(name, version, {"input_shapes": shapes})
    return shapes


def set_task(db: Database, name: str, version: str, task: str | None) -> str | None:
    """Record what the version's outputs are (classifier, regression; None: detected on the device from their shape),
    carried to devices in the desired state's entry; bad_task names the choices."""
    version_info(db, name, version)
    if task not in (None, "classifier", "regression"):
        raise EdgeError(f"task {task!r}: use classifier, regression or auto", code="bad_task")
    db.update_model_info(name, version, {"task": task})
    return task


def set_pinned(db: Database, name: str, version: str, pinned: bool) -> bool:
    """Keep the version loaded on the devices whatever their memory budget (`edgectl push --pin`), carried in the
    desired state's entry (`pinned`)."""
    version_info(db, name, version)
    db.update_model_info(name, version, {"pinned": bool(pinned)})
    return bool(pinned)
