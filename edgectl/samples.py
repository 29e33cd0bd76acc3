"""Representative inputs pushed with a model version: sample files and shape hints, and how they are listed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgectl.client import ControllerClient
from edgectl.output import plural


def attach_inputs(
    client: ControllerClient, record: dict[str, Any], samples: list[Path], shapes: list[str]
) -> dict[str, Any]:
    """Upload each sample (the first replaces any given before) and the shape hints; the record gains what the
    controller now holds for the version. ApiError (one line, naming the file) when one does not fit the model."""
    name, version = record["name"], record["version"]
    info = dict(record.get("info") or {})
    for i, path in enumerate(samples):
        info["samples"] = client.upload_sample(name, version, path, replace=i == 0)["samples"]
    if shapes:
        info["input_shapes"] = client.set_input_shapes(name, version, shapes)["input_shapes"]
    return {**record, "info": info}


def describe_inputs(info: dict[str, Any]) -> str:
    """`3 samples (x: 1x3x224x224 float32)`, `8 samples in 1 batch (x: 8x16 float32)`, `shapes audio=1x16000`, or
    '-' for the models table."""
    parts = []
    samples = info.get("samples")
    if samples:
        arrays = ", ".join(
            f"{n}: {'x'.join(map(str, a['shape'])) or 'scalar'} {a['dtype']}" for n, a in samples["inputs"].items()
        )
        count, rows = samples["count"], samples.get("rows") or samples["count"]
        batches = f" in {plural(count, 'batch', 'batches')}" if rows != count else ""  # as `convert` counts: rows
        parts.append(f"{plural(rows, 'sample')}{batches} ({arrays})")
    shapes = info.get("input_shapes")
    if shapes:
        parts.append("shapes " + " ".join(f"{n}={'x'.join(map(str, d))}" for n, d in shapes.items()))
    return "; ".join(parts) or "-"
