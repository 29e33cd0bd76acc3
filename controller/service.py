"""Composes the controller: database, artifact store, optional embedded broker, MQTT fleet link and HTTP API."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from controller.api.guard import default_allowed_hosts, is_loopback
from controller.broker.embedded import EmbeddedBroker, port_free
from controller.db.database import Database
from controller.fleet.artifact_urls import url_key
from controller.fleet.deployments import Deployments
from controller.fleet.link import Fleet
from controller.registry import model_check
from controller.registry.artifacts import ArtifactStore
from controller.registry.s3 import S3Artifacts
from controller.rollouts.service import Rollouts
from controller.telemetry.ingest import DEFAULT_DRIFT_THRESHOLD, DEFAULT_RETENTION_S, TelemetryIngest
from protocol import Topics
from protocol.link import BrokerAddress, MqttProtocol

log = logging.getLogger(__name__)


class ControllerStartError(RuntimeError):
    """The controller cannot start; the message says what to change."""


@dataclass
class ControllerSettings:
    data_dir: Path
    broker: str = "embedded"  # "embedded", "embedded:PORT" or mqtt://HOST:PORT
    db: str | None = None  # default sqlite:///DATA_DIR/controller.db
    http: str = "127.0.0.1:8400"
    topic_prefix: str = "edge"
    mqtt_protocol: MqttProtocol = "auto"
    telemetry_retention_s: float = DEFAULT_RETENTION_S  # telemetry older than this is deleted (0 keeps everything)
    drift_threshold: float = DEFAULT_DRIFT_THRESHOLD  # output-mean shift, in baseline std units, that flags drift
    metrics_max_devices: int = 1000  # devices with their own series in /metrics (bounds label cardinality)
    signing_key: Path | None = None  # Ed25519 PEM (edge-controller keygen): every desired model is signed with it
    token: str | None = None  # when set, the API (but health, docs and the dashboard page) needs `Bearer TOKEN`
    read_token: str | None = None  # a second token that may only read (GET/HEAD): dashboards, scrapers
    insecure: bool = False  # serve the API off loopback without a token (refused otherwise)
    allowed_hosts: tuple[str, ...] = ()  # Host names the API answers to besides localhost and IP literals
    broker_password_file: Path | None = None  # the controller's broker password (kept out of the URL and the logs)
    broker_users_file: Path | None = None  # the embedded broker's password file (mosquitto_passwd): no anonymous
    public_url: str | None = None  # how devices reach this HTTP API (the CLI defaults it from --http); None: MQTT only
    artifact_base_url: str | None = None  # devices GET {base}/{sha256} there instead of from the controller
    artifact_s3: str | None = None  # s3://BUCKET/PREFIX: artifacts put there, fetched by presigned URL
    s3_endpoint_url: str | None = None  # an S3-compatible store (MinIO, Ceph, R2); None: AWS
    artifact_url_expiry_s: int | None = None  # presigned URLs' lifetime (None: 7 days, SigV4's maximum)
    fetch_rate: float = 50.0  # HTTP downloads a fleet push starts per second on average (sets the random spread)
    replica_id: str | None = None  # PostgreSQL: this replica's name among several (default: host name + random)

    def __post_init__(self) -> None:
        """Relative paths resolved once, at start, against the directory the controller started in."""
        for name in ("data_dir", "signing_key", "broker_password_file", "broker_users_file"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, absolute(value))
        self.db = absolute_sqlite(self.db)

    @property
    def http_host(self) -> str:
        return self.http.rpartition(":")[0] or "127.0.0.1"

    @property
    def artifact_base(self) -> str | None:
        """Where devices fetch artifacts over HTTP: the configured base, else this controller's artifact endpoint at
        its public URL; None (artifacts travel over MQTT only) without either."""
        if self.artifact_base_url:
            return self.artifact_base_url
        return f"{self.public_url.rstrip('/')}/api/v1/artifacts" if self.public_url else None

    @property
    def http_port(self) -> int:
        port = self.http.rpartition(":")[2]
        if not port.isdigit():
            raise ControllerStartError(f"--http {self.http!r}: expected HOST:PORT")
        return int(port)


def absolute(path: str | Path) -> Path:
    """A path made absolute against the current directory (`~` expanded), without resolving symlinks."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def absolute_sqlite(url: str | None) -> str | None:
    """sqlite:///RELATIVE/PATH with its path made absolute; any other URL (an absolute path, memory, PostgreSQL) as
    given."""
    prefix = "sqlite:///"
    if url is None or not url.startswith(prefix):
        return url
    path, sep, query = url[len(prefix) :].partition("?")
    if not path or path.startswith(("/", ":memory:", "file:")):
        return url
    return f"{prefix}{absolute(path)}{sep}{query}"


def broker_address(url: str, password_file: Path | None = None) -> BrokerAddress:
    """The external broker's address, with the password read from `password_file` when one is given."""
    try:
        address = BrokerAddress.parse(url)
    except ValueError as exc:
        raise ControllerStartError(str(exc)) from None
    if password_file is None:
        return address
    try:
        password = Path(password_file).read_text().strip()
    except OSError as exc:
        raise ControllerStartError(f"cannot read --broker-password-file {password_file}: {exc.strerror}") from None
    if not password:
        raise ControllerStartError(f"--broker-password-file {password_file} is empty")
    if not address.username:
        raise ControllerStartError("--broker-password-file needs a user name in the URL: mqtts://USER@HOST:PORT")
    return dataclasses.replace(address, password=password)


def parse_embedded(broker: str) -> int | None:
    """Port of an `embedded[:PORT]` broker setting, or None for an external broker URL."""
    if broker == "embedded":
        return 1883
    if broker.startswith("embedded:"):
        port = broker.split(":", 1)[1]
        if not port.isdigit():
            raise ControllerStartError(f"--broker {broker!r}: expected embedded:PORT")
        return int(port)
    return None


class Controller:
    def __init__(self, settings: ControllerSettings) -> None:
        self.settings = settings
        self.signer = None
        if settings.signing_key is not None:
            from protocol.signing import SignatureError, Signer

            try:
                self.signer = Signer.load(Path(settings.signing_key))
            except SignatureError as exc:
                raise ControllerStartError(f"--signing-key: {exc}") from None
            log.info("signing deployments with key %s", self.signer.key_id)
        if settings.token is not None and not settings.token.strip():
            raise ControllerStartError("the API token is empty; put a non-empty token in the token file")
        if settings.read_token is not None and not settings.read_token.strip():
            raise ControllerStartError("the read-only API token is empty; put a non-empty token in its file")
        self._check_exposure(settings)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.artifacts = ArtifactStore(settings.data_dir / "artifacts")
        s3 = S3Artifacts.from_settings(settings, self.artifacts)  # None without --artifact-s3
        self.db = Database(settings.db or f"sqlite:///{settings.data_dir / 'controller.db'}")
        self.broker: EmbeddedBroker | None = None
        embedded_port = parse_embedded(settings.broker)
        protocol = settings.mqtt_protocol
        if embedded_port is not None:
            root = Topics(settings.topic_prefix).root
            # without a users file: anonymous, each client confined to its client id's topics (broker/embedded_acl.py)
            self.broker = EmbeddedBroker(
                "127.0.0.1", embedded_port, settings.broker_users_file, root, confine_anonymous=True
            )
            address = self.broker.address
            protocol = "3.1.1"
        else:
            address = broker_address(settings.broker, settings.broker_password_file)
        self.broker_url = str(address)  # logged and shown in systemd's status: never with credentials
        self.telemetry = TelemetryIngest(
            self.db, retention_s=settings.telemetry_retention_s, drift_threshold=settings.drift_threshold
        )
        self.fleet = Fleet(
            self.db,
            self.artifacts,
            address,
            prefix=settings.topic_prefix,
            protocol=protocol,
            telemetry=self.telemetry,
            signer=self.signer,
            artifact_base=settings.artifact_base,
            fetch_rate=settings.fetch_rate,
            replica_id=settings.replica_id,
            s3=s3,
            url_key=url_key(None if self.broker else address.password, settings.data_dir),
        )
        self.rollouts = Rollouts(
            self.db, Deployments(self.db, self.fleet), owner=self.fleet.replication.replica_id,
            disk_free_mb=self._disk_free_mb, quality=self.telemetry.quality,
        )  # fmt: skip
        if s3 is not None:
            log.info(s3.describe(settings.artifact_base))
        elif settings.artifact_base:
            log.info(
                "devices fetch artifacts over HTTP from %s/<sha256> (MQTT when they cannot)", settings.artifact_base
            )
        else:
            log.info("devices fetch artifacts over MQTT only (no --public-url or --artifact-base-url)")

    def _disk_free_mb(self, device_id: str) -> float | None:
        """The device's free disk as its newest telemetry said (None when this replica has not seen any)."""
        summary = self.fleet.telemetry.device_summary(device_id) or {}
        return (summary.get("resources") or {}).get("disk_free_mb")

    def app(self):
        from controller.api.app import create_app

        return create_app(
            self.db,
            self.artifacts,
            self.fleet,
            metrics_max_devices=self.settings.metrics_max_devices,
            token=self.settings.token.strip() if self.settings.token else None,
            work_dir=self.settings.data_dir,
            read_token=self.settings.read_token.strip() if self.settings.read_token else None,
            rollouts=self.rollouts,
            allowed_hosts=default_allowed_hosts(
                self.settings.http_host,
                (*self.settings.allowed_hosts, urlsplit(self.settings.public_url or "").hostname or ""),
            ),
        )

    @staticmethod
    def _check_exposure(settings: ControllerSettings) -> None:
        """Refuse an API reachable from the network without a token, unless `insecure` says so (then warn loudly)."""
        if is_loopback(settings.http_host) or (settings.token and settings.token.strip()):
            return
        if not settings.insecure:
            raise ControllerStartError(
                f"refusing to serve the API on {settings.http} without a token: anyone who can reach it could deploy "
                "models; give --token-file (or EDGE_CONTROLLER_TOKEN), bind 127.0.0.1, or pass --insecure"
            )
        log.warning(
            "INSECURE: the API on %s has no token; anyone who can reach it can deploy models and roll devices back "
            "(--insecure)",
            settings.http,
        )

    def start_messaging(self) -> None:
        if not port_free(self.settings.http_host, self.settings.http_port):
            raise ControllerStartError(f"cannot serve HTTP: {self.settings.http} is already in use (use --http)")
        if self.broker:
            self.broker.start()
        self.fleet.start()
        self.rollouts.start()
        model_check.enable_spare()  # uploads are checked without waiting for a fresh Python to import onnx

    def stop(self) -> None:
        model_check.disable_spare()
        self.rollouts.stop()
        self.fleet.stop()
        if self.broker:
            self.broker.stop()
        self.db.close()


GC_GEN0_THRESHOLD = 50_000  # allocations between young collections (CPython's default: 700)


def tune_gc() -> None:
    """Fewer, cheaper garbage collections for the daemon: what start-up built (modules, the app, the tables) moves out
    of the collector's way, and young collections run every 50,000 allocations instead of 700. Each telemetry sample
    allocates a few dozen objects; with the defaults, collections took half of the CPU its decoding cost."""
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


class BackgroundHttp:
    """The controller's HTTP API served by uvicorn on a thread of this process; stop() ends it."""

    def __init__(self, controller: Controller, start_timeout: float = 10.0) -> None:
        import threading
        import time

        import uvicorn

        from controller.api.server import QuietServer

        settings = controller.settings
        config = uvicorn.Config(
            controller.app(), host=settings.http_host, port=settings.http_port, log_level="warning", access_log=False
        )
        self.server = QuietServer(config)
        self.thread = threading.Thread(target=self.server.run, name="controller-http", daemon=True)
        self.thread.start()
        self.url = f"http://{settings.http_host}:{settings.http_port}"
        deadline = time.monotonic() + start_timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                self.stop()
                raise ControllerStartError(f"the controller's HTTP API did not start on {settings.http}")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(timeout=10)


class BackgroundController:
    """A whole controller in this process (demo and tests): messaging, then HTTP on a thread."""

    def __init__(self, settings: ControllerSettings) -> None:
        self.controller = Controller(settings)
        self.controller.start_messaging()
        try:
            self.http = BackgroundHttp(self.controller)
        except ControllerStartError:
            self.controller.stop()
            raise
        self.url = self.http.url

    def stop(self) -> None:
        self.http.stop()
        self.controller.stop()
