"""Agent configuration: one validated model, read from TOML, overridden by EDGE_AGENT_<KEY> environment variables,
overridden in turn by command-line flags (file < env < flags)."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.api.http_server import Limits
from protocol import DEFAULT_CHUNK_BYTES, DEFAULT_PREFIX, MAX_CHUNK_BYTES, valid_device_id
from protocol.labels import MAX_LABELS, LabelError, check_label, parse_label
from protocol.link import BrokerAddress

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.9/3.10 devices: the backport, same API
    import tomli as tomllib

ENV_PREFIX = "EDGE_AGENT_"
ENV_CONFIG = "EDGE_AGENT_CONFIG"  # the config file's path (a flag, not a key)
SECRET_KEYS = frozenset({"password"})


PATH_SUFFIXES = ("_dir", "_file", "_path")  # backend_options keys whose values are paths


def absolute(path: str | Path) -> Path:
    """A path from the config, a variable or a flag, made absolute once, at start, against the directory the agent
    started in (`~` expanded): worker processes (the backend trial) run elsewhere, and must find the same files."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def is_loopback(host: str) -> bool:
    """Whether a bind address reaches this machine only ("" and 0.0.0.0 reach every interface)."""
    host = host.strip("[]").lower()
    return host == "localhost" or host == "::1" or host.startswith("127.")


class ConfigError(ValueError):
    """An invalid configuration; the message names the key, the value and what is allowed."""


def default_device_id() -> str:
    name = re.sub(r"[^A-Za-z0-9_.\-]", "-", socket.gethostname())[:64].strip("-.")
    return name or "edge-device"


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(default_factory=default_device_id)
    broker: str = "mqtt://127.0.0.1:1883"
    mqtt_protocol: Literal["auto", "5", "3.1.1"] = "auto"
    topic_prefix: str = DEFAULT_PREFIX
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None  # the broker password, read from this file (kept out of configs and logs)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    data_dir: Path = Path("/var/lib/edge-agent")
    api: str = "127.0.0.1:8080"
    # HOST:PORT of the v2 API over gRPC (KServe v2, what tritonclient.grpc speaks): off unless set; needs grpcio
    # (the `grpc` extra). Same token, limits and telemetry as the HTTP API.
    grpc: str | None = None
    # The v2 API's bounds: connections served at once (more get 503), seconds a client may take to send a request
    # (or stay idle between keep-alive requests), and body sizes (JSON bodies parse to several times their size).
    api_max_connections: int = Field(default=64, ge=1, le=4096)
    api_read_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    api_max_body_mb: float = Field(default=64.0, gt=0, le=4096)
    api_max_json_mb: float = Field(default=8.0, gt=0, le=4096)
    # A file holding the token clients must send (Authorization: Bearer ...) to every route but /v2/health/*; set it
    # whenever `api` is reachable from other machines.
    api_token_file: Path | None = None
    # Serve `api`/`grpc` on an address other machines reach without api_token_file: refused unless this is set (then
    # anyone who reaches it may run every model, capture its inputs and read the device's status).
    insecure: bool = False
    keep_versions: int = Field(default=3, ge=2, le=100)
    chunk_bytes: int = Field(default=DEFAULT_CHUNK_BYTES, ge=16 << 10, le=MAX_CHUNK_BYTES)
    download_window: int = Field(default=16, ge=1, le=64)
    request_timeout_s: float = Field(default=10.0, gt=0)
    # Download from the URL a desired state gives (controller or static server, with Range); off, or when that fails:
    # MQTT chunks. The timeout covers connecting and each wait for more bytes.
    http_downloads: bool = True
    http_timeout_s: float = Field(default=15.0, gt=0, le=600)
    backend: str | None = None
    backend_options: dict[str, Any] = Field(default_factory=dict)
    backend_trial: bool = True
    trial_budget_s: float = Field(default=3.0, gt=0, le=60)
    # A spare trial worker waits with the runtimes imported (deploys start at once); over this many MiB no more
    # spares are kept (targets/trial_spare.py). 0: none. Unset: the agent decides from its memory budget (a spare,
    # up to 384 MiB, only where ~96 MiB is at most 1/8 of the budget and free: agent/serving/spare.py).
    trial_spare_max_mb: float | None = Field(default=None, ge=0, le=65536)
    # The trial runs in a short-lived worker process: runtimes that lose never enter the agent's memory, and a
    # runtime that crashes natively fails its candidate instead of the agent.
    trial_isolated: bool = True
    # The memory the agent may use (MiB): unset, the limit of its memory cgroup (systemd MemoryMax, a container's), else
    # MemTotal less memory_reserve_mb. A version is loaded only if its measured footprint fits; least recently used
    # unpinned models are unloaded to make room and load again on their next request, which waits up to
    # memory_wait_s (then 503 with Retry-After). pinned_models stay loaded (agent/serving/eviction.py).
    memory_budget_mb: float | None = Field(default=None, ge=16, le=1 << 24)
    memory_reserve_mb: float = Field(default=256.0, ge=0, le=1 << 24)
    memory_wait_s: float = Field(default=30.0, gt=0, le=3600)
    pinned_models: list[str] = Field(default_factory=list)

    trusted_keys: list[str] = Field(default_factory=list)
    health_window_s: float = Field(default=30.0, ge=0, le=86400)
    rollback_max_errors: int = Field(default=3, ge=1)
    rollback_latency_pct: float = Field(default=50.0, gt=0)
    # Before a swap the new version answers copies of live requests beside the serving one for up to this long
    # (fewer seconds when shadow_pairs inputs arrive sooner); with thin traffic the model's samples stand in.
    shadow_window_s: float = Field(default=5.0, ge=0, le=600)
    shadow_pairs: int = Field(default=40, ge=4, le=10000)
    shadow_share: float = Field(default=1.0, gt=0, le=1)  # of live requests copied to the shadow
    # Real request inputs kept per model in memory (reservoir-sampled) for `edgectl capture` and re-selection on
    # live shapes: opt-in on the device (they may be people's data), 0 (the default) keeps none. Sent only when asked.
    capture_inputs: int = Field(default=0, ge=0, le=4096)
    capture_max_mb: float = Field(default=16.0, gt=0, le=4096)
    # How often the kept requests are checked for shapes the trial never timed (re-selection on them); 0: never.
    reselect_interval_s: float = Field(default=60.0, ge=0, le=86400)
    telemetry_interval_s: float = Field(default=10.0, ge=0.1, le=3600)
    telemetry_queue_mb: float = Field(default=16.0, gt=0, le=65536)
    telemetry_replay_rate: float = Field(default=20.0, gt=0, le=10000)
    telemetry_sample_every: int = Field(default=16, ge=1, le=1_000_000)
    telemetry_max_elements: int = Field(default=4096, ge=1, le=1 << 24)
    # amortized microseconds per request the output and input summaries may cost: the sampling thins out where one
    # summary costs more (agent/telemetry/stats.py); 0: no budget, one request in telemetry_sample_every is summarised
    telemetry_budget_us: float = Field(default=2.5, ge=0, le=1e6)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # the device's own labels (KEY = "VALUE"), sent with its hardware: what operators select devices by
    labels: dict[str, str] = Field(default_factory=dict, max_length=MAX_LABELS)

    @field_validator("trusted_keys")
    @classmethod
    def _trusted_keys(cls, value: list[str]) -> list[str]:
        import base64
        import binascii

        for key in value:
            try:
                raw = base64.b64decode(key, validate=True)
            except (binascii.Error, ValueError):
                raw = b""
            if len(raw) != 32:
                raise ValueError(
                    f"{key[:16]!r}… is not a base64 Ed25519 public key (as printed by edge-controller keygen)"
                )
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, text in value.items():
            try:
                check_label(key, text)
            except LabelError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, value: str) -> str:
        if not valid_device_id(value):
            raise ValueError("use 1-64 letters, digits, '_', '-', '.'; it is an MQTT topic level")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("broker")
    @classmethod
    def _broker(cls, value: str) -> str:
        try:
            BrokerAddress.parse(value)
        except ValueError:
            raise ValueError("expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]") from None
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _topic_prefix(cls, value: str) -> str:
        if not value.strip("/") or any(c in value for c in "+#\0"):
            raise ValueError("expected a non-empty MQTT topic prefix without '+', '#' or NUL, e.g. edge")
        return value

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _readable(cls, value: str | None) -> str | None:
        if value is not None and not os.access(absolute(value), os.R_OK):
            raise ValueError("expected a readable file (PEM)")
        return None if value is None else str(absolute(value))

    @field_validator("data_dir", "password_file", "api_token_file")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else absolute(value)

    @field_validator("backend_options")
    @classmethod
    def _absolute_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        """A backend's paths (tensorrt_cache_dir, ...): its trial worker runs in another working directory too."""
        paths = {k: str(absolute(v)) for k, v in value.items() if isinstance(v, str) and k.endswith(PATH_SUFFIXES)}
        return {**value, **paths}

    @field_validator("api")
    @classmethod
    def _api(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8080")
        return value

    @field_validator("grpc")
    @classmethod
    def _grpc(cls, value: str | None) -> str | None:
        return None if value is None else cls._api(value)

    def broker_address(self) -> BrokerAddress:
        """The broker's address with the credentials of `username` and `password` / `password_file` (ConfigError
        when the file cannot be read); its str() and repr() never show the password."""
        address = BrokerAddress.parse(self.broker)
        password = self.password
        if self.password_file is not None:
            try:
                password = self.password_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"password_file {self.password_file}: {exc.strerror or exc}") from None
        if self.username or password:
            user = self.username or address.username
            address = BrokerAddress(address.host, address.port, address.tls, user, password or address.password)
        return address

    def api_limits(self) -> Limits:
        mib = 1 << 20
        return Limits(
            self.api_max_connections, self.api_read_timeout_s, int(self.api_max_body_mb * mib),
            int(self.api_max_json_mb * mib),
        )  # fmt: skip

    def exposure_problem(self) -> str | None:
        """Why the inference APIs may not serve as configured (an address off loopback, no token), or None."""
        if self.api_token_file is not None or self.insecure:
            return None
        for key, bind in (("api", self.api), ("grpc", self.grpc)):
            if bind and not is_loopback(bind.rpartition(":")[0]):
                return (
                    f"refusing to serve the inference API on {bind} ({key}) without a token: anyone who reaches it "
                    "could run the models and read their inputs; set api_token_file, bind 127.0.0.1, or pass "
                    "--insecure"
                )
        return None

    def api_token(self) -> str | None:
        """The v2 API's token (api_token_file), or None: ConfigError when the file cannot be read or is empty."""
        if self.api_token_file is None:
            return None
        try:
            token = self.api_token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"api_token_file {self.api_token_file}: {exc.strerror or exc}") from None
        if not token:
            raise ConfigError(f"api_token_file {self.api_token_file} is empty")
        return token

    @property
    def api_host(self) -> str:
        return self.api.rpartition(":")[0]

    @property
    def api_port(self) -> int:
        return int(self.api.rpartition(":")[2])


def _describe(exc: ValidationError, values: dict[str, Any], sources: dict[str, str]) -> str:
    """One line: where the value came from, the key, the value (secrets masked) and what is allowed."""
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "config"
    top = str(err["loc"][0]) if err["loc"] else ""
    shown = values.get(top, "<missing>") if top else values
    if top in SECRET_KEYS:
        shown = "***"
    origin = f" (from {sources[top]})" if top in sources else ""
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(AgentConfig.model_fields)
        return f"invalid config{origin}: unknown key {key!r} = {shown!r}; allowed keys: {allowed}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"invalid config{origin}: {key} = {shown!r}: {msg}"


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """EDGE_AGENT_<KEY> variables as config values (empty ones are ignored; backend_options is JSON).
    Raises ConfigError for an EDGE_AGENT_ variable that names no key."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG or raw == "":
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in AgentConfig.model_fields:
            allowed = ", ".join(ENV_PREFIX + k.upper() for k in AgentConfig.model_fields)
            raise ConfigError(f"invalid config: unknown environment variable {name}={raw!r}; allowed: {allowed}")
        if key == "labels":  # EDGE_AGENT_LABELS="site=lab,row=3"
            try:
                values[key] = dict(parse_label(item) for item in raw.split(",") if item.strip())
            except LabelError as exc:
                raise ConfigError(f"invalid config (from {name}): {exc}") from None
        elif key == "backend_options":
            try:
                values[key] = json.loads(raw)
            except ValueError:
                message = f"invalid config (from {name}): backend_options = {raw!r}: expected a JSON object"
                raise ConfigError(message) from None
        else:
            values[key] = raw
    return values


def load_config(
    path: Path | None = None, overrides: dict[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> AgentConfig:
    """File values first, then EDGE_AGENT_<KEY> variables, then the non-None overrides (flags).
    Raises ConfigError with one clear line."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if path is not None:
        try:
            values = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not UTF-8 text") from None
        sources.update(dict.fromkeys(values, str(path)))
    env = env_overrides(environ)
    values.update(env)
    sources.update({key: ENV_PREFIX + key.upper() for key in env})
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    if isinstance(flags.get("labels"), dict):  # --label adds to (or overrides) the file's and the environment's
        flags["labels"] = {**(values.get("labels") or {}), **flags["labels"]}
    values.update(flags)
    sources.update(dict.fromkeys(flags, "command line"))
    try:
        return AgentConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, values, sources)) from None
