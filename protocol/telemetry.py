"""Telemetry messages (device -> controller, one per interval): latency histograms, output statistics, resources."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from protocol.histograms import LATENCY_BUCKETS
from protocol.identifiers import DeviceId
from protocol.messages import Message
from protocol.quality import CONFIDENCE_BINS, MAX_TELEMETRY_INPUTS, Elements, InputStats

MAX_TELEMETRY_MODELS = 32
MAX_TELEMETRY_OUTPUTS = 16
MAX_CLASS_BINS = 32
MAX_CLASS_COUNTS = 1024  # class indexes `class_counts` may hold (a classifier of up to 1,000 classes: all of them)
# what a classifier output's rows were (`scores`): every row a distribution, not (logits, or not a classifier's), or
# a classifier declared at push (`edgectl push --task classifier`) whatever its rows
Scores = Literal["probabilities", "logits", "declared"]
MAX_KEY_CHARS = 128  # every string that becomes a key, a label or a database column (drift_baselines.output is 128)
MAX_TEMPERATURE_SENSORS = 64
MAX_CORES = 1024
MAX_COUNT = (1 << 63) - 1  # counters fit a signed 64-bit column on every database

# A name, label or key: bounded, and no control characters (a NUL cannot be stored by PostgreSQL, a newline forges
# lines in logs and in the Prometheus text format).
Key = Annotated[str, StringConstraints(max_length=MAX_KEY_CHARS, pattern=r"^[^\x00-\x1f\x7f]*$")]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
# Every number of a telemetry message is finite: NaN or Infinity is rejected when the message is parsed (a NaN `ts`
# made SQLite refuse a whole batch of honest rows), see `FINITE`.
FINITE = ConfigDict(extra="ignore", allow_inf_nan=False)


class OutputStats(BaseModel):
    """Running statistics of one output tensor over the sampled requests of a window (merge with merge_output_stats).
    `count` is the number of finite elements the statistics cover, `nan`/`inf` the non-finite elements seen."""

    model_config = FINITE
    sampled: Count = 0  # requests whose outputs were sampled
    count: Count = 0
    mean: float = 0.0
    std: float = 0.0
    min: float | None = None
    max: float | None = None
    nan: Count = 0
    inf: Count = 0
    # classifier-like outputs: predicted class -> rows (the 31 most frequent, then "other")
    classes: dict[Key, Count] | None = Field(default=None, max_length=MAX_CLASS_BINS + 1)
    # every predicted class's rows, [[class index, rows], ...] sorted by index, where more classes were seen than
    # `classes` names (optional: an older agent sends none, an older controller ignores it)
    class_counts: list[tuple[Annotated[int, Field(ge=0, lt=MAX_CLASS_COUNTS)], Count]] | None = Field(
        default=None, max_length=MAX_CLASS_COUNTS
    )
    scores: Scores | None = None  # what the classifier rows were; absent where no class was counted
    top1_mean: float | None = None  # mean top-1 confidence (softmax where the row is not already a distribution)
    # model quality (protocol/quality.py; absent from older agents): per-element statistics over the sampled rows,
    # and the classifier's top-1 confidence histogram over [0, 1]
    elements: Elements | None = None
    top1_hist: list[Count] | None = Field(default=None, max_length=CONFIDENCE_BINS)


class ModelTelemetry(BaseModel):
    """One model version's window: counts, the sparse latency histogram [[bucket, count], ...] and output stats."""

    model_config = FINITE
    name: Key
    version: Annotated[Key, StringConstraints(max_length=64)]
    requests: Count = 0
    errors: Count = 0
    latency: list[tuple[Annotated[int, Field(ge=0, lt=LATENCY_BUCKETS)], Count]] = Field(
        default_factory=list, max_length=LATENCY_BUCKETS
    )
    latency_sum_ms: float = 0.0
    latency_max_ms: float = 0.0
    outputs: dict[Key, OutputStats] = Field(default_factory=dict, max_length=MAX_TELEMETRY_OUTPUTS)
    inputs: dict[Key, InputStats] = Field(default_factory=dict, max_length=MAX_TELEMETRY_INPUTS)  # protocol/quality.py
    memory_mb: float | None = None  # the memory the version took when it loaded (agent/serving/eviction.py)
    unified_mb: float | None = None  # of which a Jetson's GPU (nvmap) memory, where it can be read
    resident: bool | None = None  # False: unloaded to save memory, loads again on its next request


class Resources(BaseModel):
    """What the box is spending; every field is optional (absent where the platform cannot tell)."""

    model_config = FINITE
    cpu_percent: float | None = None
    cpu_per_core: list[float] | None = Field(default=None, max_length=MAX_CORES)
    load1: float | None = None
    mem_percent: float | None = None
    mem_used_mb: float | None = None
    rss_mb: float | None = None
    disk_free_mb: float | None = None
    temperature_c: float | None = None  # the hottest sensor
    temperatures: dict[Key, float] | None = Field(default=None, max_length=MAX_TEMPERATURE_SENSORS)
    net_rx_bytes: Count | None = None  # during the window
    net_tx_bytes: Count | None = None
    gpu_load_percent: float | None = None  # Jetson (sysfs)
    gpu_power_w: float | None = None
    # the agent's memory budget (agent/serving/memory.py): its size, what it uses now, models unloaded to keep within
    # it and loaded again on request (with the p95 of those reloads), and the OOM kills its cgroup counted
    budget_mb: float | None = None
    budget_used_mb: float | None = None
    unloads: Count | None = None
    reloads: Count | None = None
    reload_p95_ms: float | None = None
    oom_kills: Count | None = None


class Telemetry(Message):
    """One interval of a device: `start`..`ts` is the window; `seq` grows per sample; `dropped` counts samples the
    device's bounded disk queue has discarded (oldest first) since it started counting."""

    model_config = FINITE
    kind: Literal["telemetry"] = "telemetry"
    device_id: DeviceId
    seq: Count = 0
    start: float = 0.0
    interval_s: float = 10.0
    models: list[ModelTelemetry] = Field(default_factory=list, max_length=MAX_TELEMETRY_MODELS)
    resources: Resources | None = None
    dropped: Count = 0
