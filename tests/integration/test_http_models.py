"""Models over HTTP: the desired state names a URL with each artifact; the agent downloads it with Range from a real
HTTP server that is not the controller (Python's http.server on a thread), resumes after a cut at 50% and after an
agent restart, copes with a server that ignores Range, waits out a 503, and falls back to MQTT when HTTP is
unreachable. The controller's own endpoint serves Range/If-Range/HEAD, only for deployed artifacts, without a token."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from conftest import free_port, wait_model_state, wait_until
from paho.mqtt.enums import CallbackAPIVersion

from agent.fetch.over_http import HttpDownload, HttpSettings, HttpUnavailable
from edgectl.sample_models import mlp
from protocol import Topics


class Origin:
    """A static HTTP server holding files named by sha256. `ranges`: honour Range (206, Content-Range, ETag) or
    answer every request 200 with the whole file; `cut`: close the first response's connection after this share of
    the file; `busy`: answer this many requests 503 with Retry-After 1 first; `rate`: bytes per second at most."""

    def __init__(self, root: Path, *, ranges: bool = True, cut: float | None = None, busy: int = 0, rate: float = 0):
        self.root, self.ranges, self.cut, self.busy, self.rate = root, ranges, cut, busy, rate
        self.log: list[dict] = []  # one entry per request: range asked for, status, bytes sent
        root.mkdir(parents=True, exist_ok=True)
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                origin.serve(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, path: Path, sha256: str) -> None:
        shutil.copyfile(path, self.root / sha256)

    def serve(self, req: BaseHTTPRequestHandler) -> None:
        entry = {"range": req.headers.get("Range"), "status": 0, "sent": 0}
        self.log.append(entry)
        path = self.root / req.path.lstrip("/")
        if self.busy:
            self.busy -= 1
            entry["status"] = 503
            req.send_response(503)
            req.send_header("Retry-After", "1")
            req.send_header("Content-Length", "0")
            req.end_headers()
            return
        if not path.is_file():
            entry["status"] = 404
            req.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        asked = req.headers.get("Range")
        if self.ranges and asked and asked.startswith("bytes=") and asked.endswith("-"):
            start = int(asked[6:-1])
        entry["status"] = 206 if start else 200
        req.send_response(entry["status"])
        req.send_header("Content-Length", str(len(data) - start))
        req.send_header("ETag", f'"{path.name}"')
        if start:
            req.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        req.end_headers()
        stop = len(data)
        if self.cut is not None:
            stop, self.cut = max(start, int(len(data) * self.cut)), None
        for offset in range(start, stop, 1 << 16):
            block = data[offset : min(stop, offset + (1 << 16))]
            try:
                req.wfile.write(block)
            except OSError:
                return
            entry["sent"] += len(block)
            if self.rate:
                time.sleep(len(block) / self.rate)
        if stop < len(data):
            req.close_connection = True
            req.wfile.flush()
            req.connection.shutdown(2)

    def gets(self, status: int | None = None) -> list[dict]:
        return [e for e in self.log if status is None or e["status"] == status]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ChunkRequests:
    """Counts the artifact chunk requests devices publish (what the MQTT path costs the broker)."""

    def __init__(self, broker, prefix: str) -> None:
        self.count = 0
        subscribed = threading.Event()
        host, port = broker.url.removeprefix("mqtt://").split(":")
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"chunk-spy-{prefix}")
        self.client.on_message = lambda *a: self._seen()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(host, int(port))
        self.client.subscribe(Topics(prefix).all_devices("artifact/request"), 1)
        self.client.loop_start()
        assert subscribed.wait(5)

    def _seen(self) -> None:
        self.count += 1

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def desired_message(broker, prefix: str, device_id: str) -> dict:
    """The retained desired state of a device, as the broker holds it."""
    got: list[dict] = []
    host, port = broker.url.removeprefix("mqtt://").split(":")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"desired-{prefix}")
    client.on_message = lambda c, u, msg: got.append(json.loads(msg.payload))
    client.connect(host, int(port))
    client.subscribe(Topics(prefix).device(device_id, "desired"), 1)
    client.loop_start()
    try:
        wait_until(lambda: got, 10, "the retained desired state")
    finally:
        client.loop_stop()
        client.disconnect()
    return got[0]


@pytest.fixture
def origin_dir(tmp_path) -> Path:
    return tmp_path / "origin"


def push(controller, origin: Origin | None, model: Path, name: str, devices=("dev1",)) -> dict:
    record = controller.client.upload_model(model, name, None)
    if origin is not None:  # an operator syncs the artifact store to the static server
        origin.add(controller.bg.controller.artifacts.path(record["sha256"]), record["sha256"])
    controller.client.deploy(name, record["version"], list(devices))
    return record


def stored_intact(agent, sha256: str) -> bool:
    stored = agent.data_dir / "store" / "objects" / sha256
    return hashlib.sha256(stored.read_bytes()).hexdigest() == sha256


def test_model_from_a_static_server_after_a_503_never_touches_the_broker(
    make_controller, start_agent, broker, prefix, origin_dir, model_dir
):
    origin = Origin(origin_dir, busy=1)
    controller = make_controller(artifact_base_url=origin.url)
    spy = ChunkRequests(broker, prefix)
    try:
        agent = start_agent("dev1", wait_online=controller)
        record = push(controller, origin, mlp(model_dir / "static.onnx", pad_mb=4, seed=21), "m")
        wait_model_state(controller, "dev1", "m", record["sha256"], {"serving"})
    finally:
        spy.close()
        origin.close()
    desired = desired_message(broker, prefix, "dev1")["models"][0]
    assert desired["url"] == f"{origin.url}/{record['sha256']}"
    assert spy.count == 0  # not one chunk request through the broker
    assert [e["status"] for e in origin.log] == [503, 200]  # waited out the Retry-After, then one whole GET
    assert origin.log[1]["sent"] == record["size"]
    assert stored_intact(agent, record["sha256"])
    assert list((agent.data_dir / "store" / "partial").iterdir()) == []


def test_cut_at_half_resumes_with_range(make_controller, start_agent, broker, prefix, origin_dir, model_dir):
    origin = Origin(origin_dir, cut=0.5)
    controller = make_controller(artifact_base_url=origin.url)
    spy = ChunkRequests(broker, prefix)
    try:
        agent = start_agent("dev1", wait_online=controller)
        record = push(controller, origin, mlp(model_dir / "cut.onnx", pad_mb=8, seed=22), "m")
        wait_model_state(controller, "dev1", "m", record["sha256"], {"serving"})
    finally:
        spy.close()
        origin.close()
    size = record["size"]
    first, second = origin.log
    assert first["range"] is None and first["sent"] == size // 2
    assert second["status"] == 206 and second["range"] is not None
    resumed_at = int(second["range"][6:-1])
    assert 0 < resumed_at <= size // 2 and second["sent"] == size - resumed_at  # only the rest travelled again
    assert spy.count == 0 and stored_intact(agent, record["sha256"])
    assert "cut at" in agent.logs()


def test_server_that_ignores_range(make_controller, start_agent, broker, prefix, origin_dir, model_dir):
    origin = Origin(origin_dir, ranges=False, cut=0.5)
    controller = make_controller(artifact_base_url=origin.url)
    spy = ChunkRequests(broker, prefix)
    try:
        agent = start_agent("dev1", wait_online=controller)
        record = push(controller, origin, mlp(model_dir / "norange.onnx", pad_mb=6, seed=23), "m")
        wait_model_state(controller, "dev1", "m", record["sha256"], {"serving"})
    finally:
        spy.close()
        origin.close()
    first, second = origin.log
    assert first["sent"] == record["size"] // 2
    assert second["range"] is not None and second["status"] == 200 and second["sent"] == record["size"]
    assert "ignored the Range" in agent.logs()
    assert spy.count == 0 and stored_intact(agent, record["sha256"])


def test_unreachable_http_falls_back_to_mqtt(make_controller, start_agent, broker, prefix, model_dir):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    controller = make_controller(public_url=dead)
    spy = ChunkRequests(broker, prefix)
    try:
        agent = start_agent("dev1", wait_online=controller)
        record = push(controller, None, mlp(model_dir / "fallback.onnx", pad_mb=3, seed=24), "m")
        wait_model_state(controller, "dev1", "m", record["sha256"], {"serving"}, timeout=60)
    finally:
        spy.close()
    assert desired_message(broker, prefix, "dev1")["models"][0]["url"].startswith(f"{dead}/api/v1/artifacts/")
    assert "falling back to MQTT" in agent.logs()
    assert spy.count > 0 and stored_intact(agent, record["sha256"])


def test_agent_restart_mid_download_resumes_over_http(
    make_controller, start_agent, broker, prefix, origin_dir, model_dir
):
    origin = Origin(origin_dir, rate=4 << 20)  # 4 MiB/s: the kill lands mid-download
    controller = make_controller(artifact_base_url=origin.url)
    try:
        agent = start_agent("dev1", wait_online=controller)
        model = mlp(model_dir / "restart.onnx", pad_mb=16, seed=25)
        record = controller.client.upload_model(model, "big", None)
        origin.add(model, record["sha256"])
        controller.client.deploy("big", record["version"], ["dev1"])
        part = agent.data_dir / "store" / "partial" / f"{record['sha256']}.part"
        size = record["size"]
        wait_until(lambda: part.exists() and 5 << 20 < part.stat().st_size < size * 3 // 4, 60, "download under way")
        agent.kill()
        assert 0 < part.stat().st_size < size
        origin.rate = 0
        agent.start()
        wait_model_state(controller, "dev1", "big", record["sha256"], {"serving"}, timeout=60)
    finally:
        origin.close()
    resumed = [e for e in origin.log if e["range"]]
    assert resumed and resumed[-1]["status"] == 206 and int(resumed[-1]["range"][6:-1]) >= 4 << 20
    assert "resuming download of" in agent.logs() and "(http)" in agent.logs()
    assert stored_intact(agent, record["sha256"]) and not part.exists()


def test_controller_artifact_endpoint(make_controller, start_agent, broker, prefix, model_dir):
    """The default: devices fetch from the controller's own endpoint with the device-bound URL of their desired state
    (no API token), which speaks Range, If-Range, ETag and HEAD (attacks on it: test_trust_artifacts.py)."""
    port = free_port()
    controller = make_controller(http=f"127.0.0.1:{port}", public_url=f"http://127.0.0.1:{port}", token="secret",
                                 fetch_rate=0.5)  # fmt: skip
    spy = ChunkRequests(broker, prefix)
    try:
        agent = start_agent("dev1", wait_online=controller)
        record = push(controller, None, mlp(model_dir / "own.onnx", pad_mb=2, seed=26), "m")
        wait_model_state(controller, "dev1", "m", record["sha256"], {"serving"})
    finally:
        spy.close()
    assert spy.count == 0 and stored_intact(agent, record["sha256"])
    entry = desired_message(broker, prefix, "dev1")["models"][0]
    assert entry["fetch_spread_s"] == 2.0  # 1 device at 0.5 downloads/s
    sha = record["sha256"]
    url = entry["url"]
    assert url.startswith(f"{controller.url}/api/v1/artifacts/{sha}?device=dev1&expires=")
    raw = controller.bg.controller.artifacts.path(sha).read_bytes()
    head = httpx.head(url)
    assert head.status_code == 200 and head.headers["etag"] == f'"{sha}"'
    assert head.headers["accept-ranges"] == "bytes" and int(head.headers["content-length"]) == len(raw)
    part = httpx.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == raw[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(raw)}"
    assert httpx.get(url, headers={"Range": "bytes=1000-", "If-Range": f'"{sha}"'}).content == raw[1000:]
    stale = httpx.get(url, headers={"Range": "bytes=1000-", "If-Range": '"another"'})
    assert stale.status_code == 200 and stale.content == raw  # If-Range does not match: the whole file
    undeployed = controller.client.upload_model(mlp(model_dir / "other.onnx", seed=27), "other", None)
    for digest in (undeployed["sha256"], "0" * 64):
        refused = httpx.get(url.replace(sha, digest))  # dev1's URL names another artifact
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert httpx.get(f"{controller.url}/api/v1/devices").status_code == 401  # the rest of the API still needs it


def test_wrong_size_on_the_server_is_a_fall_back_not_a_retry(origin_dir, tmp_path):
    """A server holding a file of another size than the desired state says: HttpUnavailable at once (MQTT next)."""
    origin = Origin(origin_dir)
    try:
        (origin_dir / ("a" * 64)).write_bytes(b"x" * 1000)
        download = HttpDownload(f"{origin.url}/{'a' * 64}", 2000, HttpSettings(timeout_s=5), threading.Event())
        with open(tmp_path / "part", "ab") as out, pytest.raises(HttpUnavailable, match="holds 1000 bytes"):
            download.run(out, 0, hashlib.sha256(), lambda done, total: None, lambda n: None)
        missing = HttpDownload(f"{origin.url}/{'b' * 64}", 10, HttpSettings(timeout_s=5), threading.Event())
        with open(tmp_path / "part2", "ab") as out, pytest.raises(HttpUnavailable, match="404"):
            missing.run(out, 0, hashlib.sha256(), lambda done, total: None, lambda n: None)
    finally:
        origin.close()
    assert len(origin.log) == 2  # one request each: no retries of a definite answer
