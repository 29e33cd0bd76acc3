"""`edgectl demo`: the whole path on one machine, in a temporary directory it removes afterwards."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgectl.client import ApiError, ControllerClient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(message)


def start_agent(broker_port: int, data_dir: Path, api_port: int, log_file: Path) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "agent.cli", "run",
        "--broker", f"mqtt://127.0.0.1:{broker_port}",
        "--device-id", "demo-device",
        "--data-dir", str(data_dir),
        "--api", f"127.0.0.1:{api_port}",
        "--mqtt-protocol", "3.1.1",
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=log_file.open("wb"), stderr=subprocess.STDOUT)


def measure_v2(api_port: int, model: str, batch: list[list[float]], requests: int) -> tuple[list[float], dict]:
    """Latencies (ms) of the agent's v2 JSON inference endpoint over one keep-alive connection."""
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [len(batch), len(batch[0])], "datatype": "FP32", "data": batch}]}
    )
    conn = http.client.HTTPConnection("127.0.0.1", api_port, timeout=10)
    latencies, last = [], {}
    for i in range(requests + 20):
        start = time.perf_counter()
        conn.request("POST", f"/v2/models/{model}/infer", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"v2 infer answered {response.status}: {payload[:200]!r}")
        if i >= 20:
            latencies.append((time.perf_counter() - start) * 1000)
        last = json.loads(payload)
    conn.close()
    return latencies, last


def run_demo(console: Console, keep: bool = False, requests: int = 200) -> None:
    import numpy as np

    from controller.service import BackgroundController, ControllerSettings
    from edgectl.cli import upload_with_progress, watch_with_progress
    from edgectl.sample_models import mlp

    root = Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
    controller = agent = None
    try:
        console.print(f"[bold]edgefleet demo[/bold] in {root}")
        broker_port = free_port()
        settings = ControllerSettings(
            data_dir=root / "controller", broker=f"embedded:{broker_port}", http=f"127.0.0.1:{free_port()}"
        )
        controller = BackgroundController(settings)
        console.print(f"controller: API {controller.url}, embedded MQTT broker on port {broker_port}")
        api_port = free_port()
        agent = start_agent(broker_port, root / "agent", api_port, root / "agent.log")
        client = ControllerClient(controller.url)
        wait_for(lambda: any(d["online"] for d in client.devices()), 20, "the agent did not come online")
        console.print("agent [bold]demo-device[/bold] is online")

        model_path = mlp(root / "classifier.onnx", n_in=64, hidden=256, n_out=10)
        record = upload_with_progress(client, model_path, "classifier", None, quiet=False)
        started = time.perf_counter()
        client.deploy("classifier", record["version"], ["demo-device"])
        outcome = watch_with_progress(client, ["demo-device"], "classifier", record["sha256"], 60, quiet=False)
        result = outcome["demo-device"]
        if result.state != "serving":
            raise RuntimeError(f"the agent did not serve the model: {result.reason or result.state}")
        deploy_s = time.perf_counter() - started
        console.print(f"pushed classifier v{record['version']}: serving on {result.backend} after {deploy_s:.2f}s")

        x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
        latencies, answer = measure_v2(api_port, "classifier", x.tolist(), requests)
        probs = np.asarray(answer["outputs"][0]["data"], dtype=np.float32)
        sent = time.perf_counter()
        remote = client.infer("demo-device", "classifier", {"x": _encode(x)})
        remote["round_trip_ms"] = (time.perf_counter() - sent) * 1000
        show_report(console, client.device("demo-device"), latencies, probs, remote)
    except ApiError as exc:
        raise RuntimeError(str(exc)) from None
    finally:
        if agent is not None:
            agent.terminate()
            try:
                agent.wait(timeout=10)
            except subprocess.TimeoutExpired:
                agent.kill()
        if controller is not None:
            controller.stop()
        if keep:
            console.print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _encode(array):
    from protocol.tensors import encode_tensor

    return encode_tensor(array)


def show_report(console: Console, device: dict, latencies: list[float], probs, remote: dict) -> None:
    table = Table("device", "online", "model", "version", "state", "backend", title="fleet")
    for m in device["models"]:
        table.add_row(device["id"], str(device["online"]), m["name"], m["version"], m["state"], m["backend"] or "")
    console.print(table)
    ordered = sorted(latencies)
    stats = Table("path", "requests", "p50 ms", "p95 ms", "max ms", title="latency")
    stats.add_row(
        "v2 HTTP JSON (local API)",
        str(len(ordered)),
        f"{statistics.median(ordered):.3f}",
        f"{ordered[int(len(ordered) * 0.95) - 1]:.3f}",
        f"{ordered[-1]:.3f}",
    )
    rtt = f"{remote['round_trip_ms']:.3f}"
    stats.add_row("HTTP -> controller -> MQTT -> device (edgectl infer)", "1", rtt, "-", "-")
    console.print(stats)
    console.print(f"top-1 class {int(probs.argmax())} with p={float(probs.max()):.3f}; demo finished cleanly")
