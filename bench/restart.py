"""Agent restart with 5 models on disk: seconds until the API answers (/v2/health/live) and until every model is
ready (/v2/models/NAME/ready), for three starts:

    .venv/bin/python bench/restart.py [--json]

- `cached`: the backend choices cached on this hardware (a plain restart);
- `runtime added`: every cached choice re-keyed to another hardware/runtime fingerprint, as after installing a runtime:
  the models serve at once on the earlier choice while the trial runs again behind them;
- `no cache`: the selection cache deleted: every model's trial runs before it serves (what every restart after a
  runtime change cost before the choices were kept: 21.8 s to the API with 5 models).

Real processes: Mosquitto, `edge-controller serve`, `edge-agent run` (SIGTERM between starts). The models' own load
time is measured apart (a bare ONNX Runtime session per file, in this process) so the target "ready within 2 s plus
the load times" can be read off.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from e2e import Processes, start_agent, start_broker, start_controller, wait_until  # bench/e2e.py
from rich.console import Console
from rich.table import Table

from edgectl.sample_models import mlp

MODELS = 5


def rekey(cache_dir: Path) -> None:
    """Every cached choice as if made under another fingerprint (see tests/integration/test_fast_restart.py)."""
    from targets.selection import CACHE_FILE, _inputs_file

    path = cache_dir / CACHE_FILE
    moved = {}
    for key, entry in json.loads(path.read_text()).items():
        version, sha256, fmt, rest = key.split("/", 3)
        other = f"{version}/{sha256}/{fmt}/{'0' * 16}/{rest.partition('/')[2]}"
        if _inputs_file(cache_dir, key).exists():
            _inputs_file(cache_dir, key).rename(_inputs_file(cache_dir, other))
        moved[other] = entry
    path.write_text(json.dumps(moved))


def timed_start(procs, work, broker, agent, names: list[str]) -> tuple[Any, float, float]:
    procs.stop(agent.proc)
    started = time.perf_counter()
    agent = start_agent(procs, work, broker, "dev1")
    live = wait_until(lambda: _ok(f"{agent.api_url}/v2/health/live") and time.perf_counter(), 120, "API live", 0.01)
    ready = wait_until(
        lambda: all(_ok(f"{agent.api_url}/v2/models/{n}/ready") for n in names) and time.perf_counter(), 300,
        "every model ready", 0.01,
    )  # fmt: skip
    return agent, live - started, ready - started


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def bare_load_s(paths: list[Path]) -> float:
    import onnxruntime as ort

    started = time.perf_counter()
    for path in paths:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return time.perf_counter() - started


def run(console: Console) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-restart-"))
    procs = Processes(work)
    try:
        broker = start_broker(procs, work, console)
        _, ctl = start_controller(procs, work, broker)
        agent = start_agent(procs, work, broker, "dev1")
        wait_until(lambda: any(d["id"] == "dev1" and d["online"] for d in ctl.devices()), 30, "the agent online")
        names, paths = [f"m{i}" for i in range(MODELS)], []
        for i, name in enumerate(names):
            paths.append(mlp(work / f"{name}.onnx", seed=i, pad_mb=2 * i))
            ctl.deploy(name, ctl.upload_model(paths[-1], name, None)["version"], ["dev1"])
        wait_until(lambda: all(_ok(f"{agent.api_url}/v2/models/{n}/ready") for n in names), 300, "models serving")
        cache = work / "dev1" / "selection"
        results = {}
        for scenario in ("cached", "runtime added", "no cache"):
            if scenario == "runtime added":
                rekey(cache)
            elif scenario == "no cache":
                for f in cache.rglob("*"):
                    f.unlink() if f.is_file() else None
            agent, live_s, ready_s = timed_start(procs, work, broker, agent, names)
            results[scenario] = {"api_live_s": live_s, "all_ready_s": ready_s}
            time.sleep(5.0 if scenario == "runtime added" else 0.5)  # let the background trials finish
        results["bare_load_s"] = bare_load_s(paths)
        return results
    finally:
        procs.stop_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="the results as JSON on stdout (table on stderr)")
    args = parser.parse_args(argv)
    console = Console(stderr=args.json, width=120)
    results = run(console)
    table = Table(title=f"agent restart with {MODELS} models on disk")
    for column in ("start", "API live s", "all models ready s", "target"):
        table.add_column(column, justify="right")
    load = results["bare_load_s"]
    for scenario in ("cached", "runtime added", "no cache"):
        r = results[scenario]
        target = f"<= 1 / <= {2 + load:.2f}" if scenario != "no cache" else "(before)"
        table.add_row(scenario, f"{r['api_live_s']:.2f}", f"{r['all_ready_s']:.2f}", target)
    console.print(table)
    console.print(f"bare ONNX Runtime load of the {MODELS} files: {load:.2f} s")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
