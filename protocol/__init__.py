"""The wire contract between agent and controller: topics, message schemas, QoS and binary framing.

Both sides import this one module; docs/protocol.md describes the same contract for other implementers.
Everything a request/response needs (reply topic, correlation id) travels in the message body, so the
contract works on MQTT 3.1.1 brokers; MQTT 5 properties are only added on top where the broker speaks v5.
"""

from __future__ import annotations

import re
import struct
import time
from bisect import bisect_left
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1
TOPIC_VERSION = "v1"
DEFAULT_PREFIX = "edge"

# Size limits: a message over its limit is dropped with a log line, never parsed.
MAX_JSON_BYTES = 1 << 20  # control messages (presence, state, desired, rpc)
MAX_CHUNK_BYTES = 4 << 20  # one artifact chunk's payload
MAX_SAMPLES_BYTES = 64 << 20  # the representative inputs given with one model version, packed
MAX_SAMPLES = 64

DEFAULT_CHUNK_BYTES = 2 << 20
MAX_FRAME_HEADER_BYTES = 16 << 10
ZSTD_LEVEL = 3  # compressed transfer: the controller's copies and the converters' reported transfer sizes
# An artifact travels zstd-compressed only when that saves at least this share. Dense float weights shrink ~7.5%, and
# on a LAN decompressing costs more than those bytes: bench/e2e.py measured a 50 MB model at 95 MiB/s compressed
# against ~200 MiB/s raw. Pruned and sparse models shrink 35-70%.
ZSTD_MIN_SAVING = 0.10


def worth_compressing(raw_bytes: int, compressed_bytes: int | None) -> bool:
    return compressed_bytes is not None and compressed_bytes <= (1 - ZSTD_MIN_SAVING) * raw_bytes


DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
_DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"

DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
ModelName = Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]
Sha256 = Annotated[str, Field(pattern=SHA256_PATTERN)]

ModelState = Literal["pending", "downloading", "verifying", "loading", "serving", "failed", "removed"]
ModelFormat = Literal["onnx", "tflite", "openvino"]


class ProtocolError(ValueError):
    """A payload that does not follow this contract; the receiver logs it and drops the message."""


def valid_device_id(device_id: str) -> bool:
    """True when the id is safe as one MQTT topic level and a file name."""
    return bool(_DEVICE_ID_RE.match(device_id))


def now() -> float:
    return time.time()


class Message(BaseModel):
    """Base of every JSON message: carries the schema version; unknown fields are ignored for forward compatibility."""

    model_config = ConfigDict(extra="ignore")
    v: int = SCHEMA_VERSION
    ts: float = Field(default_factory=now)

    def encode(self) -> bytes:
        return self.model_dump_json().encode()


class Problem(BaseModel):
    """An error as a value: a stable code for scripts and a message that tells the operator what to do."""

    code: str
    message: str


# --- presence -------------------------------------------------------------------------------------------------


class Presence(Message):
    """Retained on the device's presence topic; the broker publishes the offline copy as the last will."""

    kind: Literal["presence"] = "presence"
    device_id: DeviceId
    online: bool
    agent_version: str = ""
    hardware: dict[str, Any] = Field(default_factory=dict)
    api_url: str | None = None


class ControllerPresence(Message):
    kind: Literal["controller_presence"] = "controller_presence"
    online: bool
    version: str = ""


# --- desired state (controller -> device) and reported state (device -> controller) ------------------------------


Encoding = Literal["identity", "zstd"]


class Transfer(BaseModel):
    """A smaller encoding the controller holds for an artifact. The agent may fetch it instead of the raw bytes and
    decompresses while it verifies: the sha256 (and the signature) stay those of the raw artifact."""

    model_config = ConfigDict(extra="ignore")
    encoding: Literal["zstd"] = "zstd"
    size: int = Field(gt=0)  # bytes on the wire


class VariantRef(BaseModel):
    """An optimized variant of a desired model (int8, openvino, ...) that passed its accuracy threshold on the
    controller; the agent trials it beside the original and serves the fastest, never one slower than the original."""

    model_config = ConfigDict(extra="ignore")
    variant: str = Field(max_length=64)
    sha256: Sha256
    size: int = Field(ge=0)
    format: ModelFormat = "onnx"
    signature: dict[str, str] | None = None  # signs (name, version + "+" + variant, sha256, size, format)
    transfer: Transfer | None = None


class SampleRef(BaseModel):
    """Representative inputs given with a model version (`edgectl push --sample`): an .npz artifact of arrays named
    `sample<i>/<input name>`, fetched like a model; every decision on the device runs on them."""

    model_config = ConfigDict(extra="ignore")
    sha256: Sha256
    size: int = Field(ge=0, le=MAX_SAMPLES_BYTES)
    count: int = Field(default=1, ge=1, le=MAX_SAMPLES)


class DesiredModel(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: ModelName
    version: str
    sha256: Sha256
    size: int = Field(ge=0)
    format: ModelFormat = "onnx"
    backend: str | None = None  # operator override; None lets the agent choose
    # Ed25519 over (name, version, sha256, size, format): {"key_id", "value"}; see protocol/signing.py
    signature: dict[str, str] | None = None
    variants: list[VariantRef] = Field(default_factory=list, max_length=16)
    transfer: Transfer | None = None  # offered when zstd makes the artifact smaller
    samples: SampleRef | None = None
    # Shapes for synthetic inputs when no samples are given: input name -> dims (e.g. {"audio": [1, 16000]}).
    input_shapes: dict[str, list[Annotated[int, Field(ge=0, le=1 << 24)]]] = Field(default_factory=dict, max_length=64)

    def manifest(self) -> dict[str, Any]:
        """The signed fields (samples and shape hints only when given, so older signatures stay valid)."""
        signed: dict[str, Any] = {"name": self.name, "version": self.version, "sha256": self.sha256,
                                  "size": self.size, "format": self.format}  # fmt: skip
        if self.samples is not None:
            signed["samples"] = self.samples.sha256
        if self.input_shapes:
            signed["input_shapes"] = {k: list(v) for k, v in sorted(self.input_shapes.items())}
        return signed

    def variant_manifest(self, variant: VariantRef) -> dict[str, Any]:
        return {"name": self.name, "version": f"{self.version}+{variant.variant}", "sha256": variant.sha256,
                "size": variant.size, "format": variant.format}  # fmt: skip


class Desired(Message):
    """Retained: the full set of models a device should serve. A device that reconnects reads it again."""

    kind: Literal["desired"] = "desired"
    device_id: DeviceId
    generation: int = 0
    models: list[DesiredModel] = Field(default_factory=list)


class ServingInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")
    version: str
    sha256: Sha256  # the desired model's sha256 (its identity), also when an optimized variant of it serves
    backend: str
    variant: str | None = None  # e.g. "int8-static"; None = the original


class ModelStatus(BaseModel):
    """One model on a device: the target version's progress, and what is serving right now."""

    model_config = ConfigDict(extra="ignore")
    name: str
    version: str
    sha256: str
    state: ModelState
    progress: float = 0.0  # 0..1 while downloading
    backend: str | None = None
    reason: Problem | None = None
    serving: ServingInfo | None = None  # may be the previous version while the target loads
    previous: ServingInfo | None = None
    selection: dict[str, Any] | None = None  # backend choice: {backend, reason, cached, candidates: [...]}
    failover: dict[str, Any] | None = None  # run-time failover: {active, preferred, failed_over, reason, ...}


class DeviceState(Message):
    """Retained: what the device is doing with each model."""

    kind: Literal["state"] = "state"
    device_id: DeviceId
    generation: int = 0
    models: list[ModelStatus] = Field(default_factory=list)


# --- artifact transfer ---------------------------------------------------------------------------------------


class ArtifactRequest(Message):
    """Device asks for one byte range of an artifact; the controller answers on `reply_to` with a framed chunk."""

    kind: Literal["artifact_request"] = "artifact_request"
    request_id: str = Field(max_length=128)
    reply_to: str = Field(max_length=512)
    sha256: Sha256
    offset: int = Field(ge=0)
    length: int = Field(gt=0, le=MAX_CHUNK_BYTES)
    encoding: Encoding = "identity"  # "zstd": offset and length are in the compressed stream


class ChunkHeader(BaseModel):
    """Header of a framed artifact chunk; the raw bytes follow it in the same payload."""

    model_config = ConfigDict(extra="ignore")
    v: int = SCHEMA_VERSION
    request_id: str
    sha256: str
    offset: int = Field(ge=0)
    length: int = Field(ge=0)
    total: int = Field(ge=0)
    error: Problem | None = None


# --- request / response --------------------------------------------------------------------------------------


class RpcRequest(Message):
    """Controller -> device call. `id` is the correlation id echoed in the response sent to `reply_to`."""

    kind: Literal["rpc_request"] = "rpc_request"
    id: str = Field(max_length=128)
    reply_to: str = Field(max_length=512)
    method: str = Field(max_length=64)
    params: dict[str, Any] = Field(default_factory=dict)
    deadline: float | None = None  # epoch seconds; a device past it does not answer


class RpcResponse(Message):
    kind: Literal["rpc_response"] = "rpc_response"
    id: str
    ok: bool
    result: dict[str, Any] | None = None
    error: Problem | None = None


# --- topics ---------------------------------------------------------------------------------------------------

DEVICE_TOPIC_KINDS = (
    "presence",
    "state",
    "desired",
    "artifact/request",
    "artifact/chunk",
    "rpc/request",
    "rpc/response",
    "telemetry",
)

# QoS and retain flag per message kind. Chunks are QoS 1 so a lossy link resends instead of stalling a download.
QOS: dict[str, int] = {
    "presence": 1,
    "state": 1,
    "desired": 1,
    "artifact/request": 1,
    "artifact/chunk": 1,
    "rpc/request": 1,
    "rpc/response": 1,
    "telemetry": 1,
    "controller/presence": 1,
}
RETAINED = frozenset({"presence", "state", "desired", "controller/presence"})


class Topics:
    """Topic names under a configurable prefix: `{prefix}/v1/devices/{device_id}/{kind}`."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        prefix = prefix.strip("/")
        if not prefix or any(c in prefix for c in "+#"):
            raise ValueError(f"invalid topic prefix {prefix!r}: must be non-empty and contain no '+' or '#'")
        self.prefix = prefix
        self.root = f"{prefix}/{TOPIC_VERSION}"

    def device(self, device_id: str, kind: str) -> str:
        if not valid_device_id(device_id):
            raise ValueError(f"invalid device id {device_id!r}: use letters, digits, '_', '-', '.' (max 64)")
        if kind not in DEVICE_TOPIC_KINDS:
            raise ValueError(f"unknown topic kind {kind!r}")
        return f"{self.root}/devices/{device_id}/{kind}"

    def all_devices(self, kind: str) -> str:
        """Wildcard subscription for one kind across the fleet (controller side)."""
        return f"{self.root}/devices/+/{kind}"

    @property
    def controller_presence(self) -> str:
        return f"{self.root}/controller/presence"

    def parse(self, topic: str) -> tuple[str, str] | None:
        """Split a device topic into (device_id, kind); None when the topic is not one of ours."""
        head = f"{self.root}/devices/"
        if not topic.startswith(head):
            return None
        rest = topic[len(head) :]
        device_id, _, kind = rest.partition("/")
        if kind not in DEVICE_TOPIC_KINDS or not valid_device_id(device_id):
            return None
        return device_id, kind


# --- decoding and framing -------------------------------------------------------------------------------------

M = TypeVar("M", bound=Message)


def decode(model: type[M], payload: bytes) -> M:
    """Parse a JSON message, enforcing the size limit and schema version; raise ProtocolError with the reason."""
    if len(payload) > MAX_JSON_BYTES:
        raise ProtocolError(f"message of {len(payload)} bytes exceeds the {MAX_JSON_BYTES}-byte limit")
    try:
        msg = model.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "payload"
        raise ProtocolError(f"invalid {model.__name__}: {where}: {first.get('msg')}") from None
    if msg.v > SCHEMA_VERSION:
        raise ProtocolError(f"{model.__name__} schema version {msg.v} is newer than supported {SCHEMA_VERSION}")
    return msg


_FRAME_MAGIC = b"EF\x01"
_FRAME_PREFIX = struct.Struct(">3sI")


def encode_frame(header: ChunkHeader, data: bytes | memoryview) -> bytes:
    """Binary frame: magic, 4-byte header length, JSON header, raw bytes (no base64: chunks stay at wire speed)."""
    head = header.model_dump_json(exclude_none=True).encode()
    return b"".join((_FRAME_PREFIX.pack(_FRAME_MAGIC, len(head)), head, data))


def decode_frame(payload: bytes) -> tuple[ChunkHeader, memoryview]:
    if len(payload) < _FRAME_PREFIX.size:
        raise ProtocolError("frame shorter than its prefix")
    magic, head_len = _FRAME_PREFIX.unpack_from(payload)
    if magic != _FRAME_MAGIC:
        raise ProtocolError("not an artifact frame (bad magic)")
    if head_len > MAX_FRAME_HEADER_BYTES or _FRAME_PREFIX.size + head_len > len(payload):
        raise ProtocolError(f"frame header length {head_len} is out of bounds")
    start = _FRAME_PREFIX.size
    try:
        header = ChunkHeader.model_validate_json(payload[start : start + head_len])
    except ValidationError as exc:
        raise ProtocolError(f"invalid chunk header: {exc.errors()[0].get('msg')}") from None
    data = memoryview(payload)[start + head_len :]
    if header.error is None and len(data) != header.length:
        raise ProtocolError(f"chunk carries {len(data)} bytes, header says {header.length}")
    if len(data) > MAX_CHUNK_BYTES:
        raise ProtocolError(f"chunk of {len(data)} bytes exceeds the {MAX_CHUNK_BYTES}-byte limit")
    return header, data


# --- telemetry (device -> controller, one message per interval) ---------------------------------------------------

# Latency histogram buckets, shared by agent, controller and /metrics so histograms merge across windows and devices:
# bucket i counts latencies in (LATENCY_BOUNDS_MS[i-1], LATENCY_BOUNDS_MS[i]]; the last bucket is everything above
# LATENCY_BOUNDS_MS[-1]. Ten buckets per decade from 10 µs to 100 s (each bound 1.259x the previous, so a quantile
# read from the histogram is within 26% of the true value).
LATENCY_BUCKETS_PER_DECADE = 10
LATENCY_MIN_MS = 0.01
LATENCY_BOUNDS_MS: tuple[float, ...] = tuple(
    round(LATENCY_MIN_MS * 10 ** (i / LATENCY_BUCKETS_PER_DECADE), 6) for i in range(7 * LATENCY_BUCKETS_PER_DECADE + 1)
)
LATENCY_BUCKETS = len(LATENCY_BOUNDS_MS) + 1  # + overflow
MAX_TELEMETRY_MODELS = 32
MAX_TELEMETRY_OUTPUTS = 16
MAX_CLASS_BINS = 32


def latency_bucket(ms: float) -> int:
    """The bucket index for a latency in milliseconds (bisect on the shared bounds)."""
    return bisect_left(LATENCY_BOUNDS_MS, ms)


def histogram_quantile(counts: dict[int, int] | list[int], q: float, max_ms: float | None = None) -> float | None:
    """The q-quantile (0..1) of a bucketed histogram: the upper bound of the bucket holding it (capped at max_ms)."""
    items = sorted(counts.items()) if isinstance(counts, dict) else list(enumerate(counts))
    total = sum(c for _, c in items)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for index, count in items:
        seen += count
        if count and seen >= rank:
            bound = LATENCY_BOUNDS_MS[index] if index < len(LATENCY_BOUNDS_MS) else (max_ms or LATENCY_BOUNDS_MS[-1])
            return min(bound, max_ms) if max_ms else bound
    return max_ms


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
