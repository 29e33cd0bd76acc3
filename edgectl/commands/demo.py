"""`edgectl demo`: the whole path on one machine, in scratch files it removes afterwards (or in `--dir DIR`, kept,
with the model and the input it sent, for the README's "first hour"), ending with what to try next."""

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from edgectl.choice_view import format_ms
from edgectl.client import ControllerClient
from edgectl.errors import CommandFailed
from edgectl.output import console, yes_no
from edgectl.progress import upload_with_progress, watch_with_progress

AGENT_ID = "demo-device"
MODEL_FILE, INPUT_FILE = "classifier.onnx", "input.npy"  # what `--dir` keeps for the operator's own next steps


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise CommandFailed(message)


def start_agent(broker_port: int, data_dir: Path, api_port: int, log_file: Path) -> subprocess.Popen:
    cmd = [
        sys.executable, "-P", "-m", "agent.cli", "run",  # -P: a folder named `agent` where it runs is not the agent
        "--broker", f"mqtt://127.0.0.1:{broker_port}",
        "--device-id", AGENT_ID,
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
            raise CommandFailed(f"v2 infer answered {response.status}: {payload[:200]!r}")
        if i >= 20:
            latencies.append((time.perf_counter() - start) * 1000)
        last = json.loads(payload)
    conn.close()
    return latencies, last


@dataclass
class Demo:
    """The demo's processes and directory; `close` stops them and removes the directory unless it is kept."""

    root: Path
    keep: bool = False
    controller: Any = None  # controller.service.BackgroundController
    agent: subprocess.Popen | None = None
    api_port: int = 0

    def start(self, console: Console) -> ControllerClient:
        """Controller with an embedded broker, and one agent; the client once the agent is online."""
        from controller.service import BackgroundController, ControllerSettings

        broker_port = free_port()
        settings = ControllerSettings(
            data_dir=self.root / "controller", broker=f"embedded:{broker_port}", http=f"127.0.0.1:{free_port()}"
        )
        self.controller = BackgroundController(settings)
        console.print(f"controller: API {self.controller.url}, embedded MQTT broker on port {broker_port}")
        self.api_port = free_port()
        self.agent = start_agent(broker_port, self.root / "agent", self.api_port, self.root / "agent.log")
        client = ControllerClient(self.controller.url)
        wait_for(lambda: any(d["online"] for d in client.devices()), 20, "the agent did not come online")
        console.print(f"agent [bold]{AGENT_ID}[/bold] is online")
        return client

    def close(self, console: Console) -> None:
        if self.agent is not None:
            self.agent.terminate()
            try:
                self.agent.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.agent.kill()
        if self.controller is not None:
            self.controller.stop()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)


def push_classifier(console: Console, client: ControllerClient, root: Path) -> None:
    """Upload a small classifier, deploy it to the agent and wait until it serves."""
    from edgectl.sample_models import mlp

    model_path = mlp(root / MODEL_FILE, n_in=64, hidden=256, n_out=10)
    record = upload_with_progress(client, model_path, "classifier", None, quiet=False)
    started = time.perf_counter()
    client.deploy("classifier", record["version"], [AGENT_ID])
    outcome = watch_with_progress(client, [AGENT_ID], "classifier", record["sha256"], 60, quiet=False)
    result = outcome[AGENT_ID]
    if result.state != "serving":
        raise CommandFailed(f"the agent did not serve the model: {result.reason or result.state}")
    deploy_s = time.perf_counter() - started
    console.print(f"pushed classifier v{record['version']}: serving on {result.backend} after {deploy_s:.2f}s")


def query_classifier(console: Console, client: ControllerClient, root: Path, api_port: int, requests: int) -> None:
    """Time the local v2 API, send one inference through the controller, and show both; the input is kept beside
    the model (`edgectl infer --input` takes it)."""
    import numpy as np

    from protocol.tensors import encode_tensor

    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    np.save(root / INPUT_FILE, x)
    latencies, answer = measure_v2(api_port, "classifier", x.tolist(), requests)
    probs = np.asarray(answer["outputs"][0]["data"], dtype=np.float32)
    sent = time.perf_counter()
    remote = client.infer(AGENT_ID, "classifier", {"x": encode_tensor(x)})
    remote["round_trip_ms"] = (time.perf_counter() - sent) * 1000
    show_report(console, client.device(AGENT_ID), latencies, probs, remote)


def run_demo(console: Console, keep: bool = False, requests: int = 200, directory: Path | None = None) -> None:
    """The demo in `directory` (kept), or in scratch files removed at the end unless `keep`."""
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        demo = Demo(directory.resolve(), keep=True)
        where = f"its files in {directory}"
    else:
        demo = Demo(Path(tempfile.mkdtemp(prefix="edgefleet-demo-")), keep=keep)
        where = f"its files in {demo.root}" if keep else "scratch files removed at the end; --dir DIR keeps them"
    console.print(f"[bold]edgefleet demo[/bold]: a controller, an agent and a model on this machine ({where})")
    finished = False
    try:
        client = demo.start(console)
        push_classifier(console, client, demo.root)
        query_classifier(console, client, demo.root, demo.api_port, requests)
        finished = True
    finally:
        demo.close(console)
    if finished:
        next_steps(console, directory if directory is not None else (demo.root if keep else None))


def next_steps(console: Console, kept: Path | None) -> None:
    """What to try after the demo: the same path with processes that stay (the README's "first hour")."""
    if kept is None:
        console.print("next: [bold]edgectl demo --dir demo[/bold] keeps the model and its input to try on your own:")
        kept = Path("demo")
    else:
        console.print(f"kept {kept}: {MODEL_FILE}, {INPUT_FILE}, the agent's log and both data directories")
        console.print('next, with a controller and an agent that stay (README, "The first hour"):')
    for line in (  # each under 80 columns, to copy whole
        f"{'edge-controller serve --broker embedded:1884':<54}# terminal 1",
        "edge-agent run --broker mqtt://127.0.0.1:1884 --device-id cam-01 \\",
        f"{'    --data-dir agent-data':<54}# terminal 2",
        f"edgectl push {kept / MODEL_FILE} --name classifier --to cam-01 --wait",
        f"edgectl infer cam-01 --model classifier --input {kept / INPUT_FILE}",
    ):
        console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)


def show_report(console: Console, device: dict, latencies: list[float], probs: Any, remote: dict) -> None:
    table = Table("device", "online", "model", "version", "state", "backend", title="fleet")
    for m in device["models"]:
        table.add_row(device["id"], yes_no(device["online"]), m["name"], m["version"], m["state"], m["backend"] or "")
    console.print(table)
    ordered = sorted(latencies)
    stats = Table("path", "requests", "p50 ms", "p95 ms", "max ms", title="latency")
    stats.add_row(
        "v2 HTTP JSON (local API)",
        str(len(ordered)),
        format_ms(statistics.median(ordered)),
        format_ms(ordered[int(len(ordered) * 0.95) - 1]),
        format_ms(ordered[-1]),
    )
    rtt = format_ms(remote["round_trip_ms"])
    stats.add_row("HTTP -> controller -> MQTT -> device (edgectl infer)", "1", rtt, "-", "-")
    console.print(stats)
    console.print(f"top-1 class {int(probs.argmax())} with p={float(probs.max()):.3f}; demo finished cleanly")


def demo(
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir", metavar="DIR", help="Run in DIR and keep it: the model, the input sent, the agent's log."
        ),
    ] = None,
    keep: Annotated[bool, typer.Option(help="Keep the scratch directory (its path is printed).")] = False,
    requests: Annotated[int, typer.Option(help="Inference requests for the latency table.")] = 200,
) -> None:
    """Run the whole path locally: controller (embedded broker, SQLite), one agent, a model pushed, served, queried;
    then what to try next."""
    run_demo(console, keep=keep, requests=requests, directory=directory)


COMMANDS = (demo,)
