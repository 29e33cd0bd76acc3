"""`edgectl rollout start --dry-run` against a controller with a fleet of simulated devices (their presence and
telemetry stored as the controller stores an agent's): the waves per hardware class, the bytes to move (devices
already on the version move nothing), the devices that cannot take the model (no runtime for its format, too little
free disk in their newest telemetry) and the devices another active rollout of the model holds; nothing changes,
and a rollout started with the same seed runs the very plan the dry run printed."""

from __future__ import annotations

import json

from conftest import wait_until
from typer.testing import CliRunner

from edgectl.cli import app
from protocol import Resources, Telemetry

X86 = {"arch": "x86_64", "memory_mb": 16000, "board": "generic", "runtimes": {"onnxruntime": "1.20"}}
PI = {"arch": "aarch64", "memory_mb": 3900, "raspberry_pi": "Raspberry Pi 4", "runtimes": {"onnxruntime": "1.20"}}


def edgectl(controller, *args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--controller", controller.url, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_the_dry_run_plans_waves_per_class_bytes_incompatible_devices_and_conflicts(controller, mlp_model):
    service = controller.bg.controller
    db, ingest = service.db, service.fleet.telemetry
    fleet = {f"x86-{i}": X86 for i in range(8)} | {f"pi-{i}": PI for i in range(4)}
    fleet["x86-ov"] = {**X86, "runtimes": {"openvino": "2024.4"}}  # no runtime for an ONNX model
    fleet["pi-full"] = PI  # 5 KB free: less than twice the model
    fleet["x86-held-0"] = fleet["x86-held-1"] = {**X86, "labels": {"site": "b"}}  # in another rollout
    for device_id, hardware in fleet.items():
        db.record_presence(device_id, True, hardware, "1.0", None)
    ingest.submit("pi-full", Telemetry(device_id="pi-full", resources=Resources(disk_free_mb=0.005)).encode())
    ingest.submit("pi-0", Telemetry(device_id="pi-0", resources=Resources(disk_free_mb=5000.0)).encode())
    assert ingest.flush()
    size = mlp_model.stat().st_size
    assert 2 * size > 0.005 * (1 << 20)
    controller.client.upload_model(mlp_model, "m", "1")
    controller.client.upload_model(mlp_model, "m", "2")
    controller.client.deploy("m", "2", ["x86-0"])  # already on the version: nothing to move
    other = edgectl(controller, "rollout", "start", str(mlp_model), "--name", "m", "--version", "1",
                    "--select", "site=b", "--bake", "600")  # fmt: skip

    plan = edgectl(controller, "rollout", "start", str(mlp_model), "--name", "m", "--version", "2",
                   "--waves", "1,50%,100%", "--seed", "11", "--dry-run")  # fmt: skip

    assert plan["dry_run"] is True and plan["seed"] == 11
    assert set(plan["incompatible"]) == {"x86-ov", "pi-full"}
    assert "no runtime for onnx" in plan["incompatible"]["x86-ov"]
    assert "too little disk" in plan["incompatible"]["pi-full"]
    assert plan["conflicts"] == {"x86-held-0": other["id"], "x86-held-1": other["id"]}
    x86, pi = sorted(plan["classes"], key=lambda c: -plan["classes"][c])
    assert plan["classes"] == {x86: 8, pi: 4} and plan["devices"] == 12
    assert plan["bytes"] == size * 11  # x86-0 is on version 2 already
    waves = [(len(w["devices"]), w["classes"]) for w in plan["waves"]]
    # wave 1: one device, of the largest class; by 50% (6 of 12) each class has its share; then the rest
    assert waves == [(1, {x86: 1, pi: 0}), (5, {x86: 3, pi: 2}), (6, {x86: 4, pi: 2})], waves
    planned = [d for w in plan["waves"] for d in w["devices"]]
    assert sorted(planned) == sorted(set(fleet) - {"x86-ov", "pi-full", "x86-held-0", "x86-held-1"})

    # the dry run changed nothing: no rollout, no deployment
    assert [r["id"] for r in controller.client.rollouts()] == [other["id"]]
    assert db.get_deployment("x86-1", "m") is None and db.get_deployment("x86-0", "m")["version"] == "2"

    args = ["rollout", "start", str(mlp_model), "--name", "m", "--version", "2", "--waves", "1,50%,100%", "--seed",
            "11", "--bake", "600", "--controller", controller.url]  # fmt: skip
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code != 0 and "2 selected device(s) are in active rollout(s)" in refused.output
    edgectl(controller, "rollout", "abort", other["id"])
    plan = edgectl(controller, *args[:-2], "--dry-run")
    assert plan["conflicts"] == {} and plan["devices"] == 14
    started = edgectl(controller, *args[:-2])
    assert [sorted(w["devices"]) for w in started["waves"]] == [sorted(w["devices"]) for w in plan["waves"]]
    wait_until(lambda: controller.client.rollout(started["id"])["state"] == "running", 20, "the rollout running")
