"""The agent: serves models from disk at once, then follows the controller's desired state over MQTT, deploying each
new version beside the old one and swapping only when it is verified, loaded and warm."""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from agent import __version__
from agent.config import AgentConfig
from agent.fetcher import ArtifactFetcher, FetchCancelled, FetchError
from agent.health import HealthWatch, latency_regression, nonfinite_output
from agent.serving import LoadedModel, ModelTable
from agent.store import Installed, ModelStore, VerifyError
from agent.telemetry import Recorder
from agent.telemetry_publisher import TelemetryPublisher
from agent.variants import Artifact, Contest, Entrant, describe, p50_ms
from daemon.systemd_notify import Notifier
from protocol import (
    QOS,
    ControllerPresence,
    Desired,
    DesiredModel,
    DeviceState,
    ModelStatus,
    Presence,
    Problem,
    ProtocolError,
    RpcRequest,
    RpcResponse,
    ServingInfo,
    Topics,
    decode,
)
from protocol.link import BrokerAddress, MqttLink, TlsFiles, Will
from protocol.signing import SignatureError, Verifier
from protocol.tensors import InputError, decode_tensor, encode_tensor
from targets.base import BackendError
from targets.failover import FailoverBackend
from targets.inputs import Inputs, SampleError, unpack_samples
from targets.probe import probe
from targets.selection import candidates, load_candidate, select_backend

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.25
DRAIN_TIMEOUT_S = 10.0  # in-flight inferences get this long on shutdown (the unit's TimeoutStopSec is 20 s)
BUSY_STATES = ("pending", "downloading", "verifying", "loading")


class _Inflight:
    """Counts inferences running now, so shutdown can wait for them to finish."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = threading.Condition()

    def __enter__(self) -> None:
        with self._idle:
            self._count += 1

    def __exit__(self, *exc) -> None:
        with self._idle:
            self._count -= 1
            if self._count == 0:
                self._idle.notify_all()

    @property
    def count(self) -> int:
        return self._count

    def drain(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._count == 0, timeout)


class _TrackedModel:
    """A LoadedModel whose infer() calls are counted; everything else is the model's."""

    __slots__ = ("_model", "_inflight")

    def __init__(self, model: LoadedModel, inflight: _Inflight) -> None:
        self._model = model
        self._inflight = inflight

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def infer(self, arrays):
        with self._inflight:
            return self._model.infer(arrays)


class _TrackedTable(ModelTable):
    """The serving table, handing out models whose inferences shutdown waits for."""

    def __init__(self) -> None:
        super().__init__()
        self.inflight = _Inflight()

    def get(self, name: str):  # type: ignore[override]
        model = super().get(name)
        return _TrackedModel(model, self.inflight) if model is not None else None


class Unhealthy(RuntimeError):
    """A loaded version that must not replace the serving one; `code` goes into the status."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Agent:
    """Owns the store, the serving table, the MQTT link, the inference API and the deploy worker."""

    def __init__(self, config: AgentConfig, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier({})
        self.topics = Topics(config.topic_prefix)
        self.store = ModelStore(Path(config.data_dir) / "store")
        self.table = _TrackedTable()
        self._ready_sent = False
        self.status: dict[str, ModelStatus] = {}
        self.generation = 0
        self.hardware = probe()
        self._desired: queue.Queue[Desired | None] = queue.Queue()
        self._cancel = threading.Event()
        self._stop = threading.Event()
        self._state_lock = threading.Lock()
        self._last_progress = 0.0
        self._rpc_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rpc")
        self.link = self._make_link()
        self.fetcher = ArtifactFetcher(
            self.link.publish,
            self.topics,
            config.device_id,
            self.store,
            connected=self.link.connected,
            chunk_bytes=config.chunk_bytes,
            window=config.download_window,
            request_timeout=config.request_timeout_s,
        )
        self.controller_online = threading.Event()  # the controller's retained presence says online
        self.recorder = Recorder(config.telemetry_sample_every, config.telemetry_max_elements)
        self.telemetry = TelemetryPublisher(
            config.device_id,
            self._topic("telemetry"),
            self.recorder,
            self.link,
            Path(config.data_dir) / "telemetry",
            interval_s=config.telemetry_interval_s,
            queue_bytes=int(config.telemetry_queue_mb * (1 << 20)),
            replay_rate=config.telemetry_replay_rate,
            data_dir=Path(config.data_dir),
            ready=self.controller_online.is_set,
        )
        self.verifier = Verifier(config.trusted_keys) if config.trusted_keys else None
        self._variant_errors: dict[tuple[str, str], str] = {}  # (model sha256, variant) -> why it was left out
        self._standby: dict[str, LoadedModel] = {}  # the version a fresh swap replaced, kept for instant rollback
        self._swap_lock = threading.RLock()  # deploy worker and health monitor both swap versions
        self.api = None
        self._worker = threading.Thread(target=self._deploy_loop, name="deploy", daemon=True)
        self._monitor = threading.Thread(target=self._health_loop, name="health", daemon=True)

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Serve what is on disk first (no controller needed), then open the API and connect."""
        from agent.inference_api import InferenceServer

        self.restore_from_disk()
        self.api = InferenceServer(self.table, self.config.api_host, self.config.api_port)
        self.api.start()
        self._worker.start()
        self._monitor.start()
        if len(self.table):
            self.mark_ready()  # serving from disk: ready before the broker answers
        self.telemetry.start()
        self.link.start()
        log.info("agent %s serving %d model(s); API at %s", self.config.device_id, len(self.table), self.api.url)

    def stop(self, drain_timeout: float = DRAIN_TIMEOUT_S) -> None:
        """Stop accepting requests, let in-flight inferences finish, then publish offline presence and disconnect."""
        self._stop.set()
        self._cancel.set()
        self._desired.put(None)
        if self.api:
            self.api.stop()
        inflight = self.table.inflight.count
        if inflight:
            log.info("waiting up to %.0fs for %d in-flight inference(s)", drain_timeout, inflight)
        if not self.table.inflight.drain(drain_timeout):
            log.warning("%d inference(s) still running after %.0fs; stopping anyway", inflight, drain_timeout)
        self._rpc_pool.shutdown(wait=True, cancel_futures=True)
        self.telemetry.stop()  # the window in memory goes to the disk queue; replayed after the next start
        offline = Presence(device_id=self.config.device_id, online=False, agent_version=__version__)
        self.link.stop(final=(self._topic("presence"), offline.encode(), QOS["presence"], True))
        self._worker.join(timeout=5)
        log.info("agent %s stopped", self.config.device_id)

    # -- supervision (systemd readiness, status and watchdog) ----------------------------------------------------

    def mark_ready(self) -> None:
        """READY=1 once: when models from disk are serving or the broker answered, whichever comes first."""
        with self._state_lock:
            if self._ready_sent:
                return
            self._ready_sent = True
        self.notifier.ready(self.status_line())

    @property
    def ready_sent(self) -> bool:
        return self._ready_sent

    def health(self, lock_timeout: float = 5.0) -> str | None:
        """None when the agent's threads are alive and its state lock is free; else what is wrong (no watchdog ping)."""
        if self._stop.is_set():
            return None
        if not self._state_lock.acquire(timeout=lock_timeout):
            return f"state lock held for over {lock_timeout:.0f}s"
        self._state_lock.release()
        if self._worker.ident is not None and not self._worker.is_alive():
            return "deploy worker thread died"
        network = getattr(getattr(self.link, "_client", None), "_thread", None)
        if network is not None and not network.is_alive():
            return "MQTT network thread died"
        api_thread = getattr(self.api, "_thread", None)
        if api_thread is not None and not api_thread.is_alive():
            return "inference API thread died"
        return None

    def status_line(self) -> str:
        """What the agent is doing, for systemd's STATUS= (shown by `systemctl status`)."""
        n = len(self.table)
        parts = [f"serving {n} model{'' if n == 1 else 's'}"]
        if self.link.connected.is_set():
            parts.append(f"connected to {self.link.address}")
        else:
            error = self.link.last_error
            parts.append(f"broker {self.link.address} unreachable" + (f" ({error})" if error else ""))
        with self._state_lock:
            statuses = list(self.status.values())
        for entry in statuses:
            if entry.state == "downloading":
                parts.append(f"downloading {entry.name} {entry.version} {int(entry.progress * 100)}%")
            elif entry.state in BUSY_STATES:
                parts.append(f"{entry.state} {entry.name} {entry.version}")
            elif entry.state == "failed":
                parts.append(f"{entry.name} {entry.version} failed")
        return "; ".join(parts)

    def _topic(self, kind: str) -> str:
        return self.topics.device(self.config.device_id, kind)

    def _make_link(self) -> MqttLink:
        cfg = self.config
        address = BrokerAddress.parse(cfg.broker)
        if cfg.username:
            address = BrokerAddress(address.host, address.port, address.tls, cfg.username, cfg.password)
        will = Presence(device_id=cfg.device_id, online=False, agent_version=__version__)
        return MqttLink(
            address,
            f"edge-agent-{cfg.device_id}",
            subscriptions=[
                (self._topic("desired"), QOS["desired"]),
                (self._topic("artifact/chunk"), QOS["artifact/chunk"]),
                (self._topic("rpc/request"), QOS["rpc/request"]),
                (self.topics.controller_presence, QOS["controller/presence"]),
            ],
            on_message=self._on_message,
            on_connected=self._on_connected,
            will=Will(self._topic("presence"), will.encode(), QOS["presence"], True),
            protocol=cfg.mqtt_protocol,
            tls=TlsFiles(cfg.ca_file, cfg.cert_file, cfg.key_file) if cfg.ca_file or cfg.cert_file else None,
        )

    # -- MQTT ----------------------------------------------------------------------------------------------------

    def _on_connected(self) -> None:
        self.controller_online.clear()  # until the retained presence (re)arrives: the broker may have restarted
        self.mark_ready()
        api_url = self.api.url if self.api else None
        presence = Presence(
            device_id=self.config.device_id,
            online=True,
            agent_version=__version__,
            hardware=self.hardware,
            api_url=api_url,
        )
        self.link.publish(self._topic("presence"), presence.encode(), QOS["presence"], retain=True)
        self.publish_state()
        self.fetcher.on_reconnect()
        self.telemetry.on_connected()

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == self.topics.controller_presence:
            self._on_controller_presence(payload)
            return
        parsed = self.topics.parse(topic)
        if parsed is None or parsed[0] != self.config.device_id:
            return
        kind = parsed[1]
        try:
            if kind == "artifact/chunk":
                self.fetcher.handle_chunk(payload)
            elif kind == "desired":
                self._on_desired(decode(Desired, payload))
            elif kind == "rpc/request":
                if self._stop.is_set():
                    return
                request = decode(RpcRequest, payload)
                self._rpc_pool.submit(self._answer_rpc, request)
        except ProtocolError as exc:
            log.warning("dropped %s message: %s", kind, exc)

    def _on_controller_presence(self, payload: bytes) -> None:
        """Telemetry goes out only while the controller is online (its retained presence, or its will, says so);
        otherwise samples wait in the disk queue, and are replayed when it comes back."""
        try:
            online = decode(ControllerPresence, payload).online if payload else False
        except ProtocolError as exc:
            log.warning("dropped controller presence: %s", exc)
            return
        if online and not self.controller_online.is_set():
            self.controller_online.set()
            self.telemetry.on_connected()
        elif not online:
            self.controller_online.clear()

    def _on_desired(self, desired: Desired) -> None:
        if desired.device_id != self.config.device_id:
            log.warning("dropped desired state addressed to %s", desired.device_id)
            return
        self._cancel.set()  # a newer desired state supersedes a download in progress
        self._desired.put(desired)

    # -- status --------------------------------------------------------------------------------------------------

    def publish_state(self) -> None:
        with self._state_lock:
            state = DeviceState(
                device_id=self.config.device_id, generation=self.generation, models=list(self.status.values())
            )
        if self.link.connected.is_set():
            self.link.publish(self._topic("state"), state.encode(), QOS["state"], retain=True)

    def _set_status(self, name: str, **changes) -> None:
        with self._state_lock:
            current = self.status.get(name)
            if current is None:
                return
            self.status[name] = current.model_copy(update=changes)
        self.publish_state()

    def _serving_info(self, name: str) -> tuple[ServingInfo | None, ServingInfo | None]:
        rec = self.store.records.get(name)
        loaded = self.table.get(name)
        serving = (
            ServingInfo(
                version=loaded.version, sha256=loaded.sha256, backend=loaded.backend.label, variant=loaded.variant
            )
            if loaded
            else None
        )
        prev = rec.previous if rec else None
        previous = (
            ServingInfo(version=prev.version, sha256=prev.identity, backend=prev.backend or "", variant=prev.variant)
            if prev
            else None
        )
        return serving, previous

    # -- deploying -----------------------------------------------------------------------------------------------

    def restore_from_disk(self) -> None:
        """Serve each model's last good version from the store; fall back to older verified versions."""
        for name, rec in list(self.store.records.items()):
            for candidate in ([rec.serving] if rec.serving else []) + rec.history:
                if not self.store.verify(candidate.sha256):
                    log.error("stored %s %s fails its sha256 check; not serving it", name, candidate.version)
                    continue
                try:
                    samples = self._stored_samples(candidate.samples)
                    model, selection = self._load(
                        name, candidate.version, candidate.sha256, candidate.format, None, samples,
                        candidate.input_shapes,
                    )  # fmt: skip
                    model = replace(
                        model, sha256=candidate.identity, artifact_sha256=candidate.sha256, variant=candidate.variant
                    )
                except (BackendError, SampleError, OSError) as exc:
                    log.error("stored %s %s does not load: %s", name, candidate.version, exc)
                    continue
                self.table.swap(model)
                if candidate is not rec.serving:
                    self.store.mark_serving(name, candidate)
                serving, previous = self._serving_info(name)
                self.status[name] = ModelStatus(
                    name=name,
                    version=candidate.version,
                    sha256=candidate.identity,
                    state="serving",
                    progress=1.0,
                    backend=model.backend.label,
                    serving=serving,
                    previous=previous,
                    selection=selection,
                )
                log.info("serving %s %s from disk on %s", name, candidate.version, model.backend.label)
                break

    def _deploy_loop(self) -> None:
        while not self._stop.is_set():
            desired = self._desired.get()
            if desired is None:
                return
            while not self._desired.empty():  # only the newest desired state matters
                newer = self._desired.get()
                if newer is None:
                    return
                desired = newer
            self._cancel.clear()
            try:
                self.reconcile(desired)
            except Exception:
                log.exception("reconcile failed")

    def reconcile(self, desired: Desired) -> None:
        self.generation = desired.generation
        wanted = {m.name: m for m in desired.models}
        for name in list(self.status):
            if name not in wanted:
                self.table.remove(name)
                self.store.forget(name)
                with self._state_lock:
                    self.status.pop(name, None)
                log.info("model %s removed by the controller", name)
        for model in desired.models:
            if self._cancel.is_set():
                return
            loaded = self.table.get(model.name)
            if loaded and loaded.sha256 == model.sha256:
                self._set_status(model.name, state="serving", reason=None)
                continue
            rejected = self.store.rejection(model.name, model.sha256)
            if rejected:
                self._show_rejected(model, rejected)
                continue
            self._deploy(model)
        pinned = {m.sha256 for m in desired.models} | {v.sha256 for m in desired.models for v in m.variants}
        pinned |= {m.samples.sha256 for m in desired.models if m.samples is not None}
        self.store.collect_garbage(self.config.keep_versions, pinned)
        self.publish_state()

    def _deploy(self, target: DesiredModel) -> None:
        serving, previous = self._serving_info(target.name)
        with self._state_lock:
            self.status[target.name] = ModelStatus(
                name=target.name,
                version=target.version,
                sha256=target.sha256,
                state="pending",
                serving=serving,
                previous=previous,
            )
        try:
            if self.verifier is not None:
                self.verifier.verify(target.manifest(), target.signature)
            artifacts = self._fetch_all(target)
            samples = self._fetch_samples(target)
            self._set_status(target.name, state="loading")
            model, selection, artifact = self._choose(target, artifacts, samples)
            self._check_before_swap(model)
        except FetchCancelled:
            log.info("deployment of %s %s superseded", target.name, target.version)
            return
        except (FetchError, VerifyError, BackendError, SignatureError, Unhealthy, OSError, KeyError) as exc:
            self._fail(target, exc)
            return
        except SampleError as exc:
            self._fail(target, Unhealthy("bad_samples", f"the samples given with the model do not fit it: {exc}"))
            self._fail(target, exc)
            return
        with self._swap_lock:
            watch = HealthWatch(self.config.health_window_s, self.config.rollback_max_errors)
            old = self.table.swap(replace(model, watch=watch) if self.config.health_window_s else model)
            if old is not None:
                self._standby[target.name] = old
            self.store.mark_serving(
                target.name,
                Installed(
                    target.version,
                    artifact.sha256,
                    artifact.format,
                    model.backend.label,
                    artifact.variant,
                    target.sha256 if artifact.variant else None,
                    target.samples.sha256 if target.samples else None,
                    dict(target.input_shapes) or None,
                ),
            )
        serving, previous = self._serving_info(target.name)
        self._set_status(
            target.name,
            state="serving",
            backend=model.backend.label,
            serving=serving,
            previous=previous,
            reason=None,
            selection=selection,
            failover=model.backend.status() if isinstance(model.backend, FailoverBackend) else None,
        )
        log.info("now serving %s %s on %s (%s)", target.name, target.version, model.backend.label, selection["reason"])

    def _fetch_all(self, target: DesiredModel) -> list[Artifact]:
        """Download and verify the original, then each signed variant; a variant that fails is left out."""
        original = Artifact(None, target.sha256, target.size, target.format, target.transfer)
        self._fetch(target.name, original)
        artifacts = [original]
        for ref in target.variants:
            variant = Artifact(ref.variant, ref.sha256, ref.size, ref.format, ref.transfer)
            try:
                if self.verifier is not None:
                    self.verifier.verify(target.variant_manifest(ref), ref.signature)
                self._fetch(target.name, variant)
            except (FetchError, VerifyError, SignatureError) as exc:
                log.warning("variant %s of %s %s left out: %s", ref.variant, target.name, target.version, exc)
                self._variant_errors[(target.sha256, ref.variant)] = str(exc)
                continue
            artifacts.append(variant)
        return artifacts

    def _fetch_samples(self, target: DesiredModel) -> list[Inputs] | None:
        """The representative inputs given with the version, fetched and verified like a model."""
        if target.samples is None:
            return None
        self._fetch(target.name, Artifact("samples", target.samples.sha256, target.samples.size, "npz"))
        return self._stored_samples(target.samples.sha256)

    def _stored_samples(self, sha256: str | None) -> list[Inputs] | None:
        path = self.store.path(sha256) if sha256 else None
        return unpack_samples(path) if path is not None and path.exists() else None

    def _fetch(self, name: str, artifact: Artifact) -> None:
        fetched = not self.store.has(artifact.sha256)
        if fetched:  # the fetcher hashes while it writes and commits only a matching file
            self._set_status(name, state="downloading", progress=0.0)
            self.fetcher.fetch(artifact.sha256, artifact.size, self._progress(name), self._cancel, artifact.offer)
        self._set_status(name, state="verifying", progress=1.0)
        if not fetched and not self.store.verify(artifact.sha256):
            raise VerifyError(f"stored {artifact.label} artifact does not match its sha256")

    def _choose(
        self, target: DesiredModel, artifacts: list[Artifact], samples: list[Inputs] | None = None
    ) -> tuple[LoadedModel, dict, Artifact]:
        """The original alone, or the fastest of original and variants that agree with it on this device."""
        original_artifact = artifacts[0]
        hints = dict(target.input_shapes) or None
        original, selection = self._load(
            target.name, target.version, target.sha256, original_artifact.format, target.backend, samples, hints
        )
        if len(artifacts) == 1 and not target.variants:
            return original, selection, original_artifact
        inputs = original.sample()
        if inputs is None:  # nothing to compare or time the variants on: the original serves
            for artifact in artifacts[1:]:
                self._variant_errors[(target.sha256, artifact.variant or "")] = "no representative inputs"
            return original, selection, original_artifact
        started = time.monotonic()
        for _ in range(3):
            original.backend.infer(inputs)  # warm-up: the first runs are not the model's speed
        first = {"variant": "original", "backend": original.backend.label, "p50_ms": p50_ms(original, inputs)}
        contest = Contest(Entrant(original, selection, original_artifact, first))
        for ref in target.variants:
            if (target.sha256, ref.variant) in self._variant_errors:
                contest.passed_over(ref.variant, self._variant_errors[(target.sha256, ref.variant)])
        for artifact in artifacts[1:]:
            try:
                model, sel = self._load(
                    target.name, target.version, artifact.sha256, artifact.format, target.backend, samples, hints
                )
            except (BackendError, SampleError) as exc:
                contest.passed_over(artifact.variant, f"does not load: {str(exc)[:200]}")
                continue
            model = replace(model, sha256=target.sha256, artifact_sha256=artifact.sha256, variant=artifact.variant)
            contest.enter(Entrant(model, sel, artifact, {"variant": artifact.variant}))
        winner = contest.decide()
        reason = describe(contest.results, winner.result)
        chosen = {**winner.selection, "variants": contest.results, "reason": reason}
        chosen["variants_trial_s"] = round(time.monotonic() - started, 2)  # loading, checking and timing them all
        return winner.model, chosen, winner.artifact

    def _check_before_swap(self, model: LoadedModel) -> None:
        """A version that answers NaN/Inf, or runs much slower than the one serving, never replaces it."""
        for inputs in model.probe:
            bad = nonfinite_output(model.backend.infer(inputs))
            if bad:
                raise Unhealthy("nonfinite_output", f"{bad} on a warm-up inference; the serving version stays")
        serving = self.table.current(model.name)
        if serving is not None and self.config.rollback_latency_pct:
            regression = latency_regression(model, serving, self.config.rollback_latency_pct)
            if regression:
                raise Unhealthy("latency_regression", f"{regression}; the serving version stays")

    def _show_rejected(self, target: DesiredModel, reason: str) -> None:
        serving, previous = self._serving_info(target.name)
        with self._state_lock:
            self.status[target.name] = ModelStatus(
                name=target.name,
                version=target.version,
                sha256=target.sha256,
                state="failed",
                reason=Problem(code="rolled_back", message=reason),
                serving=serving,
                previous=previous,
                backend=serving.backend if serving else None,
            )
        self.publish_state()

    # -- health window and rollback ------------------------------------------------------------------------------

    def _health_loop(self) -> None:
        while not self._stop.wait(0.25):
            for name in self.table.names():
                model = self.table.current(name)
                watch = model.watch if model is not None else None
                if watch is None:
                    continue
                if watch.problem:
                    self.rollback(name, model, watch.problem)
                elif watch.passed and name in self._standby:
                    with self._swap_lock:
                        self._standby.pop(name, None)  # healthy: the replaced version may be freed
                    log.info("%s %s passed its health window (%d requests)", name, model.version, watch.requests)

    def rollback(self, name: str, bad: LoadedModel, reason: str) -> bool:
        """Put the version that served before back (kept loaded during the window), and never retry this one."""
        with self._swap_lock:
            if self.table.current(name) is not bad:
                return False
            old = self._standby.pop(name, None)
            if old is None:
                log.error("cannot roll back %s %s (%s): the previous version is not loaded", name, bad.version, reason)
                return False
            self.table.swap(old)
            record = self.store.records.get(name)
            installed = next((h for h in (record.history if record else []) if h.identity == old.sha256), None)
            self.store.mark_serving(name, installed or Installed(old.version, old.artifact, "onnx", old.backend.label))
            message = f"rolled back to version {old.version}: {reason}"
            self.store.reject(name, bad.sha256, message)
        log.error("%s %s %s", name, bad.version, message)
        serving, previous = self._serving_info(name)
        self._set_status(
            name,
            state="failed",
            reason=Problem(code="rolled_back", message=message),
            backend=old.backend.label,
            serving=serving,
            previous=previous,
        )
        return True

    def _fail(self, target: DesiredModel, exc: Exception) -> None:
        code = {
            FetchError: "fetch_failed",
            VerifyError: "hash_mismatch",
            BackendError: "load_failed",
            SignatureError: "signature_invalid",
        }.get(type(exc), "deploy_failed")
        if isinstance(exc, Unhealthy):
            code = exc.code
        problem = Problem(code=code, message=str(exc))
        log.error("deployment of %s %s failed: %s", target.name, target.version, exc)
        self._set_status(target.name, state="failed", reason=problem)

    def _progress(self, name: str):
        def report(done: int, total: int) -> None:
            now = time.monotonic()
            if done < total and now - self._last_progress < PROGRESS_INTERVAL_S:
                return
            self._last_progress = now
            self._set_status(name, progress=round(done / total, 4) if total else 1.0)

        return report

    def _load(
        self,
        name: str,
        version: str,
        sha256: str,
        model_format: str,
        backend: str | None,
        samples: list[Inputs] | None = None,
        hints: dict[str, list[int]] | None = None,
    ) -> tuple[LoadedModel, dict]:
        """Choose the backend by a short measured trial (cached per model and hardware) on representative inputs,
        wrap it with the other working candidates for run-time failover, and warm it up."""
        path = self.store.path(sha256)
        override = backend or self.config.backend
        selection = select_backend(
            path,
            model_format,
            self.hardware,
            override=override,
            options=self.config.backend_options if override else None,
            trial=self.config.backend_trial,
            budget_s=self.config.trial_budget_s,
            cache_dir=Path(self.config.data_dir) / "selection",
            sha256=sha256,
            samples=samples,
            hints=hints,
            isolated=self.config.trial_isolated,
        )
        instance = selection.backend
        probe = tuple(selection.probe.sets)
        fallbacks = self._fallbacks(selection, path, model_format) if not override else []
        if fallbacks:
            instance = FailoverBackend(
                instance,
                fallbacks,
                on_change=lambda status, n=name: self._set_status(n, failover=status),
                probe=probe[0] if probe else None,
            )
        for inputs in probe[:1] * 3:  # warm-up on a representative input; a dynamic OpenVINO model compiles a
            instance.infer(inputs)  # static copy for its shapes once it has seen them three times

        model = LoadedModel(name, version, sha256, instance, stats=self.recorder.model(name, version), probe=probe)
        return model, selection.as_dict()

    def _fallbacks(self, selection, path: Path, model_format: str) -> list:
        """The other candidates that agreed in the trial, fastest first, loaded only if the chosen one fails."""
        working = sorted(
            (r for r in selection.candidates if r.agreed and r.name != selection.choice and r.p50_ms is not None),
            key=lambda r: r.p50_ms,
        )
        by_name = {c.name: c for c in candidates(model_format, self.hardware)}
        names = {"input_names": [s.name for s in selection.backend.inputs]}
        names["output_names"] = [s.name for s in selection.backend.outputs]
        return [
            (
                r.name,
                lambda c=by_name[r.name]: load_candidate(
                    c, path, model_format, names if c.backend == "openvino" else None
                ),
            )
            for r in working
            if r.name in by_name
        ]

    # -- remote calls ----------------------------------------------------------------------------------------------

    def _answer_rpc(self, request: RpcRequest) -> None:
        if request.deadline and time.time() > request.deadline:
            return
        if not request.reply_to.startswith(self.topics.root + "/"):
            log.warning("dropped rpc %s: reply topic %r is outside %s", request.id, request.reply_to, self.topics.root)
            return
        try:
            result = self._call(request.method, request.params)
            response = RpcResponse(id=request.id, ok=True, result=result)
        except (InputError, BackendError, LookupError) as exc:
            code = {InputError: "bad_input", BackendError: "backend_error"}.get(type(exc), "not_found")
            response = RpcResponse(id=request.id, ok=False, error=Problem(code=code, message=str(exc)))
        except Exception as exc:  # never leave the caller waiting
            log.exception("rpc %s failed", request.method)
            response = RpcResponse(id=request.id, ok=False, error=Problem(code="internal", message=repr(exc)))
        self.link.publish(request.reply_to, response.encode(), QOS["rpc/response"], correlation_id=request.id)

    def _call(self, method: str, params: dict) -> dict:
        if method == "infer":
            return self._rpc_infer(params)
        if method == "status":
            return DeviceState(device_id=self.config.device_id, models=list(self.status.values())).model_dump()
        raise LookupError(f"unknown method {method!r}; known: infer, status")

    def _rpc_infer(self, params: dict) -> dict:
        name = params.get("model")
        model = self.table.get(name) if isinstance(name, str) else None
        if model is None:
            raise LookupError(f"model {name!r} is not serving here; serving: {self.table.names()}")
        raw = params.get("inputs")
        if not isinstance(raw, dict):
            raise InputError("params.inputs must be an object of named tensors")
        arrays = {key: decode_tensor(key, value) for key, value in raw.items()}
        started = time.perf_counter()
        outputs = model.infer(arrays)
        latency_ms = (time.perf_counter() - started) * 1000
        return {
            "model_name": model.name,
            "model_version": model.version,
            "backend": model.backend.label,
            "latency_ms": latency_ms,
            "outputs": {key: encode_tensor(value) for key, value in outputs.items()},
        }
