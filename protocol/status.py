"""Typed parts of a device's report: why a model serves on its backend (trial, variants), run-time failover, and
the hardware probe. Every field is optional and unknown ones are ignored, so any report an agent sends validates."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer


class Reported(BaseModel):
    """Base of the report parts: dumps only the fields it was given, so what the controller stores and its API
    answers is the JSON the agent sent (no null for a field an older agent never reported)."""

    model_config = ConfigDict(extra="ignore")

    @model_serializer(mode="wrap")
    def _given_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}


class ArenaSetting(Reported):
    """One ONNX Runtime CPU arena setting as the trial measured it (MiB, ms; `runs` timed)."""

    rss_mb: float | None = None
    peak_mb: float | None = None
    p50_ms: float | None = None
    cpu_ms: float | None = None  # the CPU time of a run (median)
    runs: int | None = None


class ArenaTrial(Reported):
    """The trial's arena choice for an onnxruntime:cpu winner: both settings' figures and the rule's verdict."""

    chosen: str | None = None  # "on" or "off"
    why: str | None = None  # e.g. "on: off saves 57.0 MiB (87%) of 65.5 at p50 x1.88, CPU x1.64, over x1.1"
    on: ArenaSetting | None = None
    off: ArenaSetting | None = None
    trial_s: float | None = None  # what measuring it added to the trial


class CandidateResult(Reported):
    """How one backend candidate fared in the trial: its timing, or why it was passed over."""

    name: str | None = None
    precision: str | None = None  # "full", "fp16", "bf16"
    p50_ms: float | None = None
    p95_ms: float | None = None
    load_ms: float | None = None
    runs: int | None = None
    agreed: bool | None = None
    deviation: float | None = None  # worst error against the reference, in units of the tolerance (<= 1 agrees)
    rss_mb: float | None = None  # resident memory its load and a run added in the trial worker (steady)
    peak_mb: float | None = None  # and at its highest while loading and running
    unified_mb: float | None = None  # on a Jetson, the GPU (nvmap) memory it held there, beside rss_mb (same RAM)
    arena: ArenaTrial | None = None  # an onnxruntime:cpu winner's CPU arena measured both ways (selection.memory too)
    error: str | None = None


class VariantTrial(Reported):
    """One optimized variant (or the original) timed on the device against the original."""

    variant: str | None = None  # "original", "int8", ...
    backend: str | None = None
    cosine: float | None = None  # agreement with the original on the representative inputs
    vs_original: float | None = None  # head-to-head p50 relative to the original
    p50_ms: float | None = None
    runoff_p50_ms: float | None = None
    error: str | None = None


class Shadow(Reported):
    """The check a new version passed or failed before its swap: timed beside the serving version on the same
    inputs (copies of live requests, or the model's samples when traffic was thin)."""

    against: str | None = None  # the serving version it was compared with
    inputs: str | None = None  # "live" or "samples"
    pairs: int | None = None  # inputs both versions answered
    p50_ms: float | None = None
    p95_ms: float | None = None
    serving_p50_ms: float | None = None
    serving_p95_ms: float | None = None
    agreement: float | None = None  # share of live inputs on which both answered alike (reported, not judged)
    difference: str | None = None  # the first disagreement seen
    verdict: str | None = None  # "passed", or why the serving version stays


class Memory(Reported):
    """A serving version's memory (MiB): what the trial predicted, what loading it here added, and the budget."""

    predicted_mb: float | None = None  # the chosen candidate's steady resident memory in the trial worker
    peak_mb: float | None = None  # its high-water mark there
    measured_mb: float | None = None  # what the agent's own memory grew by as it loaded and warmed the version
    # on a Jetson, the GPU (nvmap) memory outside the resident figures above, from the same RAM: the trial worker's
    # and the agent's (targets/gpu_memory.py); absent elsewhere, or where debugfs cannot be read (not root)
    unified_mb: float | None = None
    measured_unified_mb: float | None = None
    budget_mb: float | None = None  # the agent's memory budget, and where it comes from
    budget_source: str | None = None
    # ONNX Runtime's CPU memory arena as the serving backend runs it ("on", "off"; None: another runtime), and for
    # an onnxruntime:cpu trial winner the trial's measurement of both settings that chose it (targets/trial_arena.py)
    arena: str | None = None
    arena_trial: ArenaTrial | None = None
    # OpenVINO CPU: its cache of kernels compiled per input shape (CPU_RUNTIME_CACHE_CAPACITY entries; "default":
    # OpenVINO's 5000, kept by measurement, bench/openvino_cache.py) and whether the compiled-model cache
    # (CACHE_DIR) is on; None: another runtime
    runtime_cache: str | None = None
    model_cache: str | None = None


class Selection(Reported):
    """The backend choice for a model: the winner, why, every candidate tried, and the variants contest."""

    backend: str | None = None
    reason: str | None = None
    cached: bool | None = None  # the choice came from an earlier trial on this hardware
    precision: str | None = None
    reference: str | None = None  # the runtime whose answers every candidate was checked against
    inputs: str | None = None  # what the candidates ran on (samples given with the model, or synthetic inputs)
    timed: bool | None = None
    candidates: list[CandidateResult] = Field(default_factory=list)
    variants: list[VariantTrial] = Field(default_factory=list)
    agreement_on: str | None = None  # the inputs the variants' agreement with the original was judged on
    variants_trial_s: float | None = None
    live: str | None = None  # re-selection on the shapes of live requests: what it decided and its figures
    retrial: str | None = None  # the trial run again after a restart found other hardware or runtimes
    memory: Memory | None = None  # the version's footprint: predicted by the trial, measured as the agent loaded it


class Failover(Reported):
    """Run-time failover: what serves now instead of the preferred backend, and why."""

    active: str | None = None
    preferred: str | None = None
    failed_over: bool | None = None
    failovers: int | None = None
    reason: str | None = None
    since: float | None = None


class Jetson(Reported):
    model: str | None = None
    l4t: str | None = None


class Hardware(Reported):
    """The agent's hardware probe (targets/probe.py): what the device is and which runtimes it can import."""

    arch: str | None = None
    cpu_model: str | None = None
    cpu_vendor: str | None = None
    cpu_flags: list[str] | None = None
    cores: int | None = None
    memory_mb: int | None = None
    os: str | None = None
    python: str | None = None
    board: str | None = None
    jetson: Jetson | None = None
    raspberry_pi: str | None = None
    ort_providers: list[str] | None = None
    nvidia_gpu: bool | None = None
    openvino_devices: list[str] | None = None
    intel_gpu: bool | None = None
    intel_npu: bool | None = None
    runtimes: dict[str, str | None] | None = None  # runtime -> installed version, None where absent
    # the device's own labels (`edge-agent run --label KEY=VALUE`, `labels` in its config); the measured ones
    # (arch, accelerator, board, ram_gb) are derived from the fields above: protocol/labels.py
    labels: dict[str, str] | None = None
