"""Fleet delivery benchmark (the model-delivery half of bench/fleet.py): a 10 MB model to N simulated devices over
HTTP and over MQTT, with the bytes through the broker in each case, and the agent's HTTP download rate against curl.

    .venv/bin/python bench/fleet_deliver.py [--devices 1000] [--mqtt-devices 100] [--json]

bench/fleet.py (the telemetry half) runs it with `--deliver` through `add_arguments`, `run` and `report` here.

Real processes: a Mosquitto of the benchmark's own (`sys_interval 1`, so `$SYS/broker/bytes/received|sent` are
fresh), `edge-controller serve` (its public URL defaults from --http, so desired states carry artifact URLs) and nginx
where installed. Simulated devices speak the real protocol (retained presence with a will, the retained desired
state, state reports with progress at the agent's pace) from one selector thread driving all their MQTT sessions, and
download with the agent's own `agent.fetch.fetcher.ArtifactFetcher` (Range, resume, sha256 check, write-back): over HTTP
from the URL in the desired state, or, as agents with `http_downloads = false`, in MQTT chunks. Stores live in
/dev/shm (tmpfs) and each verified file is deleted at once, so a thousand devices fit.

Delivery time: from the deploy call to the last device holding the verified model. Broker bytes: $SYS counters
(received + sent) over that window, per device. Rate vs curl: one 64 MB file from nginx (and from the controller's
own endpoint), the agent's fetcher loop (hashing, writing, write-back) against `curl -o` to the same file system,
alternated 5 times: best and median of each.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from e2e import BenchError, Processes, cli, find_mosquitto, free_port, port_open, wait_until  # noqa: E402

MIB = 1 << 20
TARGET_BROKER_BYTES_PER_DEVICE = 10_000
TARGET_RATE_VS_CURL = 0.9


# -- processes ---------------------------------------------------------------------------------------------------


def start_mosquitto(procs: Processes, directory: Path) -> int:
    binary = find_mosquitto()
    if binary is None:
        raise BenchError("the delivery benchmark needs mosquitto ($SYS byte counters)")
    port = free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nsys_interval 1\n"
        "max_queued_messages 100000\nset_tcp_nodelay true\nmax_connections -1\nlog_dest stderr\nlog_type error\n"
    )
    proc = procs.start("mosquitto", [binary, "-c", str(conf)])
    wait_until(lambda: port_open(port) or proc.popen.poll() is not None, 10, "mosquitto to listen")
    procs.check_alive(proc)
    return port


def start_controller(procs: Processes, directory: Path, port: int, fetch_rate: float):
    from edgectl.client import ApiError, ControllerClient

    http = free_port()
    argv = [*cli("edge-controller", "controller.cli"), "serve", "--broker", f"mqtt://127.0.0.1:{port}",
            "--http", f"127.0.0.1:{http}", "--data-dir", str(directory / "controller"),
            "--fetch-rate", str(fetch_rate), "--log-level", "WARNING"]  # fmt: skip
    proc = procs.start("controller", argv)
    client = ControllerClient(f"http://127.0.0.1:{http}", timeout=600)

    def ready() -> bool:
        procs.check_alive(proc)
        try:
            return bool(client.health().get("broker_connected"))
        except ApiError:
            return False

    wait_until(ready, 30, "the controller", poll=0.1)
    return proc, client


def start_nginx(procs: Processes, directory: Path, root: Path) -> str | None:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        return None
    port = free_port()
    conf = directory / "nginx.conf"
    temp = directory / "nginx-tmp"
    temp.mkdir(exist_ok=True)
    conf.write_text(
        f"daemon off; worker_processes 1; pid {directory}/nginx.pid; error_log {directory}/nginx-error.log;\n"
        "events {}\nhttp { access_log off; sendfile on; tcp_nopush on;\n"
        f"  client_body_temp_path {temp}; proxy_temp_path {temp}; fastcgi_temp_path {temp};\n"
        f"  uwsgi_temp_path {temp}; scgi_temp_path {temp};\n"
        f"  server {{ listen 127.0.0.1:{port}; root {root}; location / {{ }} }} }}\n"
    )
    proc = procs.start("nginx", [binary, "-c", str(conf), "-p", str(directory)])
    wait_until(lambda: port_open(port) or proc.popen.poll() is not None, 10, "nginx to listen")
    procs.check_alive(proc)
    return f"http://127.0.0.1:{port}"


# -- $SYS byte counters ------------------------------------------------------------------------------------------


class BrokerBytes:
    """Mosquitto's own count of the bytes it received and sent, from $SYS (refreshed every second)."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.values: dict[str, int] = {}
        self.updated: dict[str, float] = {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sys")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([("$SYS/broker/bytes/received", 0), ("$SYS/broker/bytes/sent", 0)])
        self.client.loop_start()
        wait_until(lambda: len(self.values) == 2, 10, "$SYS byte counters")

    def _on_message(self, client, userdata, message) -> None:
        key = message.topic.rsplit("/", 1)[1]
        self.values[key] = int(message.payload)
        self.updated[key] = time.monotonic()

    def total(self) -> int:
        """received + sent, as of a report made after this call (so it counts everything up to now)."""
        asked = time.monotonic()
        wait_until(lambda: all(self.updated.get(k, 0) > asked for k in ("received", "sent")), 20, "$SYS update")
        return self.values["received"] + self.values["sent"]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# -- simulated devices -------------------------------------------------------------------------------------------


@dataclass
class SimDevice:
    device_id: str
    client: Any
    fetcher: Any
    store: Any
    started: bool = False
    done_at: float | None = None
    error: str | None = None
    wanted: Any = None
    last_report: float = field(default=0.0)


class SimFleet:
    """N devices, each its own MQTT session, all driven by one selector thread; downloads run on a thread pool
    through the agent's own ArtifactFetcher (HTTP from the desired state's URL, or MQTT chunks)."""

    def __init__(self, port: int, prefix: str, ids: list[str], store_root: Path, http: bool, workers: int) -> None:
        self.port, self.http = port, http
        self.selector = selectors.DefaultSelector()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sim-download")
        self.devices: dict[str, SimDevice] = {}
        self._stop = threading.Event()
        from protocol import Topics

        self.topics = Topics(prefix)
        for device_id in ids:
            self.devices[device_id] = self._device(device_id, store_root / device_id)
        self.thread = threading.Thread(target=self._run, name="sim-mqtt", daemon=True)
        self.thread.start()
        wait_until(lambda: all(d.client.is_connected() for d in self.devices.values()), 120, "simulated devices")

    def _device(self, device_id: str, root: Path) -> SimDevice:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from agent.fetch.fetcher import ArtifactFetcher
        from agent.fetch.over_http import HttpSettings
        from agent.fetch.store import ModelStore
        from protocol import QOS, Presence

        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5)
        presence = self.topics.device(device_id, "presence")
        client.will_set(presence, Presence(device_id=device_id, online=False).encode(), QOS["presence"], True)
        connected = threading.Event()
        store = ModelStore(root)
        fetcher = ArtifactFetcher(
            lambda topic, payload, qos: client.publish(topic, payload, qos), self.topics, device_id, store,
            connected=connected, chunk_bytes=2 * MIB, window=16, request_timeout=30.0,
            http=HttpSettings() if self.http else None,
        )  # fmt: skip
        device = SimDevice(device_id, client, fetcher, store)

        def on_connect(c, userdata, flags, reason, props) -> None:
            c.subscribe(
                [(self.topics.device(device_id, "desired"), 1), (self.topics.device(device_id, "artifact/chunk"), 0)]
            )
            online = Presence(device_id=device_id, online=True, agent_version="sim")
            c.publish(presence, online.encode(), QOS["presence"], retain=True)
            connected.set()

        client.on_connect = on_connect
        client.on_message = lambda c, u, msg: self._on_message(device, msg.topic, msg.payload)
        client.connect("127.0.0.1", self.port, keepalive=120)
        self.selector.register(client.socket(), selectors.EVENT_READ, client)
        return device

    def _run(self) -> None:
        last_misc = 0.0
        while not self._stop.is_set():
            for key, _ in self.selector.select(timeout=0.05):
                key.data.loop_read()
            for device in self.devices.values():
                if device.client.want_write():
                    device.client.loop_write()
            if time.monotonic() - last_misc > 1.0:
                last_misc = time.monotonic()
                for device in self.devices.values():
                    device.client.loop_misc()

    def _on_message(self, device: SimDevice, topic: str, payload: bytes) -> None:
        from protocol import Desired, decode

        if topic.endswith("artifact/chunk"):
            device.fetcher.handle_chunk(payload)
            return
        desired = decode(Desired, payload)
        if desired.models and not device.started:
            device.started, device.wanted = True, desired.models[0]
            self.pool.submit(self._download, device)

    def _report(self, device: SimDevice, state: str, progress: float) -> None:
        from protocol import QOS, DeviceState, ModelStatus

        m = device.wanted
        status = ModelStatus(name=m.name, version=m.version, sha256=m.sha256, state=state, progress=progress)
        message = DeviceState(device_id=device.device_id, models=[status])
        device.client.publish(
            self.topics.device(device.device_id, "state"), message.encode(), QOS["state"], retain=True
        )

    def _download(self, device: SimDevice) -> None:
        from agent.deploy.downloads import PROGRESS_INTERVAL_S

        m = device.wanted

        def progress(done: int, total: int) -> None:  # the agent's pace: at most every PROGRESS_INTERVAL_S
            now = time.monotonic()
            if done < total and now - device.last_report >= PROGRESS_INTERVAL_S:
                device.last_report = now
                self._report(device, "downloading", round(done / total, 4))

        try:
            self._report(device, "downloading", 0.0)
            url = m.url if self.http else None
            device.fetcher.fetch(m.sha256, m.size, progress, self._stop, m.transfer, url, m.fetch_spread_s)
            device.done_at = time.perf_counter()
            device.store.path(m.sha256).unlink()  # verified; a thousand copies would not fit
            self._report(device, "serving", 1.0)
        except Exception as exc:  # noqa: BLE001 - reported in the results
            device.error = f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.pool.shutdown(wait=False, cancel_futures=True)
        for device in self.devices.values():
            device.client.disconnect()


# -- the runs ----------------------------------------------------------------------------------------------------


def deliver(client, port: int, prefix: str, model: Path, n: int, http: bool, store_root: Path, sysbytes) -> dict:
    """Deploy `model` to n fresh simulated devices; seconds until every one holds it verified, broker bytes."""
    kind = "http" if http else "mqtt"
    ids = [f"{kind}-{i:04d}" for i in range(n)]
    fleet = SimFleet(port, prefix, ids, store_root / kind, http, workers=min(n, 256 if http else 64))
    try:
        wait_until(lambda: sum(d["online"] for d in client.devices() if d["id"] in ids) == n, 120, "devices online")
        record = client.upload_model(model, f"deliver-{kind}", None)
        before = sysbytes.total()
        start = time.perf_counter()
        client.deploy(record["name"], record["version"], ids)
        deployed = time.perf_counter() - start
        done = lambda: all(d.done_at or d.error for d in fleet.devices.values())  # noqa: E731
        wait_until(done, 1800, f"{n} devices to hold the model ({kind})", poll=0.1)
        last = max(d.done_at or start for d in fleet.devices.values())
        time.sleep(0.5)  # the last state reports reach the broker
        broker_bytes = sysbytes.total() - before
    finally:
        fleet.close()
    errors = [f"{d.device_id}: {d.error}" for d in fleet.devices.values() if d.error]
    return {
        "path": kind, "devices": n, "model_bytes": record["size"], "deploy_call_s": round(deployed, 2),
        "deliver_s": round(last - start, 2), "broker_bytes": broker_bytes,
        "broker_bytes_per_device": round(broker_bytes / n), "errors": len(errors), "first_errors": errors[:3],
    }  # fmt: skip


def rate_vs_curl(url: str, size: int, work: Path, rounds: int = 5) -> dict:
    """MiB/s of curl -o and of the agent's HTTP fetch loop, alternated `rounds` times from the same URL: the best of
    each (what each can do; a shared machine only slows runs down) and the medians."""
    import hashlib

    from agent.fetch.fetcher import _Writeback
    from agent.fetch.over_http import HttpDownload, HttpSettings

    curl, agent = [], []
    target = work / "rate.part"
    for _ in range(rounds):
        target.unlink(missing_ok=True)
        t0 = time.perf_counter()
        subprocess.run(["curl", "-sf", "-o", str(target), url], check=True)
        curl.append(size / (time.perf_counter() - t0) / MIB)
        target.unlink()
        t0 = time.perf_counter()
        with open(target, "ab") as out, _Writeback(out.fileno()) as writeback:
            hasher = hashlib.sha256()
            HttpDownload(url, size, HttpSettings(), threading.Event()).run(
                out, 0, hasher, lambda done, total: None, writeback.wrote
            )
        agent.append(size / (time.perf_counter() - t0) / MIB)
        target.unlink()
    return {"url": url, "curl_mib_s": round(max(curl), 1), "agent_mib_s": round(max(agent), 1),
            "ratio": round(max(agent) / max(curl), 3), "curl_median": round(statistics.median(curl), 1),
            "agent_median": round(statistics.median(agent), 1)}  # fmt: skip


def run(args: argparse.Namespace) -> dict:
    from edgectl.sample_models import mlp

    work = Path(tempfile.mkdtemp(prefix="fleet-deliver-"))
    shm = Path(tempfile.mkdtemp(prefix="fleet-deliver-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    procs = Processes(work)
    results: dict[str, Any] = {}
    try:
        port = start_mosquitto(procs, work)
        _, client = start_controller(procs, work, port, args.fetch_rate)
        sysbytes = BrokerBytes(port)
        model = mlp(work / "model10.onnx", pad_mb=args.size_mb, seed=7)
        runs = []
        if args.devices:
            runs.append(deliver(client, port, "edge", model, args.devices, True, shm, sysbytes))
        if args.mqtt_devices:
            model2 = mlp(work / "model10b.onnx", pad_mb=args.size_mb, seed=8)
            runs.append(deliver(client, port, "edge", model2, args.mqtt_devices, False, shm, sysbytes))
        results["delivery"] = runs
        report({"delivery": runs})  # now: the rate comparison below may still fail
        sysbytes.close()
        big = mlp(work / "big.onnx", pad_mb=args.curl_mb, seed=9)
        served = shm / "nginx"
        served.mkdir()
        shm.chmod(0o755)  # nginx's workers run as another user
        shutil.copyfile(big, served / "big.onnx")
        rates = []
        nginx = start_nginx(procs, work, served)
        if nginx:
            rates.append({"server": "nginx", **rate_vs_curl(f"{nginx}/big.onnx", big.stat().st_size, shm)})
        record = client.upload_model(big, "rate", None)  # the controller serves only deployed artifacts
        client.deploy("rate", record["version"], [f"http-{0:04d}" if args.devices else "mqtt-0000"])
        from controller.fleet.artifact_urls import ArtifactUrls, url_key

        device = f"http-{0:04d}" if args.devices else "mqtt-0000"  # the device-bound URL its desired state names
        own = ArtifactUrls(url_key(None, work / "controller")).sign(
            f"{client.base_url}/api/v1/artifacts", record["sha256"], device
        )
        rates.append({"server": "controller", **rate_vs_curl(own, record["size"], shm)})
        results["rate_vs_curl"] = rates
    finally:
        procs.stop_all()
        shutil.rmtree(shm, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return results


def report(results: dict, out=sys.stderr) -> None:
    if "delivery" in results:
        print("time to deliver, broker bytes (target: HTTP under 10 KB per device)", file=out)
    for r in results.get("delivery", []):
        size, broker = r["model_bytes"] / MIB, r["broker_bytes"] / MIB
        print(f"  {r['path']:4}  {r['devices']:5} devices x {size:.1f} MiB: {r['deliver_s']:7.2f} s "
              f"(deploy call {r['deploy_call_s']} s); broker {broker:9.2f} MiB = "
              f"{r['broker_bytes_per_device']:,} B/device; errors {r['errors']} {r['first_errors']}",
              file=out)  # fmt: skip
    if "rate_vs_curl" in results:
        print(f"agent HTTP rate vs curl (target >= {TARGET_RATE_VS_CURL})", file=out)
    for r in results.get("rate_vs_curl", []):
        print(f"  {r['server']:10} best: curl {r['curl_mib_s']:7.1f} MiB/s  agent {r['agent_mib_s']:7.1f} MiB/s  "
              f"ratio {r['ratio']:.3f}; medians {r['curl_median']} / {r['agent_median']}", file=out)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=int, default=1000, help="simulated devices for the HTTP delivery (0: skip)")
    parser.add_argument("--mqtt-devices", type=int, default=100, help="simulated devices for the MQTT delivery")
    parser.add_argument("--size-mb", type=float, default=10.0, help="the delivered model's size")
    parser.add_argument("--curl-mb", type=float, default=64.0, help="the file for the rate-vs-curl comparison")
    parser.add_argument("--fetch-rate", type=float, default=50.0, help="the controller's --fetch-rate")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir with every process's log")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--json", action="store_true", help="results as JSON on stdout")
    args = parser.parse_args(argv)
    results = run(args)
    report({"rate_vs_curl": results.get("rate_vs_curl", [])})
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
