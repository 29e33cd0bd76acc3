"""Issue 26, finding 2: the artifact route handed any deployed model (and its samples) to anyone holding its sha256,
read-only token or none, unlogged and cacheable by shared caches. Attacked here with two real agents, each deployed
a model of its own through a controller with an admin and a read-only token: only a device's own, current,
device-bound URL downloads, and only what its desired state names now."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import subprocess
import threading
import time
from urllib.parse import urlsplit

import httpx
import paho.mqtt.client as mqtt
from conftest import free_port, wait_model_state, wait_until
from hardening import ControllerProcess
from paho.mqtt.enums import CallbackAPIVersion
from test_http_models import ChunkRequests, desired_message, push, stored_intact

from agent.fetch.over_http import HttpDownload, HttpSettings
from edgectl.client import ControllerClient
from edgectl.sample_models import mlp
from protocol import Presence, Topics


def test_only_a_devices_own_current_url_downloads_its_model(
    make_controller, start_agent, broker, prefix, model_dir, caplog
):
    port = free_port()
    controller = make_controller(http=f"127.0.0.1:{port}", public_url=f"http://127.0.0.1:{port}", token="admin",
                                 read_token="reader", fetch_rate=0)  # fmt: skip
    spy = ChunkRequests(broker, prefix)
    cam1 = start_agent("cam-01", wait_online=controller)
    cam2 = start_agent("cam-02", wait_online=controller)
    with caplog.at_level(logging.INFO, logger="controller.api.routes.artifacts"):
        one = push(controller, None, mlp(model_dir / "one.onnx", pad_mb=1, seed=51), "one", ["cam-01"])
        two = push(controller, None, mlp(model_dir / "two.onnx", pad_mb=1, seed=52), "two", ["cam-02"])
        wait_model_state(controller, "cam-01", "one", one["sha256"], {"serving"})
        wait_model_state(controller, "cam-02", "two", two["sha256"], {"serving"})
    spy.close()
    assert spy.count == 0 and stored_intact(cam1, one["sha256"]) and stored_intact(cam2, two["sha256"])  # over HTTP
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("artifact ")]
    assert any(one["sha256"][:12] in m and "device cam-01" in m for m in logged), logged  # downloads are logged

    sha1, sha2 = one["sha256"], two["sha256"]
    bare = f"{controller.url}/api/v1/artifacts/{sha1}"
    own = desired_message(broker, prefix, "cam-01")["models"][0]["url"]
    assert own.startswith(bare + "?device=cam-01&expires=")
    reader = {"Authorization": "Bearer reader"}
    # the read-only token sees the digests (registry listings) ...
    assert sha1 in {m["sha256"] for m in httpx.get(f"{controller.url}/api/v1/models", headers=reader).json()}
    attempts = {
        "no credential": httpx.get(bare),
        "read-only token": httpx.get(bare, headers=reader),  # ... but downloads nothing
        "admin token": httpx.get(bare, headers={"Authorization": "Bearer admin"}),
        "cam-01's URL for cam-02's model": httpx.get(own.replace(sha1, sha2)),
        "cam-01's signature as cam-02": httpx.get(own.replace("device=cam-01", "device=cam-02")),
        "a later expiry": httpx.get(own.replace("expires=", "expires=9")),
        "HEAD without a URL": httpx.head(bare),
    }
    assert {k: r.status_code for k, r in attempts.items()} == {k: 403 for k in attempts}
    expired = controller.bg.controller.fleet.urls.sign(f"{controller.url}/api/v1/artifacts", sha1, "cam-01", 0.0)
    assert httpx.get(expired).status_code == 403  # a genuine URL past its expiry

    got = httpx.get(own)
    assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == sha1
    assert got.headers["cache-control"] == "private, no-store"  # no shared cache keeps a model

    controller.client.undeploy("cam-01", "one")  # recalled: its unexpired URL stops working at once
    wait_until(lambda: httpx.get(own).status_code == 404, 10, "the recalled model's URL refused")
    assert httpx.get(own).json()["error"]["code"] == "not_deployed"


def test_a_device_download_keeps_pace_with_curl(tmp_path, broker, prefix, model_dir):
    """The device-bound URL serves the agent's HTTP download whole (a 64 MiB model, its sha256 checked) as it serves
    curl, alternated 3 times against a controller in its own process; the rates are printed, not asserted: the
    target (>= 90% of curl's) is measured by bench/fleet_deliver.py, as speed targets are (a timed assertion failed
    here once on a loaded 2-core box)."""
    port = free_port()
    controller = ControllerProcess(tmp_path, "--topic-prefix", prefix, "--public-url", f"http://127.0.0.1:{port}",
                                   broker=broker.url, port=port).start()  # fmt: skip
    device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{prefix}-rate")
    device.connect("127.0.0.1", broker.port)
    device.loop_start()
    try:
        presence = Presence(device_id="rate", online=True).encode()
        device.publish(Topics(prefix).device("rate", "presence"), presence, 1, retain=True).wait_for_publish(5)
        client = ControllerClient(controller.url)
        wait_until(lambda: client.devices(), 10, "the device's presence")
        record = client.upload_model(mlp(model_dir / "big.onnx", pad_mb=64, seed=53), "big", None)
        client.deploy("big", record["version"], ["rate"])
        url = desired_message(broker, prefix, "rate")["models"][0]["url"]
        size, target = record["size"], tmp_path / "rate.part"
        curl, agent = [], []
        for _ in range(3):
            target.unlink(missing_ok=True)
            t0 = time.perf_counter()
            subprocess.run(["curl", "-sf", "-o", str(target), url], check=True)
            curl.append(size / (time.perf_counter() - t0))
            target.unlink()
            t0 = time.perf_counter()
            digest = hashlib.sha256()
            with open(target, "ab") as out:
                download = HttpDownload(url, size, HttpSettings(), threading.Event())
                download.run(out, 0, digest, lambda done, total: None, lambda n: None)
            agent.append(size / (time.perf_counter() - t0))
            assert target.stat().st_size == size and digest.hexdigest() == record["sha256"]
        ratio = max(agent) / max(curl)
        print(f"agent {max(agent) / 2**20:.0f} MiB/s, curl {max(curl) / 2**20:.0f} MiB/s: {ratio:.2f}")
    finally:
        device.loop_stop()
        device.disconnect()
        controller.stop()


def test_connections_that_never_read_hold_no_other_devices_slot(
    make_controller, start_agent, broker, prefix, model_dir, monkeypatch
):
    """Finding 3: 64 connections with cam-01's URL that ask and never read took every stream slot (cam-02 then got
    503 and waited 600 s for MQTT). Now a device holds 2 slots at most, and a send stalled for STALL_S is cut."""
    monkeypatch.setattr("controller.api.routes.artifacts.STALL_S", 3.0)
    port = free_port()
    controller = make_controller(http=f"127.0.0.1:{port}", public_url=f"http://127.0.0.1:{port}", fetch_rate=0)
    controller.client = ControllerClient(controller.url)
    start_agent("cam-01", wait_online=controller)
    cam2 = start_agent("cam-02", wait_online=controller)
    big = push(controller, None, mlp(model_dir / "big.onnx", pad_mb=16, seed=54), "big", ["cam-01"])
    wait_model_state(controller, "cam-01", "big", big["sha256"], {"serving"})
    target = urlsplit(desired_message(broker, prefix, "cam-01")["models"][0]["url"])
    request = f"GET {target.path}?{target.query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    hogs, answers = [], []
    for _ in range(64):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read: the server's send stalls
        s.connect(("127.0.0.1", port))
        s.sendall(request)
        hogs.append(s)
    try:
        time.sleep(1.0)
        for s in hogs:  # what each was answered: a 200 that stalls, or a refusal at once
            s.settimeout(0.2)
            with contextlib.suppress(OSError):
                answers.append(s.recv(12)[9:12])
        spy = ChunkRequests(broker, prefix)
        started = time.monotonic()
        other = push(controller, None, mlp(model_dir / "other.onnx", pad_mb=2, seed=55), "other", ["cam-02"])
        wait_model_state(controller, "cam-02", "other", other["sha256"], {"serving"}, timeout=60)
        took = time.monotonic() - started
        spy.close()
        print(f"cam-01's 64 hogs answered {sorted(set(answers))}; cam-02 served over HTTP in {took:.1f}s")
        assert spy.count == 0 and stored_intact(cam2, other["sha256"]) and took < 30
        assert answers.count(b"200") <= 2 and answers.count(b"429") >= 60
        # the stalled ones are cut after STALL_S: cam-01 downloads again while its 64 sockets stay open
        own = f"http://127.0.0.1:{port}{target.path}?{target.query}"
        wait_until(lambda: httpx.get(own, timeout=30).status_code == 200, 20, "cam-01's slots freed")
    finally:
        for s in hogs:
            s.close()
