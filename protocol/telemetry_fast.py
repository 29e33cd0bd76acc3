"""Telemetry decoded at fleet rate: msgspec structs with the constraints of protocol/telemetry.py's pydantic models.

The controller ingests a sample per device per second; pydantic spent ~12 us on each and msgspec ~5 us on the same
message. These structs are never looser than the pydantic models (tests compare both on generated and mutated
messages); a message they refuse goes to `decode_telemetry`'s second try with the pydantic model, which gives the
operator its usual reason or accepts what its lax mode allows (an int written as "5"), converted to these structs.
msgspec is imported only by the controller (its extra); the agent builds telemetry with the pydantic models.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

import msgspec

from protocol.errors import ProtocolError
from protocol.framing import decode
from protocol.histograms import LATENCY_BUCKETS
from protocol.limits import MAX_JSON_BYTES, SCHEMA_VERSION
from protocol.quality import CONFIDENCE_BINS, MAX_SKETCH, MAX_TELEMETRY_INPUTS, MAX_TRACKED_ELEMENTS
from protocol.telemetry import (
    MAX_CLASS_BINS,
    MAX_CLASS_COUNTS,
    MAX_CORES,
    MAX_COUNT,
    MAX_KEY_CHARS,
    MAX_TELEMETRY_MODELS,
    MAX_TELEMETRY_OUTPUTS,
    MAX_TEMPERATURE_SENSORS,
    Scores,
    Telemetry,
)

# msgspec matches with re.search, where `$` also matches before a final newline: `\Z` ends the text as pydantic's `$`
_KEY_PATTERN = r"^[^\x00-\x1f\x7f]*\Z"
_DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z"
_LARGEST = 1.7976931348623157e308  # the largest finite double: bounds reject what JSON spells as an infinity

Key = Annotated[str, msgspec.Meta(max_length=MAX_KEY_CHARS, pattern=_KEY_PATTERN)]
Version = Annotated[str, msgspec.Meta(max_length=64, pattern=_KEY_PATTERN)]
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
Finite = Annotated[float, msgspec.Meta(ge=-_LARGEST, le=_LARGEST)]
Bucket = Annotated[int, msgspec.Meta(ge=0, lt=LATENCY_BUCKETS)]
ClassIndex = Annotated[int, msgspec.Meta(ge=0, lt=MAX_CLASS_COUNTS)]
Weight = Annotated[float, msgspec.Meta(ge=0, le=_LARGEST)]
Floats = Annotated[list[Finite], msgspec.Meta(max_length=MAX_TRACKED_ELEMENTS)]
Sketch = Annotated[list[tuple[Finite, Weight]], msgspec.Meta(max_length=MAX_SKETCH)]


class FastElements(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    rows: Count = 0
    blocks: bool = False
    mean: Floats = []
    std: Floats = []


class FastInputStats(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    sampled: Count = 0
    elements: FastElements | None = None
    level: Sketch | None = None
    spread: Sketch | None = None


class FastOutputStats(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    sampled: Count = 0
    count: Count = 0
    mean: Finite = 0.0
    std: Finite = 0.0
    min: Finite | None = None
    max: Finite | None = None
    nan: Count = 0
    inf: Count = 0
    classes: Annotated[dict[Key, Count], msgspec.Meta(max_length=MAX_CLASS_BINS + 1)] | None = None
    class_counts: Annotated[list[tuple[ClassIndex, Count]], msgspec.Meta(max_length=MAX_CLASS_COUNTS)] | None = None
    scores: Scores | None = None
    top1_mean: Finite | None = None
    elements: FastElements | None = None
    top1_hist: Annotated[list[Count], msgspec.Meta(max_length=CONFIDENCE_BINS)] | None = None


class FastModelTelemetry(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    name: Key
    version: Version
    requests: Count = 0
    errors: Count = 0
    latency: Annotated[list[tuple[Bucket, Count]], msgspec.Meta(max_length=LATENCY_BUCKETS)] = []
    latency_sum_ms: Finite = 0.0
    latency_max_ms: Finite = 0.0
    outputs: Annotated[dict[Key, FastOutputStats], msgspec.Meta(max_length=MAX_TELEMETRY_OUTPUTS)] = {}
    inputs: Annotated[dict[Key, FastInputStats], msgspec.Meta(max_length=MAX_TELEMETRY_INPUTS)] = {}


class FastResources(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    cpu_percent: Finite | None = None
    cpu_per_core: Annotated[list[Finite], msgspec.Meta(max_length=MAX_CORES)] | None = None
    load1: Finite | None = None
    mem_percent: Finite | None = None
    mem_used_mb: Finite | None = None
    rss_mb: Finite | None = None
    disk_free_mb: Finite | None = None
    temperature_c: Finite | None = None
    temperatures: Annotated[dict[Key, Finite], msgspec.Meta(max_length=MAX_TEMPERATURE_SENSORS)] | None = None
    net_rx_bytes: Count | None = None
    net_tx_bytes: Count | None = None
    gpu_load_percent: Finite | None = None
    gpu_power_w: Finite | None = None


class FastTelemetry(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    v: Annotated[int, msgspec.Meta(le=SCHEMA_VERSION)] = SCHEMA_VERSION  # newer: pydantic's try names the version
    ts: Finite = msgspec.field(default_factory=time.time)
    kind: Literal["telemetry"] = "telemetry"
    device_id: Annotated[str, msgspec.Meta(pattern=_DEVICE_ID_PATTERN)]
    seq: Count = 0
    start: Finite = 0.0
    interval_s: Finite = 10.0
    models: Annotated[list[FastModelTelemetry], msgspec.Meta(max_length=MAX_TELEMETRY_MODELS)] = []
    resources: FastResources | None = None
    dropped: Count = 0


_DECODER = msgspec.json.Decoder(FastTelemetry)
_ENCODER = msgspec.json.Encoder()


def decode_telemetry(payload: bytes) -> FastTelemetry:
    """The validated sample; ProtocolError with pydantic's reason when the message is not a valid Telemetry."""
    if len(payload) > MAX_JSON_BYTES:
        raise ProtocolError(f"message of {len(payload)} bytes exceeds the {MAX_JSON_BYTES}-byte limit")
    try:
        return _DECODER.decode(payload)
    except msgspec.DecodeError:  # refused here: the pydantic model decides (reason, or a lax coercion it allows)
        lax = decode(Telemetry, payload).model_dump()
    try:
        return msgspec.convert(lax, FastTelemetry)
    except msgspec.ValidationError as exc:  # never seen in the tests: a gap between the two schemas, named
        raise ProtocolError(f"invalid Telemetry: {exc}") from None


def encode_telemetry(message: FastTelemetry) -> str:
    """The sample as stored: validated fields only (unknown ones dropped), defaults left out."""
    return _ENCODER.encode(message).decode()


def plain(struct: msgspec.Struct | None) -> dict[str, Any]:
    """A struct's fields as a dict without the unset (None) ones, as the API has always shown them."""
    if struct is None:
        return {}
    return {k: _nested(v) for k, v in msgspec.structs.asdict(struct).items() if v is not None}


def _nested(value: Any) -> Any:
    """A nested struct (or a dict of them) as plain dicts with every field, as pydantic dumps them."""
    if isinstance(value, msgspec.Struct):
        return {k: _nested(v) for k, v in msgspec.structs.asdict(value).items() if v is not None}
    if isinstance(value, dict) and value and isinstance(next(iter(value.values())), msgspec.Struct):
        return {k: _nested(v) for k, v in value.items()}
    return value
