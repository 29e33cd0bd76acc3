"""Rollout mode of the fleet simulator: N simulated devices in 3 hardware classes against real Mosquitto, PostgreSQL
and an `edge-controller serve`, speaking the real protocol (presence with a hardware probe, desired state answered
with a state that serves it at once, the shadow check's agreement, telemetry from a latency model per class).

    python bench/fleet_rollout.py [--devices 1000] [--bake 20] [--json]      (or: python bench/fleet.py --rollout)

Two rollouts with --waves 1%,10%,50%,100%: version 2 is 30% slower on the Jetson class only and must stop in wave 1
with exposure limited to that wave; version 3 is healthy and must complete. Reports the time to each decision, the
devices exposed, the time to revert after the decision, the controller CPU each decision took (and its wall time, the
database's work included), and the issue's checks: stopped in wave 1, exposure per class within wave 1's share,
reverted within one bake, no promotion without evidence, events contiguous with one decision per wave.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fleet import SimDevice, start_infra  # noqa: E402

from edgectl.sample_models import mlp  # noqa: E402
from protocol import ModelTelemetry, Presence, Telemetry, latency_bucket  # noqa: E402

CLASSES = {  # class -> (hardware probe, share of the fleet, p95-ish base latency in ms)
    "x86": ({"arch": "x86_64", "memory_mb": 16000, "board": "generic"}, 0.5, 6.0),
    "jetson": ({"arch": "aarch64", "memory_mb": 7600, "jetson": {"model": "Jetson Orin Nano"}}, 0.3, 9.0),
    "rpi": ({"arch": "aarch64", "memory_mb": 3900, "raspberry_pi": "Raspberry Pi 4"}, 0.2, 25.0),
}
SLOW = {"2": ("jetson", 1.3)}  # version -> (class, latency factor)
REQUESTS_PER_S = 40


class RolloutDevice(SimDevice):
    """Serves whatever its desired state names, at once; telemetry from its class's latency model."""

    def setup(self, hw_class: str) -> None:
        self.hw_class = hw_class
        self.version: str | None = None
        self.served: set[str] = set()
        self.rng = random.Random(self.device_id)
        self.on_desired = self._desired

    def online(self) -> None:
        hardware = {**CLASSES[self.hw_class][0], "runtimes": {"onnxruntime": "1.20"}}
        presence = Presence(device_id=self.device_id, online=True, agent_version="sim", hardware=hardware)
        self.client.publish(self.topics.device(self.device_id, "presence"), presence.encode(), 1, retain=True)
        self.client.subscribe(self.topics.device(self.device_id, "desired"), 1)
        self.report([])

    async def _desired(self, _device: SimDevice, desired: dict) -> None:
        models = []
        for m in desired.get("models", []):
            previous = self.version if self.version != m["version"] else None
            self.version = m["version"]
            self.served.add(m["version"])
            entry: dict[str, Any] = {
                "name": m["name"], "version": m["version"], "sha256": m["sha256"], "state": "serving",
                "backend": "onnxruntime", "attempt": m.get("attempt", 0),
                "serving": {"version": m["version"], "sha256": m["sha256"], "backend": "onnxruntime"},
            }  # fmt: skip
            if previous:
                entry["previous"] = {"version": previous, "sha256": "0" * 64, "backend": "onnxruntime"}
                entry["shadow"] = {"against": previous, "inputs": "live", "pairs": 40, "agreement": 1.0}
            models.append(entry)
        if not desired.get("models"):
            self.version = None
        self.report(models, desired.get("generation", 0))

    def publish_telemetry(self, ts: float) -> None:
        if self.version is None:
            return
        base = CLASSES[self.hw_class][2]
        slow = SLOW.get(self.version)
        factor = slow[1] if slow and slow[0] == self.hw_class else 1.0
        counts: dict[int, int] = {}
        for _ in range(REQUESTS_PER_S):
            ms = base * factor * self.rng.lognormvariate(-0.2, 0.15)
            counts[latency_bucket(ms)] = counts.get(latency_bucket(ms), 0) + 1
        window = ModelTelemetry(name="detector", version=self.version, requests=REQUESTS_PER_S,
                                latency=sorted(counts.items()), latency_max_ms=base * factor * 2)  # fmt: skip
        message = Telemetry(device_id=self.device_id, ts=ts, start=ts - 1, interval_s=1.0, models=[window])
        self.client.publish(self.topics.device(self.device_id, "telemetry"), message.encode(), qos=1)


async def tick(devices: list[RolloutDevice], stop: asyncio.Event) -> None:
    """Telemetry once a second from every device (spread over the second), paho housekeeping."""
    while not stop.is_set():
        start = time.time()
        for i, d in enumerate(devices):
            d.publish_telemetry(round(time.time(), 6))
            if i % 50 == 49:
                await asyncio.sleep(0)
        for d in devices:
            d.client.loop_misc()
        await asyncio.sleep(max(0.0, 1.0 - (time.time() - start)))


async def run_rollout(api: httpx.AsyncClient, devices: list[RolloutDevice], version: str, bake: float) -> dict:
    body = {"model": "detector", "version": version, "waves": "1%,10%,50%,100%", "bake_s": bake,
            "activate_timeout_s": 60, "min_requests": 200, "seed": 7}  # fmt: skip
    started = time.time()
    rollout = (await api.post("/api/v1/rollouts", json=body)).raise_for_status().json()
    while True:
        status = (await api.get(f"/api/v1/rollouts/{rollout['id']}")).json()
        if status["state"] in ("halted", "completed", "paused", "aborted"):
            break
        await asyncio.sleep(1.0)
    decided = time.time()
    events = (await api.get(f"/api/v1/rollouts/{rollout['id']}/events")).json()
    exposed = [d for d in devices if version in d.served]
    reverted_s = None
    failed = [e for e in events if e["kind"] == "wave_failed"]
    if failed:  # the failed wave's devices back on their previous version: how long after the decision
        back = {d.device_id: d for d in devices if d.device_id in set(failed[-1]["data"].get("reverted", []))}
        while any(d.version == version for d in back.values()) and time.time() - failed[-1]["ts"] < 3 * bake:
            await asyncio.sleep(0.1)
        if not any(d.version == version for d in back.values()):
            reverted_s = round(time.time() - failed[-1]["ts"], 1)
    first_wave = set(status["waves"][0]["devices"])
    decisions = [e for e in events if e["kind"] in ("wave_passed", "wave_failed", "bake_extended", "paused")]
    wave_1_share = {c: sum(d.hw_class == c for d in devices if d.device_id in first_wave) for c in CLASSES}
    exposed_by_class = {c: sum(d.hw_class == c for d in exposed) for c in CLASSES}
    unproven = [  # promotions whose wave lacked the evidence in some class
        e["wave"] for e in events if e["kind"] == "wave_passed"
        and any(g["evidence"]["verdict"] != "pass" for g in e["data"]["classes"].values())
    ]  # fmt: skip
    checks = {
        "events_contiguous": [e["seq"] for e in events] == list(range(1, len(events) + 1)),
        "one_decision_per_wave": all(sum(e["kind"] in ("wave_passed", "wave_failed") and e["wave"] == w
                                         for e in events) <= 1 for w in range(len(status["waves"]))),
        "promotions_without_evidence": len(unproven),
    }  # fmt: skip
    if failed:
        checks |= {
            "stopped_in_wave_1": failed[-1]["wave"] == 0 and status["state"] == "halted",
            "exposure_within_wave_1_share": all(exposed_by_class[c] <= wave_1_share[c] for c in CLASSES),
            "reverted_within_one_bake": reverted_s is not None and reverted_s <= bake,
        }
    return {
        "version": version, "state": status["state"], "reason": status["reason"],
        "seconds": round(decided - started, 1), "devices_exposed": len(exposed),
        "exposed_by_class": exposed_by_class, "wave_1_by_class": wave_1_share,
        "exposed_outside_wave_1": len([d for d in exposed if d.device_id not in first_wave]),
        "wave_1_devices": len(first_wave),
        "decision_after_wave_start_s": [
            round(e["ts"] - next(s["ts"] for s in events if s["kind"] == "wave_started" and s["wave"] == e["wave"]), 1)
            for e in decisions
        ],
        "decision_cpu_s": [e["data"].get("cpu_s") for e in decisions],
        "decision_wall_s": [e["data"].get("wall_s") for e in decisions],
        "wave_devices": [e["data"].get("devices") for e in decisions],
        "wave_started_to_activated_s": [
            round(a["ts"] - next(s["ts"] for s in events if s["kind"] == "wave_started" and s["wave"] == a["wave"]), 1)
            for a in events if a["kind"] == "activated"
        ],
        "checks": checks,
        "reverted_after_decision_s": reverted_s,
    }  # fmt: skip


async def simulate(args) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="fleet-rollout-"))
    infra = start_infra(1, workdir)
    try:
        loop = asyncio.get_running_loop()
        from protocol import Topics

        topics = Topics(infra.prefix)
        names = [c for c, (_, share, _) in CLASSES.items() for _ in range(round(share * args.devices))]
        devices = []
        for i, hw_class in enumerate(names):
            device = RolloutDevice(f"sim-{i:05d}", infra.broker_port, topics, loop)
            device.setup(hw_class)
            devices.append(device)
        await asyncio.sleep(1.0)
        for d in devices:
            d.online()
        while infra.onboarded() < len(devices):
            await asyncio.sleep(0.5)
        stop = asyncio.Event()
        ticker = loop.create_task(tick(devices, stop))
        async with httpx.AsyncClient(base_url=infra.replica_urls[0], timeout=120) as api:
            for version, seed in (("1", 0), ("2", 0), ("3", 0)):  # the simulated devices run no model: any bytes
                path = mlp(workdir / f"detector-{version}.onnx", seed=seed, hidden=64 + int(version))
                with path.open("rb") as f:
                    r = await api.post("/api/v1/models/detector", params={"version": version}, content=f.read(),
                                       headers={"Content-Type": "application/octet-stream"})  # fmt: skip
                    r.raise_for_status()
            ids = [d.device_id for d in devices]
            (await api.post("/api/v1/deployments", json={"model": "detector", "version": "1", "devices": ids}))
            await asyncio.sleep(args.baseline)  # the previous version's telemetry: what the gates compare with
            results = {"devices": len(devices), "classes": {c: names.count(c) for c in CLASSES},
                       "bad": await run_rollout(api, devices, "2", args.bake)}  # fmt: skip
            results["good"] = await run_rollout(api, devices, "3", args.bake)
        stop.set()
        await ticker
        for d in devices:
            d.client.disconnect()
        return results
    finally:
        infra.close()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--bake", type=float, default=20.0, help="seconds per wave")
    parser.add_argument("--baseline", type=float, default=20.0, help="seconds of version 1 before the rollouts")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = asyncio.run(simulate(args))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{results['devices']} devices {results['classes']}")
    for key in ("bad", "good"):
        r = results[key]
        print(f"version {r['version']}: {r['state']} after {r['seconds']} s, {r['devices_exposed']} exposed "
              f"{r['exposed_by_class']} (outside wave 1: {r['exposed_outside_wave_1']}), decisions "
              f"{r['decision_after_wave_start_s']} s after their wave started (activated after "
              f"{r['wave_started_to_activated_s']} s), CPU {r['decision_cpu_s']} s (wall {r['decision_wall_s']} s) "
              f"for {r['wave_devices']} devices, reverted {r['reverted_after_decision_s']} s after the decision; "
              f"{r['reason']}; checks {r['checks']}")  # fmt: skip


if __name__ == "__main__":
    main()
