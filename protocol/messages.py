"""The JSON messages of the contract: presence, desired and reported state, artifact requests and RPC; both sides
validate with these models, and unknown fields are ignored for forward compatibility."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from protocol.identifiers import DeviceId, ModelName, Sha256
from protocol.limits import MAX_CHUNK_BYTES, MAX_SAMPLES, MAX_SAMPLES_BYTES, SCHEMA_VERSION
from protocol.status import Failover, Hardware, Selection, Shadow

ModelState = Literal["pending", "downloading", "verifying", "loading", "checking", "serving", "failed", "removed"]
ModelFormat = Literal["onnx", "tflite", "openvino"]
Encoding = Literal["identity", "zstd"]


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
    # the probe as sent: the controller stores it as it is (JSON); `hardware_info` is the typed view
    hardware: dict[str, Any] = Field(default_factory=dict)
    api_url: str | None = None

    @property
    def hardware_info(self) -> Hardware:
        return Hardware.model_validate(self.hardware)


class ControllerPresence(Message):
    kind: Literal["controller_presence"] = "controller_presence"
    online: bool
    version: str = ""


# --- desired state (controller -> device) ------------------------------------------------------------------------


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
    url: str | None = Field(default=None, max_length=2048)  # where to GET the raw bytes over HTTP(S); see DesiredModel


class SampleRef(BaseModel):
    """Representative inputs given with a model version (`edgectl push --sample`): an .npz artifact of arrays named
    `sample<i>/<input name>`, fetched like a model; every decision on the device runs on them."""

    model_config = ConfigDict(extra="ignore")
    sha256: Sha256
    size: int = Field(ge=0, le=MAX_SAMPLES_BYTES)
    count: int = Field(default=1, ge=1, le=MAX_SAMPLES)
    url: str | None = Field(default=None, max_length=2048)  # where to GET them over HTTP(S); see DesiredModel


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
    # Each explicit deploy of a version (push, rollback --to) is a new attempt: a version that failed or was rolled
    # back is tried again only for a higher attempt, never because some other part of the desired state changed.
    attempt: int = Field(default=0, ge=0)
    # Where to GET the raw artifact over HTTP(S) (Range-resumable; the sha256 above is checked as always): the
    # controller's /api/v1/artifacts/<sha256> or `{artifact base URL}/<sha256>`. None, or unreachable: MQTT chunks.
    url: str | None = Field(default=None, max_length=2048)
    # Before an HTTP download the agent waits a random 0..fetch_spread_s seconds, so a fleet push does not stampede
    # the HTTP server (the controller sizes it to the fleet).
    fetch_spread_s: float = Field(default=0.0, ge=0, le=3600)
    # What the model's outputs are, declared at push (`edgectl push --task`): "classifier" (every float output's last
    # axis is class scores, whatever its rank: the class mix is counted), "regression" (never), None: the agent
    # detects it from the shape (2-D float outputs of 2..1000 columns). Only the quality statistics read it.
    task: Literal["classifier", "regression"] | None = None
    # Kept in memory whatever the budget (`edgectl push --pin`): the agent's eviction never unloads a pinned model,
    # as with its config's pinned_models. Not signed; older agents ignore it.
    pinned: bool = False

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

    def artifacts(self) -> set[str]:
        """The digests this entry lets a device fetch and keep: the model, each variant, its samples."""
        found = {self.sha256, *(v.sha256 for v in self.variants)}
        if self.samples is not None:
            found.add(self.samples.sha256)
        return found


class Desired(Message):
    """Retained: the full set of models a device should serve. A device that reconnects reads it again."""

    kind: Literal["desired"] = "desired"
    device_id: DeviceId
    generation: int = 0
    models: list[DesiredModel] = Field(default_factory=list)
    # Signed states (when the controller has a key): valid until `expires` (unix time; 0: no expiry), and the
    # Ed25519 signature over every other field (protocol.signing.canonical_state): {"key_id", "value"}.
    expires: float = 0.0
    signature: dict[str, str] | None = None

    def artifacts(self) -> set[str]:
        """Every artifact the state names (models, variants, samples): what the controller serves the device, and
        what the device's garbage collection keeps."""
        found: set[str] = set()
        for model in self.models:
            found |= model.artifacts()
        return found


# --- reported state (device -> controller) -----------------------------------------------------------------------


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
    selection: Selection | None = None  # backend choice: the winner, why, the candidates and variants tried
    failover: Failover | None = None  # run-time failover: what serves instead of the preferred backend, and why
    shadow: Shadow | None = None  # the pre-swap check beside the serving version
    attempt: int = 0  # the desired model's attempt this entry reports on (see DesiredModel.attempt)


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
