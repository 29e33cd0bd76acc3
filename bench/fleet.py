"""Fleet simulator: N simulated devices against real Mosquitto, PostgreSQL and 1-3 `edge-controller serve` replicas.

    python bench/fleet.py [--devices 1000] [--replicas 3] [--duration 60] [--kill-after 20] [--json]

Each device is a real MQTT client (paho, driven by one asyncio loop through its socket callbacks) speaking the
protocol: retained presence with an offline will, its desired state subscribed and answered with a state message,
and one telemetry sample per second (QoS 1, realistic: one model window with a latency histogram, resources).
Starts are spread over the first second so the fleet does not publish in lockstep.

Reports, over the steady window after `--warmup`: telemetry sent (acknowledged by the broker) vs stored, samples
lost (acknowledged, never stored) and stored twice, and the controller replicas' CPU (user + system, every replica
process, from psutil) per stored sample. `--kill-after S` SIGKILLs one replica S seconds into the window: the drill
of tests/integration/test_replicas.py at fleet size. Target: <= 50 us of controller CPU per stored sample, 0 lost.

Model delivery (HTTP vs MQTT, 10 MB to every device, bytes through the broker) is the other half: `--deliver` runs
bench/fleet_deliver.py (its own processes) after this one; `SimDevice.on_desired` is the hook a device here calls
with each desired state.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e import free_port, port_open, wait_until  # noqa: E402

from protocol import DeviceState, ModelTelemetry, Presence, Resources, Telemetry, Topics  # noqa: E402

POSTGRES = os.environ.get("EDGE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
TARGET_US_PER_SAMPLE = 50.0
# the controller acknowledges telemetry once committed: the broker must allow a batch's worth in flight per client
BROKER_CONF = (
    "allow_anonymous true\npersistence false\nset_tcp_nodelay true\nmax_inflight_messages 1000\n"
    "max_queued_messages 100000\nmax_connections -1\nlog_dest stderr\nlog_type error\n"
)


# -- the real processes: Mosquitto, a PostgreSQL database, controller replicas --------------------------------------


@dataclass
class Infra:
    workdir: Path
    prefix: str
    broker: subprocess.Popen
    broker_port: int
    db_url: str
    admin: sa.Engine
    replicas: list[subprocess.Popen] = field(default_factory=list)
    replica_urls: list[str] = field(default_factory=list)
    _last_cpu: dict[int, float] = field(default_factory=dict)

    def controller_cpu(self) -> float:
        """CPU seconds (user + system) the replica processes have used, the killed ones up to their death."""
        total = 0.0
        for proc in self.replicas:
            try:
                times = psutil.Process(proc.pid).cpu_times()
                total += times.user + times.system
                self._last_cpu[proc.pid] = times.user + times.system
            except psutil.NoSuchProcess:
                total += self._last_cpu.get(proc.pid, 0.0)
        return total

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text("select count(*) from telemetry")).scalar_one())

    def onboarded(self) -> int:
        """Devices whose presence is stored (their state follows right behind)."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text("select count(*) from devices")).scalar_one())

    def stored_keys(self) -> list[tuple[str, float]]:
        with self.engine.connect() as conn:
            return [(d, t) for d, t in conn.execute(sa.text("select device_id, ts from telemetry")).all()]

    @property
    def engine(self) -> sa.Engine:
        if not hasattr(self, "_engine"):
            self._engine = sa.create_engine(self.db_url.replace("postgresql://", "postgresql+psycopg://"))
        return self._engine

    def close(self) -> None:
        for proc in self.replicas:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.replicas:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.broker.terminate()
        self.broker.wait(5)
        if hasattr(self, "_engine"):
            self._engine.dispose()
        with self.admin.connect() as conn:
            conn.execute(sa.text(f"drop database if exists {self.db_url.rsplit('/', 1)[1]} with (force)"))
        self.admin.dispose()


def start_infra(replicas: int, workdir: Path) -> Infra:
    binary = next((p for p in map(shutil.which, ("mosquitto", "/usr/sbin/mosquitto")) if p), None)
    if binary is None:
        sys.exit("mosquitto is not installed (apt-get install mosquitto)")
    port = free_port()
    (workdir / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\n{BROKER_CONF}")
    broker = subprocess.Popen(
        [binary, "-c", str(workdir / "mosquitto.conf")], stderr=(workdir / "mosquitto.log").open("wb")
    )
    wait_until(lambda: port_open(port), 10, "mosquitto", poll=0.1)
    admin = sa.create_engine(POSTGRES.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    name = f"fleet_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f"create database {name}"))
    infra = Infra(workdir, f"f{os.getpid()}", broker, port, POSTGRES.rsplit("/", 1)[0] + "/" + name, admin)
    for i in range(replicas):  # all at the same moment, on the empty database
        http = f"127.0.0.1:{free_port()}"
        args = ["serve", "--db", infra.db_url, "--broker", f"mqtt://127.0.0.1:{port}", "--http", http]
        args += ["--data-dir", str(workdir / "data"), "--topic-prefix", infra.prefix, "--log-level", "WARNING"]
        log = (workdir / f"replica-{i}.log").open("wb")
        infra.replicas.append(subprocess.Popen([sys.executable, "-m", "controller.cli", *args], stdout=log, stderr=log))
        infra.replica_urls.append(f"http://{http}")
    import httpx

    def ready(url: str) -> bool:
        try:
            health = httpx.get(f"{url}/api/v1/health", timeout=2).json()
            return bool(health["broker_connected"] and health.get("telemetry_subscribed", True))
        except (httpx.HTTPError, ValueError, KeyError):
            return False

    wait_until(lambda: all(ready(u) for u in infra.replica_urls), 90, f"{replicas} controller replica(s)", poll=0.1)
    return infra


# -- simulated devices ----------------------------------------------------------------------------------------------


def telemetry_template(device_id: str, rng: random.Random) -> tuple[bytes, bytes]:
    """A realistic sample split around its `ts` (the rest of the message is the same every second)."""
    counts: dict[int, int] = {}
    for _ in range(200):
        bucket = min(39, max(0, int(rng.lognormvariate(3.2, 0.15))))
        counts[bucket] = counts.get(bucket, 0) + 1
    window = ModelTelemetry(
        name="detector", version="3", requests=200, latency=sorted(counts.items()), latency_sum_ms=620.0,
        latency_max_ms=10.6,
    )  # fmt: skip
    resources = Resources(cpu_percent=23.5, cpu_per_core=[20.0, 27.0], load1=0.8, mem_percent=41.0, rss_mb=120.0)
    message = Telemetry(
        device_id=device_id, ts=123456789.0, start=123456788.0, interval_s=1.0, models=[window], resources=resources
    ).encode()
    head, tail = message.split(b'"ts":123456789.0', 1)
    return head + b'"ts":', tail


class SimDevice:
    """One device's MQTT client on the shared asyncio loop."""

    def __init__(self, device_id: str, port: int, topics: Topics, loop: asyncio.AbstractEventLoop) -> None:
        self.device_id = device_id
        self.topics = topics
        self.loop = loop
        self.sent: list[tuple[mqtt.MQTTMessageInfo, float]] = []
        # hook: called with each desired state (a dict); the model-delivery half downloads what it names here
        self.on_desired: Callable[[SimDevice, dict], Awaitable[None]] | None = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{topics.prefix}-{device_id}")
        self.client.max_inflight_messages_set(100)
        offline = Presence(device_id=device_id, online=False, agent_version="sim")
        self.client.will_set(topics.device(device_id, "presence"), offline.encode(), 1, retain=True)
        self.client.on_socket_open = lambda c, u, sock: loop.add_reader(sock, c.loop_read)
        self.client.on_socket_close = lambda c, u, sock: loop.remove_reader(sock)
        self.client.on_socket_register_write = lambda c, u, sock: loop.add_writer(sock, c.loop_write)
        self.client.on_socket_unregister_write = lambda c, u, sock: loop.remove_writer(sock)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=60)
        self.head, self.tail = telemetry_template(device_id, random.Random(device_id))

    def online(self) -> None:
        presence = Presence(device_id=self.device_id, online=True, agent_version="sim")
        self.client.publish(self.topics.device(self.device_id, "presence"), presence.encode(), 1, retain=True)
        self.client.subscribe(self.topics.device(self.device_id, "desired"), 1)
        self.report([])

    def report(self, models: list[dict], generation: int = 0) -> None:
        state = DeviceState(device_id=self.device_id, generation=generation, models=models)
        self.client.publish(self.topics.device(self.device_id, "state"), state.encode(), 1, retain=True)

    def _on_message(self, client, userdata, message) -> None:
        if not message.payload:
            return
        desired = json.loads(message.payload)
        if self.on_desired is not None:
            self.loop.create_task(self.on_desired(self, desired))
        else:  # no delivery simulated: say every model is pending
            models = [
                {"name": m["name"], "version": m["version"], "sha256": m["sha256"], "state": "pending"}
                for m in desired.get("models", [])
            ]
            self.report(models, desired.get("generation", 0))

    def publish_telemetry(self, ts: float) -> None:
        topic = self.topics.device(self.device_id, "telemetry")
        self.sent.append((self.client.publish(topic, self.head + repr(ts).encode() + self.tail, qos=1), ts))


async def run_devices(devices: list[SimDevice], seconds: float, hz: float) -> None:
    """Telemetry at `hz` from every device for `seconds`, each on its own phase; paho's housekeeping every second."""
    start = time.time()
    phases = {d.device_id: random.random() / hz for d in devices}

    async def one(device: SimDevice) -> None:
        n = 0
        while (at := start + phases[device.device_id] + n / hz) < start + seconds:
            await asyncio.sleep(max(0.0, at - time.time()))
            device.publish_telemetry(round(time.time(), 6))
            n += 1

    async def housekeeping() -> None:
        while time.time() < start + seconds + 1:
            for d in devices:
                d.client.loop_misc()
            await asyncio.sleep(1.0)

    await asyncio.gather(housekeeping(), *(one(d) for d in devices))


async def settle(devices: list[SimDevice], timeout: float = 60) -> set[tuple[str, float]]:
    """Wait for the broker's PUBACKs; the (device, ts) of every acknowledged sample."""
    deadline = time.time() + timeout
    while time.time() < deadline and not all(info.is_published() for d in devices for info, _ in d.sent):
        for d in devices:
            d.client.loop_misc()
        await asyncio.sleep(0.2)
    return {(d.device_id, ts) for d in devices for info, ts in d.sent if info.is_published()}


# -- the measurements -----------------------------------------------------------------------------------------------


async def telemetry_phase(infra: Infra, devices: list[SimDevice], args) -> dict[str, Any]:
    """Telemetry at 1 Hz for warmup + duration seconds; CPU and stored counted over the window after the warmup."""
    window: dict[str, float] = {}

    async def measure() -> None:
        await asyncio.sleep(args.warmup)
        window.update(cpu0=infra.controller_cpu(), stored0=infra.count(), t0=time.time())
        if args.kill_after is not None:
            await asyncio.sleep(args.kill_after)
            infra.replicas[-1].send_signal(signal.SIGKILL)  # a replica dies mid-ingest
            window["killed_at"] = time.time() - window["t0"]
            await asyncio.sleep(args.duration - args.kill_after)
        else:
            await asyncio.sleep(args.duration)
        window.update(cpu1=infra.controller_cpu(), stored1=infra.count(), t1=time.time())

    await asyncio.gather(run_devices(devices, args.warmup + args.duration, args.hz), measure())
    sent = await settle(devices)
    deadline = time.time() + 120
    while time.time() < deadline and infra.count() < len(sent):
        await asyncio.sleep(1.0)
    rows = infra.stored_keys()
    stored_set = set(rows)
    in_window = window["stored1"] - window["stored0"]
    return {
        "devices": len(devices),
        "replicas": len(infra.replicas),
        "sent": len(sent),
        "stored": len(rows),
        "lost": len(sent - stored_set),
        "stored_twice": len(rows) - len(stored_set),
        "window_s": round(window["t1"] - window["t0"], 1),
        "stored_per_s": round(in_window / (window["t1"] - window["t0"]), 1),
        "controller_cpu_s": round(window["cpu1"] - window["cpu0"], 2),
        "cpu_us_per_sample": round(1e6 * (window["cpu1"] - window["cpu0"]) / max(1, in_window), 1),
        "killed_replica_at_s": round(window["killed_at"], 1) if "killed_at" in window else None,
    }


async def simulate(args) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    infra = start_infra(args.replicas, workdir)
    try:
        loop = asyncio.get_running_loop()
        topics = Topics(infra.prefix)
        devices = [SimDevice(f"sim-{i:05d}", infra.broker_port, topics, loop) for i in range(args.devices)]
        await asyncio.sleep(1.0)  # CONNACKs
        for device in devices:
            device.online()
        # onboarding (a presence and a state per device) is not telemetry: the window starts once it is stored
        deadline = time.monotonic() + 300
        while infra.onboarded() < len(devices) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        await asyncio.sleep(5.0)  # their states, stored after their presence
        results: dict[str, Any] = {"telemetry": await telemetry_phase(infra, devices, args)}
        for device in devices:
            device.client.disconnect()
        return results
    finally:
        infra.close()
        if args.keep:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=3, choices=(1, 2, 3))
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before the measured window")
    parser.add_argument("--hz", type=float, default=1.0, help="telemetry samples per device per second")
    parser.add_argument("--kill-after", type=float, default=None, help="SIGKILL a replica this far into the window")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir with every process's log")
    parser.add_argument("--deliver", action="store_true", help="then a 10 MB model to --devices over HTTP and MQTT")
    parser.add_argument("--rollout", action="store_true", help="rollout mode instead: bench/fleet_rollout.py")
    args, rest = parser.parse_known_args()
    if args.rollout:  # its own processes and devices (3 hardware classes, a latency model each)
        from fleet_rollout import main as rollout

        rollout(["--devices", str(args.devices), *(["--json"] if args.json else []), *rest])
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    os.nice(5)  # the simulated devices stand for other machines: the controllers come first
    results = asyncio.run(simulate(args))
    if args.deliver:  # its own broker, controller and devices: bench/fleet_deliver.py (report to stderr)
        from fleet_deliver import main as deliver

        deliver(["--devices", str(args.devices), *(["--keep"] if args.keep else [])])
    if args.json:
        print(json.dumps(results, indent=2))
        return
    t = results["telemetry"]
    print(f"{t['devices']} devices, {t['replicas']} replica(s), {t['window_s']} s measured")
    print(f"telemetry: sent {t['sent']}, stored {t['stored']}, lost {t['lost']}, stored twice {t['stored_twice']}")
    verdict = "ok" if t["cpu_us_per_sample"] <= TARGET_US_PER_SAMPLE else "over target"
    print(
        f"controller CPU: {t['controller_cpu_s']} s for {t['stored_per_s']} samples/s = "
        f"{t['cpu_us_per_sample']} us per stored sample (target <= {TARGET_US_PER_SAMPLE:g}: {verdict})"
    )
    if t["killed_replica_at_s"] is not None:
        print(f"a replica was SIGKILLed {t['killed_replica_at_s']} s into the window")


if __name__ == "__main__":
    main()
