"""Measured backend selection: rules give the order of the candidates that read a model's format here, a short
bounded trial loads each, checks its outputs against the first working one and times it, and the fastest that agrees
wins. Results are cached per (model sha256, hardware fingerprint) so a restart does not repeat the trial.

Entry point: `select_backend(path, model_format, hardware, ...) -> Selection`; `Selection.backend` is loaded."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from targets import registry
from targets.base import Backend, BackendError
from targets.tensors import InputError, check_inputs, synthetic_inputs

log = logging.getLogger(__name__)

CACHE_FILE = "backend-selection.json"
RTOL, ATOL = 1e-2, 1e-3  # agreement with the reference backend: |got - want| <= ATOL + RTOL * max|want|
MAX_RUNS = 50
MIN_RUNS = 3
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class Candidate:
    """One way to run the model: a registered backend with the options that pin its device/provider."""

    name: str  # e.g. "onnxruntime:tensorrt", "openvino:cpu", "litert"
    backend: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class CandidateResult:
    name: str
    p50_ms: float | None = None
    p95_ms: float | None = None
    load_ms: float | None = None
    runs: int = 0
    agreed: bool = False
    error: str | None = None  # why it was passed over (failed to load, errored, disagreed, out of budget)


@dataclass
class Selection:
    backend: Backend  # loaded and run at least once (unless trial=False)
    label: str
    candidates: list[CandidateResult]
    reason: str
    cached: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe summary for the device status."""
        return {
            "backend": self.label,
            "reason": self.reason,
            "cached": self.cached,
            "candidates": [asdict(c) for c in self.candidates],
        }


# -- candidates and their prior order --------------------------------------------------------------------------------


def candidates(model_format: str, hardware: dict[str, Any], cache_dir: Path | None = None) -> list[Candidate]:
    """Installed candidates that read `model_format`, in rule order for this hardware."""
    installed = set(registry.installed_backends(model_format))
    found: dict[str, list[Candidate]] = {"onnxruntime": [], "openvino": [], "litert": []}
    if "onnxruntime" in installed:
        providers = hardware.get("ort_providers") or ["CPUExecutionProvider"]
        if "TensorrtExecutionProvider" in providers:
            trt: dict[str, Any] = {"providers": ["TensorrtExecutionProvider"], "fallback": False}
            if cache_dir is not None:
                trt["tensorrt_cache_dir"] = str(cache_dir / "tensorrt")
            found["onnxruntime"].append(Candidate("onnxruntime:tensorrt", "onnxruntime", trt))
        if "CUDAExecutionProvider" in providers:
            cuda = {"providers": ["CUDAExecutionProvider"], "fallback": False}
            found["onnxruntime"].append(Candidate("onnxruntime:cuda", "onnxruntime", cuda))
        cpu = {"providers": ["CPUExecutionProvider"]}
        found["onnxruntime"].append(Candidate("onnxruntime:cpu", "onnxruntime", cpu))
    if "openvino" in installed:
        devices = hardware.get("openvino_devices") or ["CPU"]
        for device in ("GPU", "NPU", "CPU"):
            if any(d.split(".")[0] == device for d in devices):
                found["openvino"].append(Candidate(f"openvino:{device.lower()}", "openvino", {"device": device}))
    if "litert" in installed:
        found["litert"].append(Candidate("litert", "litert", {}))
    for key in installed - found.keys():  # backends added later run after the known ones, with default options
        found[key] = [Candidate(key, key, {})]

    arm = str(hardware.get("arch", "")).startswith(("aarch64", "arm"))
    if hardware.get("jetson") or hardware.get("nvidia_gpu"):
        order = ["onnxruntime", "litert" if model_format == "tflite" else "openvino"]
    elif arm:
        order = ["litert", "openvino"] if model_format == "tflite" else ["onnxruntime", "openvino"]
    elif hardware.get("cpu_vendor") == "intel":
        order = ["openvino", "onnxruntime", "litert"]
    else:
        order = ["onnxruntime", "openvino", "litert"] if model_format != "tflite" else ["litert", "openvino"]
    order += [k for k in found if k not in order]
    return [c for key in order for c in found.get(key, [])]


# -- cache -------------------------------------------------------------------------------------------------------


def hardware_fingerprint(hardware: dict[str, Any]) -> str:
    """What a timing depends on: the CPU, accelerators and runtime versions, not memory use or the OS patch level."""
    keys = ("arch", "cpu_model", "cpu_flags", "cores", "jetson", "ort_providers", "openvino_devices", "runtimes")
    blob = json.dumps({k: hardware.get(k) for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _cache_read(cache_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((cache_dir / CACHE_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _cache_update(cache_dir: Path, key: str, entry: dict[str, Any] | None) -> None:
    with _cache_lock:
        data = _cache_read(cache_dir)
        if entry is None:
            data.pop(key, None)
        else:
            data[key] = entry
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f".{CACHE_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, cache_dir / CACHE_FILE)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- trial -----------------------------------------------------------------------------------------------------------


def load_candidate(
    candidate: Candidate, path: Path, model_format: str, options: dict[str, Any] | None = None
) -> Backend:
    """Load one candidate (e.g. a failover fallback); BackendError says why it cannot."""
    return _load(candidate, path, model_format, options)


def _load(candidate: Candidate, path: Path, model_format: str, options: dict[str, Any] | None = None) -> Backend:
    try:
        backend = registry.create(candidate.backend, {**candidate.options, **(options or {})})
    except (KeyError, ValueError) as exc:
        raise BackendError(f"invalid options for {candidate.backend}: {exc}") from exc
    backend.load(path, model_format)
    return backend


def _disagreement(got: dict[str, Any], want: dict[str, Any]) -> str | None:
    import numpy as np

    for name, ref in want.items():
        if name not in got:
            return f"output {name!r} missing"
        out = np.asarray(got[name])
        if out.shape != ref.shape:
            return f"output {name!r} has shape {list(out.shape)}, the reference {list(ref.shape)}"
        if ref.dtype.kind in "fc" or out.dtype.kind in "fc":
            a, b = out.astype(np.float64), ref.astype(np.float64)
            err = float(np.abs(a - b).max()) if a.size else 0.0
            if err > ATOL + RTOL * (float(np.abs(b).max()) if b.size else 0.0):
                return f"output {name!r} differs from the reference by up to {err:.3g}"
        elif not np.array_equal(out, ref):
            return f"output {name!r} differs from the reference"
    return None


def _not_finite(outputs: dict[str, Any]) -> str | None:
    import numpy as np

    for name, out in outputs.items():
        out = np.asarray(out)
        if out.dtype.kind in "fc" and not np.isfinite(out).all():
            return f"output {name!r} is not finite"
    return None


def _trial(
    path: Path, model_format: str, cands: list[Candidate], budget_s: float
) -> tuple[Backend | None, Candidate | None, list[CandidateResult]]:
    import numpy as np

    start = time.perf_counter()
    results: list[CandidateResult] = []
    reference: dict[str, Any] | None = None
    inputs: dict[str, Any] | None = None
    best: tuple[float, Backend, Candidate] | None = None
    for i, cand in enumerate(cands):
        result = CandidateResult(cand.name)
        results.append(result)
        left = budget_s - (time.perf_counter() - start)
        if left <= 0 and best is not None:
            result.error = "not tried: trial budget spent"
            continue
        slice_end = time.perf_counter() + max(left, 0.0) / (len(cands) - i)
        backend: Backend | None = None
        try:
            t0 = time.perf_counter()
            backend = _load(cand, path, model_format)
            result.load_ms = round((time.perf_counter() - t0) * 1000, 2)
            if inputs is None:
                inputs = synthetic_inputs(backend.inputs, dynamic_size=1, seed=0)
            check_inputs(backend.inputs, inputs)
            first = backend.infer(inputs)  # warm-up, and the outputs to check
            problem = _not_finite(first) or (_disagreement(first, reference) if reference is not None else None)
            if problem:
                raise BackendError(problem)
            times = []
            while len(times) < MAX_RUNS and (len(times) < MIN_RUNS or time.perf_counter() < slice_end):
                t0 = time.perf_counter()
                backend.infer(inputs)
                times.append(time.perf_counter() - t0)
        except (BackendError, InputError) as exc:
            result.error = str(exc)
            if backend is not None:
                backend.close()
            continue
        except Exception as exc:  # a runtime crashing in an unexpected way is one more failed candidate
            result.error = f"{type(exc).__name__}: {exc}"[:500]
            if backend is not None:
                backend.close()
            continue
        if reference is None:
            reference = first
        result.agreed = True
        result.runs = len(times)
        result.p50_ms = round(float(np.percentile(times, 50)) * 1000, 4)
        result.p95_ms = round(float(np.percentile(times, 95)) * 1000, 4)
        if best is None or result.p50_ms < best[0]:
            if best is not None:
                best[1].close()
            best = (result.p50_ms, backend, cand)
        else:
            backend.close()
    if best is None:
        return None, None, results
    return best[1], best[2], results


# -- entry point -----------------------------------------------------------------------------------------------------


def select_backend(
    path: Path,
    model_format: str,
    hardware: dict[str, Any],
    *,
    override: str | None = None,
    options: dict[str, Any] | None = None,
    trial: bool = True,
    budget_s: float = 3.0,
    cache_dir: Path | None = None,
    sha256: str | None = None,
) -> Selection:
    """Choose and load the backend for one model; raise BackendError (naming every candidate's failure) if none works.

    `override`: a backend name ("openvino") or candidate name ("onnxruntime:cuda") chosen by the operator; it is
    loaded with `options` and no trial, and its failure is raised, not worked around. `trial=False` takes the first
    candidate in rule order that loads. `cache_dir` keeps trial results per (sha256, hardware fingerprint)."""
    path = Path(path)
    cands = candidates(model_format, hardware, cache_dir)
    if override:
        match = next((c for c in cands if override in (c.name, c.backend)), None) or Candidate(override, override)
        try:
            backend = _load(match, path, model_format, options)
        except BackendError as exc:
            raise BackendError(f"backend {override!r} (set by the operator) failed: {exc}") from exc
        result = CandidateResult(backend.label, agreed=True)
        return Selection(backend, backend.label, [result], f"{override} set by the operator")
    if not cands:
        raise BackendError(f"no installed backend reads {model_format!r} models; install the matching extra")
    if not trial:
        failures: list[CandidateResult] = []
        for cand in cands:
            try:
                backend = _load(cand, path, model_format)
            except BackendError as exc:
                failures.append(CandidateResult(cand.name, error=str(exc)))
                continue
            reason = "first candidate in rule order that loads (trial disabled)"
            return Selection(backend, backend.label, [*failures, CandidateResult(cand.name, agreed=True)], reason)
        raise BackendError(_none_worked(failures))

    key = None
    if cache_dir is not None:
        key = f"{sha256 or file_sha256(path)}/{model_format}/{hardware_fingerprint(hardware)}"
        entry = _cache_read(Path(cache_dir)).get(key)
        cand = next((c for c in cands if entry and c.name == entry.get("choice")), None)
        if cand is not None:
            try:
                backend = _load(cand, path, model_format)
                results = [CandidateResult(**r) for r in entry.get("candidates", [])]
                return Selection(backend, backend.label, results, entry.get("reason", ""), cached=True)
            except (BackendError, TypeError) as exc:
                log.warning("cached backend choice %s no longer loads (%s): trying again", entry.get("choice"), exc)
                _cache_update(Path(cache_dir), key, None)

    backend, chosen, results = _trial(path, model_format, cands, budget_s)
    if backend is None or chosen is None:
        raise BackendError(_none_worked(results))
    working = [r for r in results if r.agreed]
    if len(working) == 1:
        reason = f"{chosen.name}: the only candidate that worked"
    else:
        runner_up = min((r for r in working if r.name != chosen.name), key=lambda r: r.p50_ms or 0.0)
        reason = f"{chosen.name}: fastest that agrees, p50 {_p50(results, chosen.name)} ms vs {runner_up.name} "
        reason += f"{runner_up.p50_ms} ms"
    failed = [r.name for r in results if r.error]
    if failed:
        reason += f"; passed over: {', '.join(failed)}"
    if key is not None and cache_dir is not None:
        entry = {"choice": chosen.name, "reason": reason, "candidates": [asdict(r) for r in results], "at": time.time()}
        _cache_update(Path(cache_dir), key, entry)
    return Selection(backend, backend.label, results, reason)


def _p50(results: list[CandidateResult], name: str) -> float | None:
    return next((r.p50_ms for r in results if r.name == name), None)


def _none_worked(results: list[CandidateResult]) -> str:
    return "no backend could run the model: " + "; ".join(f"{r.name}: {r.error}" for r in results)
