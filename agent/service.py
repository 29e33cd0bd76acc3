"""Wires the agent's parts (status, loader, deployer, rollback, RPC, API, telemetry) and runs their lifecycle.

The agent serves models from disk at once, then follows the controller's desired state over MQTT, deploying each
new version beside the old one and swapping only when it is verified, loaded and warm."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import __version__
from agent.api.capture import Captures
from agent.api.remote import RemoteCalls
from agent.api.routes import InferenceServer
from agent.config import AgentConfig
from agent.deploy.crashguard import CrashGuard
from agent.deploy.deployer import Deployer
from agent.deploy.desired_gate import DesiredGate
from agent.deploy.downloads import Downloads
from agent.deploy.loader import Loader
from agent.deploy.oomguard import OomGuard, OomRestart
from agent.deploy.reload import reloader
from agent.deploy.reselect import Reselector
from agent.deploy.rollback import Rollback
from agent.fetch.fetcher import ArtifactFetcher
from agent.fetch.over_http import HttpSettings
from agent.fetch.store import ModelStore
from agent.serving.eviction import Residency
from agent.serving.inflight import TrackedTable
from agent.serving.live import LiveTaps
from agent.serving.memory import find_budget, own_cgroup
from agent.serving.spare import choose_spare
from agent.status_board import StatusBoard
from agent.telemetry.publisher import TelemetryPublisher
from agent.telemetry.stats import Recorder
from daemon.systemd_notify import Notifier
from protocol import QOS, ControllerPresence, Desired, DeviceState, Failover, Presence, ProtocolError, Topics, decode
from protocol.errors import EdgeError
from protocol.link import MqttLink, TlsFiles, Will
from protocol.signing import SignatureError, Verifier
from targets import trial_spare
from targets.probe import probe

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 10.0  # in-flight inferences get this long on shutdown (the unit's TimeoutStopSec is 20 s)
BUSY_STATES = ("pending", "downloading", "verifying", "loading", "checking")

Handler = Callable[[bytes], None]


class Agent:
    """Owns the store, the serving table, the MQTT link, the inference API and the deploy worker. `hardware`, `link`
    and `store` may be given (tests build an agent in-process without probing or a link of its own; a given link,
    not started yet, gets the agent's subscriptions and callbacks); by default the hardware is probed, the link is
    built from the config, and the store is `data_dir/store`."""

    def __init__(
        self,
        config: AgentConfig,
        notifier: Notifier | None = None,
        *,
        hardware: dict[str, Any] | None = None,
        link: MqttLink | None = None,
        store: ModelStore | None = None,
    ) -> None:
        self.config = config
        self.notifier = notifier or Notifier({})
        self.topics = Topics(config.topic_prefix)
        self.store = store if store is not None else ModelStore(Path(config.data_dir) / "store")
        self.hardware = hardware if hardware is not None else probe()
        self.table = TrackedTable()
        self.api: InferenceServer | None = None
        self.grpc_api: Any = None  # agent.api.grpc_server.GrpcServer with `grpc` set (grpcio imported only then)
        self.controller_online = threading.Event()  # the controller's retained presence says online
        self._stop = threading.Event()
        self._ready_lock = threading.Lock()
        self._ready_sent = False
        self.link = link if link is not None else self._make_link()
        self.board = StatusBoard(config.device_id, self.table, self.store, self._send_state)
        self.recorder = Recorder(
            config.telemetry_sample_every, config.telemetry_max_elements, config.telemetry_budget_us or None
        )
        self.telemetry = self._make_telemetry()
        self.fetcher = self._make_fetcher()
        self.guard = CrashGuard(Path(config.data_dir))
        self.rollback = Rollback(config, self.table, self.store, self.guard)
        self.taps = LiveTaps(config.capture_inputs, int(config.capture_max_mb * (1 << 20)))
        budget = find_budget(config.memory_budget_mb, config.memory_reserve_mb)
        log.info("memory budget %s", budget.describe())
        isolated = config.backend_trial and config.trial_isolated
        self.spare = choose_spare(config.trial_spare_max_mb, isolated, budget.limit_mb, budget.free_mb())
        log.info("%s", self.spare.reason)
        self.memory = Residency(budget, self.table, set(config.pinned_models), wait_s=config.memory_wait_s)
        self.telemetry.memory = self.memory.telemetry  # the budget's figures in each telemetry message
        self.oom = OomGuard(Path(config.data_dir), _cgroup_oom_kills)  # a kernel OOM kill seen at the next start
        self.oom_restart: OomRestart | None = None
        self.memory.on_change = self._note_memory
        self.loader = Loader(
            config, self.hardware, self.store, self.recorder, self._on_failover, self.taps, self.memory
        )
        verifier = Verifier(config.trusted_keys) if config.trusted_keys else None
        self.gate = DesiredGate(config.device_id, verifier, Path(config.data_dir))
        downloads = Downloads(self.fetcher, self.store, verifier, threading.Event())
        self.memory.reload = reloader(self.loader, self.store, downloads)  # an unloaded model, on its next request
        self.deployer = Deployer(
            config, table=self.table, store=self.store, board=self.board, loader=self.loader,
            downloads=downloads, rollback=self.rollback, verifier=verifier, guard=self.guard,
        )  # fmt: skip
        captures = Captures(self.taps, self.table)
        state = self.board.state
        self.remote = RemoteCalls(self.topics, self.table, state, self.link.publish, self._stop, captures.call)
        self._handlers = self._attach(self.link)
        self._monitor = threading.Thread(target=self.deployer.watch, args=(self._stop,), name="health", daemon=True)
        self.reselector = Reselector(
            self.loader, self.table, self.store, self.rollback, config.reselect_interval_s, downloads.stored_samples
        )

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the API at once (live; ready once models from disk serve), serve what is on disk on its cached backend
        choice (a choice made on other hardware or runtimes serves too, while the trial runs again in the background),
        then connect. A version that killed the last run is refused first (agent.deploy.crashguard)."""
        self.guard.arm()
        self.oom_restart = self.oom.check(self.guard.left(), self.store)  # before recover() ends the dead run's marks
        for death in self.guard.recover(self.store, self.config.health_window_s):
            log.error("the agent died while %s %s was on trial (%s): %s", death.name, death.mark.version,
                      death.mark.phase, death.cause)  # fmt: skip
        restored = threading.Event()
        ready = lambda: restored.is_set() and len(self.table) > 0  # noqa: E731
        self.api = InferenceServer(
            self.table, self.config.api_host, self.config.api_port, ready=ready, limits=self.config.api_limits(),
            token=self.config.api_token(), status=self.link_status,
        )  # fmt: skip
        self.api.start()
        if self.spare.kept:
            trial_spare.enable(self.spare.max_mb)  # the first deployment's trial need not wait for imports
        if self.config.grpc:
            self.grpc_api = self._start_grpc(ready)
        self.deployer.restore(self.oom_restart)
        self._note_memory()
        restored.set()
        self.deployer.thread.start()
        self._monitor.start()
        reselect = threading.Thread(
            target=self.reselector.run, args=(self._stop, self.deployer.reselected), name="reselect", daemon=True
        )
        reselect.start()
        self.reselector.retrial(self.deployer.stale)
        if len(self.table):
            self.mark_ready()  # serving from disk: ready before the broker answers
        self.telemetry.start()
        self.link.start()
        log.info("agent %s serving %d model(s); API at %s", self.config.device_id, len(self.table), self.api.url)

    def stop(self, drain_timeout: float = DRAIN_TIMEOUT_S) -> None:
        """Stop accepting requests, let in-flight inferences finish, then publish offline presence and disconnect."""
        self._stop.set()
        self.deployer.stop()
        if self.api:
            self.api.stop()
        if self.grpc_api is not None:
            self.grpc_api.stop()
        trial_spare.disable()
        inflight = self.table.inflight.count
        if inflight:
            log.info("waiting up to %.0fs for %d in-flight inference(s)", drain_timeout, inflight)
        if not self.table.inflight.drain(drain_timeout):
            log.warning("%d inference(s) still running after %.0fs; stopping anyway", inflight, drain_timeout)
        self.remote.close()
        self.telemetry.stop()  # the window in memory goes to the disk queue; replayed after the next start
        offline = Presence(device_id=self.config.device_id, online=False, agent_version=__version__)
        self.link.stop(final=(self._topic("presence"), offline.encode(), QOS["presence"], True))
        if self.deployer.thread.ident is not None:
            self.deployer.thread.join(timeout=5)
        self.guard.stopped_cleanly()
        self.oom.stopped_cleanly()
        log.info("agent %s stopped", self.config.device_id)

    # -- supervision (systemd readiness, status and watchdog) ----------------------------------------------------

    def mark_ready(self) -> None:
        """READY=1 once: when models from disk are serving or the broker answered, whichever comes first."""
        with self._ready_lock:
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
        if not self.board.lock.acquire(timeout=lock_timeout):
            return f"state lock held for over {lock_timeout:.0f}s"
        self.board.lock.release()
        worker = self.deployer.thread
        if worker.ident is not None and not worker.is_alive():
            return "deploy worker thread died"
        network = getattr(getattr(self.link, "_client", None), "_thread", None)
        if network is not None and not network.is_alive():
            return "MQTT network thread died"
        if self.api is not None and not self.api.alive:
            return "inference API thread died"
        return None

    def _note_memory(self) -> None:
        """The models' order of use and footprints, for an OOM-aware restore after a kernel OOM kill."""
        footprints = {n: mb for n, mb in self.memory.footprints.items() if mb is not None}
        self.oom.note(self.table.names(), dict(self.table.last_used), footprints)

    def link_status(self) -> dict[str, Any]:
        """This agent and its broker connection, for `edge-agent doctor` on a live device: it reports these instead
        of connecting as the device beside it (a broker that makes the user name the client id would drop us)."""
        return {
            "device_id": self.config.device_id, "pid": os.getpid(), "broker": str(self.link.address),
            "connected": self.link.connected.is_set(), "last_error": self.link.last_error,
            "trial_spare": self.spare.report() | trial_spare.status(),  # the choice; whether it still runs
        }  # fmt: skip

    def status_line(self) -> str:
        """What the agent is doing, for systemd's STATUS= (shown by `systemctl status`)."""
        n = len(self.table)
        parts = [f"serving {n} model{'' if n == 1 else 's'}"]
        if self.oom_restart is not None:
            parts.append(f"restarted after an OOM kill, left out: {', '.join(self.oom_restart.left_out) or 'none'}")
        if self.link.connected.is_set():
            parts.append(f"connected to {self.link.address}")
        else:
            error = self.link.last_error
            parts.append(f"broker {self.link.address} unreachable" + (f" ({error})" if error else ""))
        for entry in self.board.models():
            if entry.state == "downloading":
                parts.append(f"downloading {entry.name} {entry.version} {int(entry.progress * 100)}%")
            elif entry.state in BUSY_STATES:
                parts.append(f"{entry.state} {entry.name} {entry.version}")
            elif entry.state == "failed":
                parts.append(f"{entry.name} {entry.version} failed")
        return "; ".join(parts)

    # -- parts ---------------------------------------------------------------------------------------------------

    def _topic(self, kind: str) -> str:
        return self.topics.device(self.config.device_id, kind)

    def _start_grpc(self, ready: Callable[[], bool]) -> Any:
        """The v2 gRPC API on `grpc` (OSError, naming the fix, when grpcio is not installed or the port is taken)."""
        try:
            from agent.api.grpc_server import GrpcServer
        except ImportError as exc:
            raise OSError(
                f"grpc = {self.config.grpc!r} needs grpcio and protobuf ({exc}): pip install 'edgefleet[grpc]'"
            ) from None
        host, _, port = (self.config.grpc or "").rpartition(":")
        server = GrpcServer(
            self.table, host.strip("[]"), int(port), ready=ready, limits=self.config.api_limits(),
            token=self.config.api_token(),
        )  # fmt: skip
        server.start()
        return server

    def _make_link(self) -> MqttLink:
        cfg = self.config
        will = Presence(device_id=cfg.device_id, online=False, agent_version=__version__)
        return MqttLink(
            cfg.broker_address(),
            cfg.device_id,  # client id = device id = broker user name: the broker can tie each to the others
            subscriptions=[],  # set by _attach, with the handlers
            on_message=self._on_message,
            will=Will(self._topic("presence"), will.encode(), QOS["presence"], True),
            protocol=cfg.mqtt_protocol,
            tls=TlsFiles(cfg.ca_file, cfg.cert_file, cfg.key_file) if cfg.ca_file or cfg.cert_file else None,
        )

    def _make_fetcher(self) -> ArtifactFetcher:
        cfg = self.config
        return ArtifactFetcher(
            self.link.publish,
            self.topics,
            cfg.device_id,
            self.store,
            connected=self.link.connected,
            chunk_bytes=cfg.chunk_bytes,
            window=cfg.download_window,
            request_timeout=cfg.request_timeout_s,
            http=HttpSettings(timeout_s=cfg.http_timeout_s, ca_file=cfg.ca_file) if cfg.http_downloads else None,
        )

    def _make_telemetry(self) -> TelemetryPublisher:
        cfg = self.config
        return TelemetryPublisher(
            cfg.device_id,
            self._topic("telemetry"),
            self.recorder,
            self.link,
            Path(cfg.data_dir) / "telemetry",
            interval_s=cfg.telemetry_interval_s,
            queue_bytes=int(cfg.telemetry_queue_mb * (1 << 20)),
            replay_rate=cfg.telemetry_replay_rate,
            data_dir=Path(cfg.data_dir),
            ready=self.controller_online.is_set,
        )

    # -- MQTT ----------------------------------------------------------------------------------------------------

    def _attach(self, link: MqttLink) -> dict[str, Handler]:
        """Route each subscribed topic to its handler, and hook the link's callbacks; the table it returns is what
        _on_message dispatches by."""
        routes: dict[str, tuple[int, Handler]] = {
            self._topic("desired"): (QOS["desired"], self._on_desired),
            self._topic("artifact/chunk"): (QOS["artifact/chunk"], self.fetcher.handle_chunk),
            self._topic("rpc/request"): (QOS["rpc/request"], self.remote.submit),
            self.topics.controller_presence: (QOS["controller/presence"], self._on_controller_presence),
        }
        link.subscriptions = [(topic, qos) for topic, (qos, _) in routes.items()]
        link.on_message = self._on_message
        link.on_connected = self._on_connected
        return {topic: handler for topic, (_, handler) in routes.items()}

    def _on_message(self, topic: str, payload: bytes) -> None:
        handler = self._handlers.get(topic)
        if handler is None:
            return
        try:
            handler(payload)
        except ProtocolError as exc:
            log.warning("dropped message on %s: %s", topic, exc)

    def _on_connected(self) -> None:
        self.controller_online.clear()  # until the retained presence (re)arrives: the broker may have restarted
        self.mark_ready()
        presence = Presence(
            device_id=self.config.device_id,
            online=True,
            agent_version=__version__,
            hardware={**self.hardware, "labels": self.config.labels} if self.config.labels else self.hardware,
            api_url=self.api.url if self.api else None,
        )
        self.link.publish(self._topic("presence"), presence.encode(), QOS["presence"], retain=True)
        self.board.publish()
        self.fetcher.on_reconnect()
        self.telemetry.on_connected()

    def _on_desired(self, payload: bytes) -> None:
        try:
            desired = self.gate.admit(payload)
        except SignatureError as exc:  # a controller without the key this agent trusts, most likely: say so
            log.error("desired state refused: %s; serving on as before", exc)
            self.deployer.report_refused(decode(Desired, payload), exc, self.gate.generation)
            return
        except EdgeError as exc:  # replayed, expired, another device's
            log.error("desired state refused: %s; serving on as before", exc)
            return
        self.deployer.submit(desired)

    def _on_controller_presence(self, payload: bytes) -> None:
        """Telemetry goes out only while the controller is online (its retained presence, or its will, says so);
        otherwise samples wait in the disk queue, and are replayed when it comes back."""
        online = decode(ControllerPresence, payload).online if payload else False
        if online and not self.controller_online.is_set():
            self.controller_online.set()
            self.telemetry.on_connected()
        elif not online:
            self.controller_online.clear()

    def _on_failover(self, name: str, status: Failover) -> None:
        self.deployer.failed_over(name, status)

    def _send_state(self, state: DeviceState) -> None:
        if self.link.connected.is_set():
            self.link.publish(self._topic("state"), state.encode(), QOS["state"], retain=True)


def _cgroup_oom_kills() -> int | None:
    """The oom_kill count of the memory cgroup the agent is in now (None outside one)."""
    group = own_cgroup()
    return group.oom_kills() if group is not None else None
