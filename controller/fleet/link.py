"""The controller's MQTT side: tracks presence and state, publishes desired state, serves artifact chunks and makes
request/response calls to devices."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import uuid
from concurrent.futures import Future

from controller import __version__
from controller.db.database import Database
from controller.fleet.artifact_urls import ArtifactUrls
from controller.fleet.fair_queue import FairQueue
from controller.fleet.generations import Generations
from controller.fleet.liveness import LastSeen
from controller.registry.artifacts import ArtifactStore
from controller.registry.s3 import S3Artifacts
from controller.replicas.duties import ReplicaDuties
from controller.replicas.replication import Replication
from controller.telemetry.ingest import Done, TelemetryIngest
from controller.telemetry.subscriber import TelemetrySubscriber
from protocol import (
    QOS,
    ArtifactRequest,
    ChunkHeader,
    ControllerPresence,
    Desired,
    DesiredModel,
    DeviceState,
    Presence,
    Problem,
    ProtocolError,
    RpcRequest,
    RpcResponse,
    SampleRef,
    Topics,
    VariantRef,
    decode,
    encode_frame,
)
from protocol.errors import EdgeError
from protocol.link import BrokerAddress, MqttLink, MqttProtocol, Will
from protocol.signing import VARIANT_CONTEXT, Signer

log = logging.getLogger(__name__)


class DeviceUnreachable(EdgeError, RuntimeError):
    """The device did not answer in time (offline, or the broker is down)."""

    code = "device_unreachable"


class DeviceBusy(EdgeError, RuntimeError):
    """Too many calls to devices are waiting for their answers; the caller may retry shortly."""

    code = "devices_busy"


# A signed desired state is valid this long: the controller re-signs it whenever it publishes (on every change and
# when it connects), so only a state held back or replayed from long ago expires.
SIGNED_STATE_TTL_S = 30 * 86400.0
ALLOWED_FRESH_S = 2.0  # a replica trusts its copy of a device's allowed artifacts this long (another may recall one)
MAX_PENDING_CALLS = 256  # device calls awaited at once (each costs a future, not a thread)
DEFAULT_FETCH_RATE = 50.0  # HTTP downloads a fleet push starts per second, on average (see fetch_spread)


class Fleet(ReplicaDuties):
    def __init__(
        self,
        db: Database,
        artifacts: ArtifactStore,
        broker_url: str | BrokerAddress,
        *,
        prefix: str = "edge",
        protocol: MqttProtocol = "auto",
        chunk_workers: int = 2,
        telemetry: TelemetryIngest | None = None,
        signer: Signer | None = None,
        artifact_base: str | None = None,
        fetch_rate: float = DEFAULT_FETCH_RATE,
        replica_id: str | None = None,
        s3: S3Artifacts | None = None,
        url_key: bytes | None = None,
    ) -> None:
        self.db = db
        self.urls = ArtifactUrls(url_key or os.urandom(32))  # device-bound artifact URLs (fleet/artifact_urls.py)
        self.generations = Generations()  # a new generation for every signed change (fleet/generations.py)
        self.signer = signer
        self.s3 = s3  # artifacts in a bucket, fetched with presigned URLs (artifact_base is then the fallback)
        self.artifact_base = artifact_base.rstrip("/") if artifact_base else None  # {base}/{sha256}; None: MQTT only
        self.fetch_rate = fetch_rate  # HTTP downloads started per second across the fleet, on average
        self.telemetry = telemetry or TelemetryIngest(db)
        # any message refreshes its device's last seen; it and the leases repeat, so they need no ping per checkout
        self.last_seen = LastSeen(db.writer)
        self.artifacts = artifacts
        self.topics = Topics(prefix)
        # replicas (PostgreSQL): state, artifact requests and telemetry through shared subscriptions, each message to
        # one replica; presence and RPC answers to every replica (controller/replicas/replication.py)
        address = broker_url if isinstance(broker_url, BrokerAddress) else BrokerAddress.parse(broker_url)
        self.replication = Replication(db.writer, self.topics.root, replica_id, secret=address.password)
        self.replication.on_leader, self.replication.adopt = self._take_over, self._adopt
        self.replication.on_renamed = self._renamed
        self.telemetry.is_leader = self.replication.is_leader
        shared = self.replication.shared
        self._stopping = False
        self._calls: dict[str, Future[RpcResponse]] = {}
        self._pending_calls = threading.BoundedSemaphore(MAX_PENDING_CALLS)
        self._chunk_requests: FairQueue[ArtifactRequest] = FairQueue()
        self._allowed: dict[str, set[str]] = {}  # device -> artifact digests it may fetch
        self._allowed_at: dict[str, float] = {}  # device -> when its entry was read from the database (replicas)
        offline = ControllerPresence(online=False, version=__version__).encode()
        self.link = MqttLink(
            address,
            f"edge-controller-{uuid.uuid4().hex[:8]}",
            subscriptions=[
                (self.topics.all_devices("presence"), QOS["presence"]),
                (shared(self.topics.all_devices("state")), QOS["state"]),
                (shared(self.topics.all_devices("artifact/request")), QOS["artifact/request"]),
                (self.topics.all_devices("rpc/response"), QOS["rpc/response"]),
                # its own presence too: an offline it sent while the broker was dying is resent after the reconnect,
                # behind the new online (paho resends in-flight messages after on_connect), and is answered below
                (self.topics.controller_presence, 1),
            ],
            on_message=self._on_message,
            on_connected=self._on_connected,
            will=Will(self.topics.controller_presence, offline),
            protocol=protocol,
        )
        # telemetry has a connection of its own: a lean reader that batches (see controller/telemetry/subscriber.py). It
        # carries no will: a session it loses must not tell the whole fleet the controller went offline; when it is
        # lost for real, the link says so (_telemetry_lost) and says online again once it has resubscribed.
        self.telemetry_link = TelemetrySubscriber(
            self.link.address,
            self.replication.session_id() if self.replication.enabled else f"{self.link.client_id}-telemetry",
            shared(self.topics.all_devices("telemetry")),
            self._on_telemetry,
            on_subscribed=self._announce,
            on_lost=self._telemetry_lost,
            on_idle=self.telemetry.idle,
            clean_session=not self.replication.enabled,  # a replica's session outlives it, for another to drain
        )
        self._workers = [
            threading.Thread(target=self._serve_chunks, name=f"chunks-{i}", daemon=True) for i in range(chunk_workers)
        ]

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        if not self.replication.enabled:  # a replica starting beside others must not mark the fleet offline
            self.db.mark_all_offline()
        self.replication.start()
        for device_id in self.db.deployed_devices():
            self._allowed[device_id] = self._digests(device_id)
        if self.s3 is not None:  # uploads, if any, here: not on the MQTT thread that republishes on connect
            self.s3.prepare(set().union(*self._allowed.values()))
        for w in self._workers:
            w.start()
        self.telemetry.start()
        self.telemetry_link.start()
        self.link.start()

    def stop(self) -> None:
        self._stopping = True
        offline = ControllerPresence(online=False, version=__version__).encode()
        last = not self.replication.others_alive()  # the fleet's controller goes offline with the last replica
        self.link.stop(final=(self.topics.controller_presence, offline, 1, True) if last else None)
        self._chunk_requests.close()
        self.telemetry_link.stop()
        self.telemetry.stop()
        self.replication.stop()

    @property
    def connected(self) -> bool:
        return self.link.connected.is_set()

    def _on_connected(self) -> None:
        """(Re)publish everything retained: an embedded broker starts empty after a restart (the leader does)."""
        if self.replication.is_leader():
            for device_id in self.db.deployed_devices():
                self.publish_desired(device_id)
        self._announce()

    # -- desired state -------------------------------------------------------------------------------------------

    def _digests(self, device_id: str) -> set[str]:
        """Every artifact the device may fetch: what its desired state names, read from the registry."""
        variant_rows = self.db.deployed_variants(device_id)
        wanted = [_entry(m, backend, variant_rows.get(m.name, ())) for m, backend in self.db.desired_models(device_id)]
        return Desired(device_id=device_id, models=wanted).artifacts()

    def desired_model(
        self, model, backend: str | None, variant_rows=(), attempt: int = 0, device_id: str = ""
    ) -> DesiredModel:
        """The desired entry for a registered version and where `device_id` fetches each artifact, signed (with each
        variant) when a signing key is set."""
        entry = _entry(model, backend, variant_rows, attempt)
        fetched: list[DesiredModel | VariantRef] = [entry, *entry.variants]
        for ref in fetched:
            ref.transfer, ref.url = self.artifacts.transfer(ref.sha256), self.artifact_url(ref.sha256, device_id)
        if entry.samples is not None:
            entry.samples.url = self.artifact_url(entry.samples.sha256, device_id)
        entry.fetch_spread_s = self.fetch_spread() if self.artifact_base or self.s3 else 0.0
        if self.signer is not None:
            entry.signature = self.signer.sign(entry.manifest()).as_dict()
            for ref in entry.variants:
                ref.signature = self.signer.sign(entry.variant_manifest(ref), VARIANT_CONTEXT).as_dict()
        return entry

    def artifact_url(self, sha256: str, device_id: str) -> str | None:
        """Where a device GETs the artifact over HTTP: `{base}/{sha256}` bound to the device and an expiry (the
        controller's own endpoint by default), or a presigned URL of the bucket (falling back to the former)."""
        own = self.urls.sign(self.artifact_base, sha256, device_id) if self.artifact_base else None
        return self.s3.url(sha256, own) if self.s3 is not None else own

    def fetch_spread(self) -> float:
        """The window each device's HTTP download starts in at random: the fleet's size (devices with a deployment)
        over `fetch_rate`, to a tenth of a second (a small fleet does not wait at all)."""
        devices = max(1, len(self._allowed))  # the device being published may be new
        return min(3600.0, round(devices / self.fetch_rate, 1)) if self.fetch_rate > 0 else 0.0

    def allows(self, device_id: str, sha256: str) -> bool:
        """Whether the device's desired state names the artifact (what HTTP and the chunk path serve it). Replicas
        read it again from the database once it is ALLOWED_FRESH_S old: another may have deployed or recalled."""
        if self.replication.enabled and time.monotonic() - self._allowed_at.get(device_id, 0.0) > ALLOWED_FRESH_S:
            self._allowed[device_id] = self._digests(device_id)
            self._allowed_at[device_id] = time.monotonic()
        return sha256 in self._allowed.get(device_id, ())

    def publish_desired(self, device_id: str) -> Desired:
        device = self.db.get_device(device_id)
        generation = device["generation"] if device else 0
        wanted = self.db.desired_models(device_id)
        variant_rows = self.db.deployed_variants(device_id)
        attempts = self.db.deployment_attempts(device_id)
        desired = Desired(
            device_id=device_id,
            generation=generation,
            models=[
                self.desired_model(m, backend, variant_rows.get(m.name, ()), attempts.get(m.name, 0), device_id)
                for m, backend in wanted
            ],
        )
        if device and self.generations.needs_bump(device_id, desired):  # a change under one generation is replayable
            desired.generation = self.db.bump_generation(device_id)
        if self.signer is not None:  # the whole state: no replay of an older one, no unsigned "serve nothing"
            desired.expires = time.time() + SIGNED_STATE_TTL_S
            desired.signature = self.signer.sign_state(json.loads(desired.encode())).as_dict()
        self._allowed[device_id], self._allowed_at[device_id] = desired.artifacts(), time.monotonic()
        self.link.publish(self.topics.device(device_id, "desired"), desired.encode(), QOS["desired"], retain=True)
        self.generations.published(device_id, desired)
        return desired

    # -- incoming ------------------------------------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == self.topics.controller_presence:
            if not self._stopping:
                self._on_controller_presence(payload)
            return
        parsed = self.topics.parse(topic)
        if parsed is None:
            return
        device_id, kind = parsed
        if kind not in ("presence", "state"):  # those two record last seen themselves
            self.last_seen.saw((device_id,))
        try:
            if kind == "presence":
                self._on_presence(device_id, decode(Presence, payload))
            elif kind == "state":
                self._on_state(device_id, decode(DeviceState, payload))
            elif kind == "artifact/request":
                self._queue_chunk(device_id, decode(ArtifactRequest, payload))
            elif kind == "rpc/response":
                self._on_rpc_response(decode(RpcResponse, payload))
        except ProtocolError as exc:
            log.warning("dropped %s message from %s: %s", kind, device_id, exc)

    def _on_telemetry(self, batch: list[tuple[str, bytes]], done: Done | None = None) -> None:
        """From the telemetry subscriber: (topic, payload) pairs, stored in its thread once its socket is drained;
        `done` is called then (the subscriber acknowledges them to the broker)."""
        items = []
        for topic, payload in batch:
            parsed = self.topics.parse(topic)
            if parsed is not None and parsed[1] == "telemetry":
                items.append((parsed[0], payload))
        if items:
            self.last_seen.saw([device_id for device_id, _ in items])
        self.telemetry.submit_many(items, done)

    def _on_presence(self, device_id: str, presence: Presence) -> None:
        if presence.device_id != device_id:
            log.warning("dropped presence on %s's topic claiming to be %s", device_id, presence.device_id)
            return
        self.db.record_presence(device_id, presence.online, presence.hardware, presence.agent_version, presence.api_url)
        log.info("device %s is %s", device_id, "online" if presence.online else "offline")

    def _on_state(self, device_id: str, state: DeviceState) -> None:
        if state.device_id != device_id:
            return
        self.db.record_state(device_id, [m.model_dump() for m in state.models], state.ts)

    def _queue_chunk(self, device_id: str, request: ArtifactRequest) -> None:
        if not self._chunk_requests.put(device_id, request) and self._chunk_requests.dropped % 1000 == 1:
            log.warning(
                "%s has too many artifact requests queued; dropping (it will ask again; %d dropped so far)",
                device_id,
                self._chunk_requests.dropped,
            )

    def _serve_chunks(self) -> None:
        while (item := self._chunk_requests.get()) is not None:
            device_id, request = item
            try:
                self._serve_chunk(device_id, request)
            except Exception:
                log.exception("serving a chunk to %s failed", device_id)

    def _serve_chunk(self, device_id: str, req: ArtifactRequest) -> None:
        reply_to = self.topics.device(device_id, "artifact/chunk")
        if req.reply_to != reply_to:
            log.warning("dropped artifact request from %s: reply topic %r is not its own", device_id, req.reply_to)
            return
        header = ChunkHeader(request_id=req.request_id, sha256=req.sha256, offset=req.offset, length=0, total=0)
        data = b""
        if not self.allows(device_id, req.sha256) or not self.artifacts.has(req.sha256):
            header.error = Problem(
                code="not_deployed", message=f"artifact {req.sha256[:12]}… is not deployed to device {device_id}"
            )
        else:
            try:
                data, total = self.artifacts.read(req.sha256, req.offset, req.length, req.encoding)
                header.length, header.total = len(data), total
            except FileNotFoundError:  # has() found the raw artifact: only a compressed copy can be missing
                header.error = Problem(code="no_encoding", message=f"artifact {req.sha256[:12]}… has no zstd copy")
        self.link.publish(reply_to, encode_frame(header, data), QOS["artifact/chunk"])

    # -- request / response --------------------------------------------------------------------------------------

    def call(self, device_id: str, method: str, params: dict, timeout: float = 10.0) -> RpcResponse:
        """Send one request to a device and wait for its response (correlated by id in the body)."""
        future = self._send_call(device_id, method, params, timeout)
        try:
            return future.result(timeout=timeout)
        except TimeoutError:
            raise DeviceUnreachable(f"device {device_id} did not answer within {timeout:g}s") from None
        finally:
            future.cancel()  # no-op once answered; else frees its slot

    async def call_async(self, device_id: str, method: str, params: dict, timeout: float = 10.0) -> RpcResponse:
        """call() for the event loop: awaiting the answer holds no thread, so slow devices cannot starve the API."""
        future = self._send_call(device_id, method, params, timeout)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError:
            raise DeviceUnreachable(f"device {device_id} did not answer within {timeout:g}s") from None
        finally:
            future.cancel()

    def _send_call(self, device_id: str, method: str, params: dict, timeout: float) -> Future[RpcResponse]:
        """Publish the request; the future the response completes (it releases its slot and table entry when done)."""
        if not self.connected:
            raise DeviceUnreachable(f"the controller is not connected to the broker ({self.link.last_error})")
        if not self._pending_calls.acquire(blocking=False):
            raise DeviceBusy(f"{MAX_PENDING_CALLS} device calls are already waiting for answers; retry shortly")
        request_id = uuid.uuid4().hex
        reply_to = self.topics.device(device_id, "rpc/response")
        future: Future[RpcResponse] = Future()
        self._calls[request_id] = future

        def release(_: Future[RpcResponse]) -> None:
            self._calls.pop(request_id, None)
            self._pending_calls.release()

        future.add_done_callback(release)
        request = RpcRequest(
            id=request_id, reply_to=reply_to, method=method, params=params, deadline=time.time() + timeout
        )
        try:
            self.link.publish(
                self.topics.device(device_id, "rpc/request"),
                request.encode(),
                QOS["rpc/request"],
                response_topic=reply_to,
                correlation_id=request_id,
                expiry_s=max(1, int(timeout)),
            )
        except BaseException:
            future.cancel()
            raise
        return future

    def _on_rpc_response(self, response: RpcResponse) -> None:
        future = self._calls.get(response.id)
        if future is not None and not future.done():
            future.set_result(response)


def _entry(model, backend: str | None, variant_rows=(), attempt: int = 0) -> DesiredModel:
    """What a desired entry names for a registered version (its variants, samples, shape hints), not yet where to
    fetch them nor signed."""
    info = model.info or {}
    samples = info.get("samples")
    return DesiredModel(
        name=model.name,
        version=model.version,
        sha256=model.sha256,
        size=model.size,
        format=model.format,
        backend=backend,
        variants=[VariantRef(variant=v.variant, sha256=v.sha256, size=v.size, format=v.format) for v in variant_rows],
        samples=SampleRef(**{k: samples[k] for k in ("sha256", "size", "count")}) if samples else None,
        input_shapes=info.get("input_shapes") or {},
        attempt=attempt,
        task=info.get("task"),
        pinned=bool(info.get("pinned")),
    )
