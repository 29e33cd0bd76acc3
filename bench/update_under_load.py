"""Updates under live load: a client at about 80% of the device's measured throughput on one model while the same
model is pushed again N times (new weights, same work), then a model 2x slower, then one that answers NaN.

    .venv/bin/python bench/update_under_load.py [--updates 20] [--json]

Real processes: a Mosquitto broker of the benchmark's own, `edge-controller serve` and `edge-agent run`. The client is
open-loop (requests leave on a fixed schedule over keep-alive connections, latency counted from the scheduled send,
so a stall shows in full instead of slowing the client down). Per update it records the time from the deploy call to
the device reporting `serving` (or `failed`), the requests that failed, and p50/p99 of the requests sent meanwhile.
Targets (issue "Updates under live load"): identical updates 0 refused, 0 failed requests, p99 during an update at
most 2x the steady p99; the slower and the NaN model refused every time, with the reason in the device status.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from e2e import Processes, percentile, start_agent, start_broker, start_controller, wait_until  # bench/e2e.py
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table

WIDTH = 512
LAYERS = 6  # about a millisecond a request on this 2-core box
LOAD_SHARE = 0.8


def chain(path: Path, layers: int, seed: int, nan: bool = False) -> Path:
    """x[batch, WIDTH] through `layers` MatMul+Relu: the same work for the same `layers`, whatever the seed."""
    rng = np.random.default_rng(seed)
    inits, nodes, last = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [last, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"r{i}"]))
        last = f"r{i}"
    if nan:  # sqrt(-1 - relu): NaN for every input
        inits.append(numpy_helper.from_array(np.array([-1.0], np.float32), "minus_one"))
        nodes += [helper.make_node("Sub", ["minus_one", last], ["neg"]), helper.make_node("Sqrt", ["neg"], ["nan"])]
        last = "nan"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


class Client:
    """Open-loop load on one model: `rate` requests a second over `threads` keep-alive connections."""

    def __init__(self, api_url: str, model: str, rate: float, threads: int = 2) -> None:
        self.host, self.port = api_url.removeprefix("http://").split(":")
        self.model, self.rate = model, rate
        self.results: list[tuple[float, float, int]] = []  # (scheduled send, latency ms, HTTP status or 0)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i, threads), daemon=True) for i in range(threads)]
        x = np.random.default_rng(1).standard_normal((1, WIDTH)).astype(np.float32)
        self.body = json.dumps({"inputs": [{"name": "x", "shape": [1, WIDTH], "datatype": "FP32",
                                            "data": x.ravel().tolist()}]})  # fmt: skip

    def __enter__(self) -> Client:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _run(self, index: int, threads: int) -> None:
        interval = threads / self.rate
        conn = http.client.HTTPConnection(self.host, int(self.port), timeout=10)
        due = time.perf_counter() + index * interval / threads
        while not self._stop.is_set():
            time.sleep(max(0.0, due - time.perf_counter()))
            status = 0
            try:
                conn.request("POST", f"/v2/models/{self.model}/infer", self.body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(self.host, int(self.port), timeout=10)
            self.results.append((due, (time.perf_counter() - due) * 1000, status))
            due = max(due + interval, time.perf_counter() - interval)  # never a burst to catch up

    def window(self, start: float, end: float) -> list[tuple[float, float, int]]:
        return [r for r in list(self.results) if start <= r[0] <= end]


def throughput(api_url: str, model: str, seconds: float = 3.0) -> float:
    """Requests a second one closed-loop client gets: what the device serves flat out."""
    client = Client(api_url, model, rate=1e9, threads=1)
    with client:
        time.sleep(seconds)
    ok = [r for r in client.results if r[2] == 200]
    return len(ok) / seconds


def device_entry(client, device: str, name: str) -> dict[str, Any] | None:
    return next((m for m in client.device(device).get("models", []) if m.get("name") == name), None)


def update(ctl, load: Client, path: Path, name: str, device: str) -> dict[str, Any]:
    """Push one version and follow it to serving or failed; its figures."""
    record = ctl.upload_model(path, name, None)
    start = time.perf_counter()
    attempt = ctl.deploy(name, record["version"], [device], retry=True)["deployments"][0]["attempt"]

    def done() -> dict[str, Any] | None:
        entry = device_entry(ctl, device, name)
        ok = entry and entry["sha256"] == record["sha256"] and entry.get("attempt", 0) >= attempt
        return entry if ok and entry["state"] in ("serving", "failed") else None

    entry = wait_until(done, 120, f"{name} {record['version']} to settle", poll=0.05)
    end = time.perf_counter()
    latencies = load.window(start, end)
    ms = [r[1] for r in latencies if r[2] == 200]
    return {
        "version": record["version"], "state": entry["state"], "reason": (entry.get("reason") or {}).get("message"),
        "swap_s": end - start, "requests": len(latencies), "failed": sum(r[2] != 200 for r in latencies),
        "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "shadow": entry.get("shadow"),
    }  # fmt: skip


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-update-"))
    procs = Processes(work)
    try:
        broker = start_broker(procs, work, console)
        _, ctl = start_controller(procs, work, broker)
        agent = start_agent(procs, work, broker, "dev1")
        wait_until(lambda: any(d["id"] == "dev1" and d["online"] for d in ctl.devices()), 30, "the agent online")
        first = ctl.upload_model(chain(work / "v0.onnx", LAYERS, seed=0), "m", None)
        ctl.deploy("m", first["version"], ["dev1"])
        wait_until(lambda: (e := device_entry(ctl, "dev1", "m")) and e["state"] == "serving", 120, "m serving")
        capacity = throughput(agent.api_url, "m")
        rate = capacity * LOAD_SHARE
        console.print(f"device throughput {capacity:.0f} req/s; load {rate:.0f} req/s")
        with Client(agent.api_url, "m", rate) as load:
            time.sleep(2.0)
            steady_start = time.perf_counter()
            time.sleep(args.steady_s)
            steady = [r[1] for r in load.window(steady_start, time.perf_counter()) if r[2] == 200]
            same = []
            for i in range(args.updates):
                same.append(update(ctl, load, chain(work / f"same{i}.onnx", LAYERS, seed=i + 1), "m", "dev1"))
                console.print(f"update {i + 1}/{args.updates}: {same[-1]['state']} in {same[-1]['swap_s']:.2f} s")
                time.sleep(1.0)
            slower = update(ctl, load, chain(work / "slower.onnx", 2 * LAYERS, seed=99), "m", "dev1")
            nan = update(ctl, load, chain(work / "nan.onnx", LAYERS, seed=98, nan=True), "m", "dev1")
        return {
            "capacity_rps": capacity, "load_rps": rate, "steady_p50_ms": percentile(steady, 50),
            "steady_p99_ms": percentile(steady, 99), "same": same, "slower": slower, "nan": nan,
        }  # fmt: skip
    finally:
        procs.stop_all()


def report(results: dict[str, Any], console: Console) -> dict[str, bool]:
    same, steady_p99 = results["same"], results["steady_p99_ms"]
    table = Table(title=f"updates under {results['load_rps']:.0f} req/s (80% of {results['capacity_rps']:.0f})")
    for column in ("push", "n", "refused", "failed requests", "p50 ms", "p99 ms", "p99 / steady", "swap s"):
        table.add_column(column, justify="right")
    table.add_row("steady", "-", "-", "-", f"{results['steady_p50_ms']:.2f}", f"{steady_p99:.2f}", "1.00", "-")
    worst = max(u["p99_ms"] for u in same)
    table.add_row(
        "same work", str(len(same)), str(sum(u["state"] != "serving" for u in same)),
        str(sum(u["failed"] for u in same)), f"{statistics.median(u['p50_ms'] for u in same):.2f}",
        f"{worst:.2f} (worst)", f"{worst / steady_p99:.2f}", f"{statistics.median(u['swap_s'] for u in same):.2f}",
    )  # fmt: skip
    for label in ("slower", "nan"):
        u = results[label]
        table.add_row(
            label, "1", "1" if u["state"] == "failed" else "0", str(u["failed"]), f"{u['p50_ms']:.2f}",
            f"{u['p99_ms']:.2f}", f"{u['p99_ms'] / steady_p99:.2f}", f"{u['swap_s']:.2f}",
        )  # fmt: skip
    console.print(table)
    for label in ("slower", "nan"):
        console.print(f"{label}: {results[label]['reason']}")
    checks = {
        "identical updates all land": all(u["state"] == "serving" for u in same),
        "no failed request": sum(u["failed"] for u in same) + results["slower"]["failed"] + results["nan"]["failed"]
        == 0,
        "p99 during updates <= 2x steady": worst <= 2 * steady_p99,
        "slower model refused": results["slower"]["state"] == "failed",
        "NaN model refused": results["nan"]["state"] == "failed",
    }
    for name, ok in checks.items():
        console.print(f"{'[green]PASS' if ok else '[red]FAIL'}[/] {name}")
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=20, help="identical updates to push (default 20)")
    parser.add_argument("--steady-s", type=float, default=10.0, help="seconds of steady load measured first")
    parser.add_argument("--json", action="store_true", help="the results as JSON on stdout (tables on stderr)")
    args = parser.parse_args(argv)
    console = Console(stderr=args.json, width=120)
    results = run(args, console)
    results["checks"] = report(results, console)
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    return 0 if all(results["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
