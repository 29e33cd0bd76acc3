"""TensorRT engines through ONNX Runtime, built before the swap and never reused for another model.

ONNX Runtime's own engine cache id hashes the model's file name, tensor and node names and runtime versions, not its
weights: a retrained model under the same name silently reuses the old engine (onnxruntime#6455). Here each engine
lives in a directory keyed by the model's sha256, the precision, the input shape profile, the TensorRT, CUDA and ONNX
Runtime versions and the GPU's compute capability; the timing cache (what makes a rebuild fast: minutes -> seconds on
a Jetson) is kept per hardware class (compute capability and TensorRT version) and shared by every model.

The trial passes `trial_options()` to the TensorRT candidates, so the engine is built in the trial worker while it is
judged and timed, and the agent's load of the winner, with the very same options, finds it in the cache: a client's
first request never waits for a build. An explicit min/opt/max profile comes from the samples (or shape hints), so
dynamic inputs get one engine for the range seen instead of a rebuild per new shape.

Not verified on a GPU here: the keying and the options are tested (tests/unit/targets/test_tensorrt.py), the builds
are not."""

from __future__ import annotations

import hashlib
import json
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol.files import sha256_file

if TYPE_CHECKING:
    from targets.candidates import Candidate
    from targets.inputs import Inputs
    from targets.tensors import TensorSpec

PROVIDER = "TensorrtExecutionProvider"
PROFILE_KEYS = ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")


@lru_cache(maxsize=1)
def runtime_versions() -> dict[str, str]:
    """ONNX Runtime's, TensorRT's and CUDA's versions and the GPU's compute capability ("none" where absent)."""
    found = {"onnxruntime": "none", "tensorrt": "none", "cuda": "none", "compute_capability": "none"}
    try:
        import onnxruntime

        found["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    try:
        import tensorrt

        found["tensorrt"] = str(tensorrt.__version__)
    except ImportError:
        pass
    try:  # nvidia-smi's compute_cap needs driver >= 510; JetPack has no nvidia-smi (its GPU shows in the probe)
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=compute_cap,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.splitlines()  # fmt: skip
        if out:
            cap, _, driver = out[0].partition(",")
            found["compute_capability"], found["cuda"] = cap.strip(), f"driver {driver.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return found


def shapes_text(shapes: dict[str, tuple[int, ...]]) -> str:
    """ONNX Runtime's profile format: "x:1x3x224x224,mask:1x224"."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in shape)}" for name, shape in sorted(shapes.items()))


def shape_profile(
    specs: list[TensorSpec], sets: list[Inputs], hints: dict[str, list[int]] | None = None
) -> dict[str, str]:
    """trt_profile_{min,opt,max}_shapes for the inputs with dynamic dimensions: the smallest, the first (the
    representative) and the largest shape of each among the samples, or the operator's shape hint for all three;
    {} when every input is static (TensorRT then needs no profile)."""
    dynamic = [s for s in specs if any(d < 0 for d in s.shape)]
    if not dynamic:
        return {}
    low: dict[str, tuple[int, ...]] = {}
    opt: dict[str, tuple[int, ...]] = {}
    high: dict[str, tuple[int, ...]] = {}
    for spec in dynamic:
        seen = [tuple(int(d) for d in x[spec.name].shape) for x in sets if spec.name in x]
        if hints and spec.name in hints:
            seen = [tuple(hints[spec.name])]
        if not seen:
            return {}  # no shape known for an input: ONNX Runtime's implicit profile beats a wrong one
        low[spec.name] = tuple(min(dims) for dims in zip(*seen))
        high[spec.name] = tuple(max(dims) for dims in zip(*seen))
        opt[spec.name] = seen[0]
    return dict(zip(PROFILE_KEYS, (shapes_text(low), shapes_text(opt), shapes_text(high))))


def engine_key(sha256: str, precision: str, profile: dict[str, str], versions: dict[str, str]) -> str:
    """What an engine depends on, hashed: the weights, the precision, the profile, the runtimes and the GPU."""
    blob = json.dumps({"model": sha256, "precision": precision, "profile": profile, **versions}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def hardware_class(versions: dict[str, str]) -> str:
    """The timing cache's key: TensorRT's timings hold for one GPU architecture and TensorRT version."""
    blob = f"sm{versions['compute_capability']}-trt{versions['tensorrt']}"
    return "".join(c if c.isalnum() or c in "-." else "_" for c in blob)


def provider_options(
    cache_dir: str | Path,
    sha256: str,
    fp16: bool,
    profile: dict[str, str],
    versions: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The TensorRT provider's cache options: the engine directory of this exact model and setting (with a
    key.json saying what it was built for), the hardware class's timing cache, and the shape profile."""
    versions = versions or runtime_versions()
    precision = "fp16" if fp16 else "fp32"
    root = Path(cache_dir)
    engines = root / "engines" / engine_key(sha256, precision, profile, versions)
    timing = root / "timing" / hardware_class(versions)
    for folder in (engines, timing):
        folder.mkdir(parents=True, exist_ok=True)
    record = engines / "key.json"
    if not record.exists():
        record.write_text(json.dumps({"model_sha256": sha256, "precision": precision, "profile": profile, **versions}))
    return {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(engines),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(timing),
        **profile,
    }


def trial_options(
    cand: Candidate, path: Path, specs: list[TensorSpec], sets: list[Inputs], hints: dict[str, list[int]] | None
) -> dict[str, Any]:
    """What a TensorRT candidate is loaded with in the trial, and the winner with in the agent: the model's sha256
    and its shape profile (so both build and find the same engine); {} for every other candidate."""
    if PROVIDER not in cand.options.get("providers", ()):
        return {}
    return {"model_sha256": sha256_file(path), "tensorrt_profile": shape_profile(specs, sets, hints)}
