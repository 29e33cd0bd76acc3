"""Memory soak (issue 27): a real agent in a memory cgroup (v1 /sys/fs/cgroup/memory, root) serving 64 MiB models
whose footprints sum to more than its budget, under a random request mix; unloaded models load again on request.

    .venv/bin/python bench/memory_soak.py [--minutes 2] [--budget-mb 350] [--models 8] [--clients 2] [--json]

Reports: OOM kills in the group and whether the agent lived, requests answered / wrong / failed / 503 (a reload that
could not wait or fit), unloads, reloads and their p50/p95 (from the agent's log). `--minutes 30` is the issue's soak.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from e2e import (
    Processes,
    device_online,
    percentile,
    start_agent,
    start_broker,
    start_controller,
    wait_until,
)  # bench/e2e.py
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import contextlib

from agent.config import AgentConfig  # noqa: E402
from edgectl.sample_weighty import weight, weighty  # noqa: E402

V1 = Path("/sys/fs/cgroup/memory")
N = 4096


def oom_kills(group: Path) -> int:
    for line in (group / "memory.oom_control").read_text().splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return 0


def soak(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    if os.geteuid() != 0 or not (V1 / "cgroup.procs").exists():
        raise SystemExit("needs root and a cgroup v1 memory hierarchy at /sys/fs/cgroup/memory")
    group = V1 / f"edgefleet-soak-{os.getpid()}"
    group.mkdir()
    (group / "memory.limit_in_bytes").write_text(str(args.budget_mb << 20))
    procs = Processes(Path(tempfile.mkdtemp(prefix="edge-soak-logs-")))
    work = Path(tempfile.mkdtemp(prefix="edge-soak-"))
    try:
        broker = start_broker(procs, work, console)
        _, client = start_controller(procs, work, broker)
        config = work / "agent.toml"  # a spare trial worker (where the agent has one) holds ~90 MiB: kept off
        config.write_text("trial_spare_max_mb = 0\n" if "trial_spare_max_mb" in AgentConfig.model_fields else "")
        agent = start_agent(procs, work, broker, "soak", extra=["--config", str(config)])
        (group / "cgroup.procs").write_text(str(agent.proc.popen.pid))  # before it imports a runtime
        wait_until(lambda: device_online(client, procs, agent), 60, "the agent online")
        names = [f"w{i}" for i in range(args.models)]
        for i, name in enumerate(names):
            record = client.upload_model(weighty(work / f"{name}.onnx", N, seed=i), name, None)
            client.deploy(name, record["version"], ["soak"])

            def settled(name: str = name) -> bool:
                return any(
                    m["name"] == name and m["state"] in ("serving", "failed") for m in client.device("soak")["models"]
                )

            wait_until(settled, 300, f"{name} to serve or fail")
        states = {
            m["name"]: (m["state"], (m.get("reason") or {}).get("message")) for m in client.device("soak")["models"]
        }
        serving = [n for n in names if states[n][0] == "serving"]
        console.print(f"deployed: {states}")
        weights = {n: weight(N, i) for i, n in enumerate(names) if n in serving}
        x = np.random.default_rng(7).standard_normal((1, N), dtype=np.float32)
        body = {"inputs": [{"name": "x", "shape": [1, N], "datatype": "FP32", "data": x.ravel().tolist()}]}
        want = {n: (x @ w).ravel() for n, w in weights.items()}
        counts = {"ok": 0, "wrong": 0, "failed": 0, "503": 0}
        latencies: list[float] = []
        lock = threading.Lock()
        deadline = time.monotonic() + args.minutes * 60
        kills_before = oom_kills(group)

        def client_loop(seed: int) -> None:
            rng = random.Random(seed)
            http = httpx.Client(timeout=120)
            while time.monotonic() < deadline:
                name = rng.choice(serving)
                started = time.perf_counter()
                try:
                    r = http.post(f"{agent.api_url}/v2/models/{name}/infer", json=body)
                except httpx.HTTPError:
                    outcome = "failed"
                else:
                    if r.status_code == 503 and r.headers.get("retry-after"):
                        outcome = "503"
                    elif r.status_code != 200:
                        outcome = "failed"
                    else:
                        got = np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32)
                        outcome = "ok" if np.allclose(got, want[name], rtol=1e-3, atol=1e-3) else "wrong"
                with lock:
                    counts[outcome] += 1
                    latencies.append((time.perf_counter() - started) * 1000)

        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        log = agent.proc.log.read_text(errors="replace")
        reloads = [float(ms) for ms in re.findall(r"loaded \S+ again on request in (\d+) ms", log)]
        return {
            "budget_mb": args.budget_mb,
            "models": args.models,
            "serving": len(serving),
            "refused": {n: s[1] for n, s in states.items() if s[0] != "serving"},
            "minutes": args.minutes,
            "agent_alive": agent.proc.popen.poll() is None,
            "oom_kills_during_soak": oom_kills(group) - kills_before,
            "oom_kills_total": oom_kills(group),
            "requests": counts,
            "latency_p50_ms": round(percentile(latencies, 50), 1) if latencies else None,
            "latency_p95_ms": round(percentile(latencies, 95), 1) if latencies else None,
            "unloads": log.count("to free memory"),
            "reloads": len(reloads),
            "reload_p50_ms": round(percentile(reloads, 50), 1) if reloads else None,
            "reload_p95_ms": round(percentile(reloads, 95), 1) if reloads else None,
        }
    finally:
        procs.stop_all()
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--budget-mb", type=int, default=350)
    parser.add_argument("--models", type=int, default=8, help="64 MiB models (~70 MiB each on ONNX Runtime)")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    console = Console(stderr=True)
    result = soak(args, console)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
