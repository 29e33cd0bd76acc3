"""Telemetry messages (device -> controller, one per interval): latency histograms, output statistics, resources."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from protocol.histograms import LATENCY_BUCKETS
from protocol.identifiers import DeviceId
from protocol.messages import Message

MAX_TELEMETRY_MODELS = 32
MAX_TELEMETRY_OUTPUTS = 16
MAX_CLASS_BINS = 32


class OutputStats(BaseModel):
    """Running statistics of one output tensor over the sampled requests of a window (merge with merge_output_stats).
    `count` is the number of finite elements the statistics cover, `nan`/`inf` the non-finite elements seen."""

    model_config = ConfigDict(extra="ignore")
    sampled: int = 0  # requests whose outputs were sampled
    count: int = 0
    mean: float = 0.0
    std: float = 0.0
    min: float | None = None
    max: float | None = None
    nan: int = 0
    inf: int = 0
    classes: dict[str, int] | None = None  # classifier-like outputs: predicted class -> rows ("other" past the cap)
    top1_mean: float | None = None  # mean top-1 confidence (softmax where the row is not already a distribution)


class ModelTelemetry(BaseModel):
    """One model version's window: counts, the sparse latency histogram [[bucket, count], ...] and output stats."""

    model_config = ConfigDict(extra="ignore")
    name: str = Field(max_length=128)
    version: str = Field(max_length=64)
    requests: int = Field(default=0, ge=0)
    errors: int = Field(default=0, ge=0)
    latency: list[tuple[int, int]] = Field(default_factory=list, max_length=LATENCY_BUCKETS)
    latency_sum_ms: float = 0.0
    latency_max_ms: float = 0.0
    outputs: dict[str, OutputStats] = Field(default_factory=dict, max_length=MAX_TELEMETRY_OUTPUTS)


class Resources(BaseModel):
    """What the box is spending; every field is optional (absent where the platform cannot tell)."""

    model_config = ConfigDict(extra="ignore")
    cpu_percent: float | None = None
    cpu_per_core: list[float] | None = None
    load1: float | None = None
    mem_percent: float | None = None
    mem_used_mb: float | None = None
    rss_mb: float | None = None
    disk_free_mb: float | None = None
    temperature_c: float | None = None  # the hottest sensor
    temperatures: dict[str, float] | None = None
    net_rx_bytes: int | None = None  # during the window
    net_tx_bytes: int | None = None
    gpu_load_percent: float | None = None  # Jetson (sysfs)
    gpu_power_w: float | None = None


class Telemetry(Message):
    """One interval of a device: `start`..`ts` is the window; `seq` grows per sample; `dropped` counts samples the
    device's bounded disk queue has discarded (oldest first) since it started counting."""

    kind: Literal["telemetry"] = "telemetry"
    device_id: DeviceId
    seq: int = 0
    start: float = 0.0
    interval_s: float = 10.0
    models: list[ModelTelemetry] = Field(default_factory=list, max_length=MAX_TELEMETRY_MODELS)
    resources: Resources | None = None
    dropped: int = 0
