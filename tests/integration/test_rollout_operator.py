"""A rollout in an operator's hands, against a controller with simulated devices (their presence stored as the
controller stores an agent's, their model state written as an agent reports it): a device labelled to match the
selector mid-wave joins the current wave and is sent the version; pause holds the engine, resume lets it go on; next
promotes a wave by hand (recorded as the operator's) and the next wave starts; a device that reports the version
failed fails the wave at once and --on-fail revert-all sends every device that took it back, the promoted wave's
included; /metrics exports the state and the gates (the dashboard's browser test skips without Chromium). With their
telemetry sent as an agent sends it (protocol messages through the controller's ingest): --on-fail halt stops on a
failed latency gate and reverts nothing, and `edgectl rollout events` lists each decision with its figures."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from conftest import wait_until
from test_registry import db  # noqa: F401  (the fixture: SQLite, and PostgreSQL when it is there)
from typer.testing import CliRunner

from controller.fleet.deployments import Deployments
from controller.rollouts.actions import RolloutActions
from controller.rollouts.store import Change, RolloutStore
from edgectl.cli import app
from protocol import ModelTelemetry, Telemetry, latency_bucket
from protocol.errors import EdgeError

X86 = {"arch": "x86_64", "memory_mb": 16000, "board": "generic", "runtimes": {"onnxruntime": "1.20"}}


def edgectl(controller, *args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--controller", controller.url, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def kinds(controller, rollout_id: str) -> list[str]:
    events = controller.client.rollout_events(rollout_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    return [e["kind"] for e in events]


@pytest.fixture(autouse=True)
def _fast_join(monkeypatch):
    monkeypatch.setattr("controller.rollouts.engine.JOIN_EVERY_S", 0.5)


def test_a_late_joiner_pause_resume_next_and_revert_all(controller, mlp_model):
    database = controller.bg.controller.db
    fleet = [f"x86-{i}" for i in range(4)]
    for device_id in [*fleet, "x86-late"]:
        labels = {"site": "lab"} if device_id in fleet else {}
        database.record_presence(device_id, True, {**X86, "labels": labels}, "1.0", None)
    controller.client.upload_model(mlp_model, "m", "1")
    controller.client.deploy("m", "1", [*fleet, "x86-late"])
    rollout = edgectl(controller, "rollout", "start", str(mlp_model), "--name", "m", "--version", "2", "--select",
                      "site=lab", "--waves", "1,100%", "--bake", "600", "--activate-timeout", "600", "--on-fail",
                      "revert-all", "--seed", "5")  # fmt: skip
    rid = rollout["id"]
    (first,) = rollout["waves"][0]["devices"]
    wait_until(lambda: controller.client.rollout(rid)["phase"] == "activating", 20, "wave 1 activating")
    wait_until(lambda: database.get_deployment(first, "m")["version"] == "2", 20, "wave 1 sent version 2")

    # a device that comes to match the selector enters the current wave and is sent the version
    labelled = edgectl(controller, "label", "x86-late", "site=lab")
    assert labelled["labels"]["site"] == "lab"
    wait_until(lambda: "devices_joined" in kinds(controller, rid), 20, "the late joiner in the rollout")
    joined = controller.client.rollout(rid)
    assert joined["devices"]["x86-late"]["wave"] == 0 and joined["devices"]["x86-late"]["state"] == "pushed"
    assert sorted(joined["waves"][0]["devices"]) == sorted([first, "x86-late"])
    wait_until(lambda: database.get_deployment("x86-late", "m")["version"] == "2", 20, "the late joiner sent version 2")

    # pause holds the engine; resume lets it go on
    paused = edgectl(controller, "rollout", "pause", rid)
    assert paused["state"] == "paused" and paused["reason"] == "paused by the operator"
    before = kinds(controller, rid)
    time.sleep(2.0)
    assert kinds(controller, rid) == before and controller.client.rollout(rid)["state"] == "paused"
    assert edgectl(controller, "rollout", "resume", rid)["state"] == "running"

    # next promotes wave 1 by hand; wave 2 starts with the other devices
    promoted = edgectl(controller, "rollout", "next", rid)
    assert promoted["waves"][0]["state"] == "promoted" and promoted["wave"] == 1
    wait_until(lambda: kinds(controller, rid).count("wave_started") == 2, 20, "wave 2 started")
    rest = sorted(set(fleet) - {first})
    assert sorted(controller.client.rollout(rid)["waves"][1]["devices"]) == rest
    events = controller.client.rollout_events(rid)
    assert next(e for e in events if e["kind"] == "promoted")["reason"] == "wave 1 promoted by the operator"

    # a wave-2 device reports the version failed: the wave fails at once, revert-all sends back every device
    failed = {"name": "m", "version": "2", "state": "failed", "reason": {"message": "load failed"}}
    database.record_state(rest[0], [failed])
    done = wait_until(lambda: (r := controller.client.rollout(rid))["state"] == "halted" and r, 20, "halted")
    (gates,) = done["waves"][1]["classes"].values()
    assert "activation" in gates["failed_gates"] and "load failed" in gates["activation"]["failed"][rest[0]]
    last = controller.client.rollout_events(rid)[-1]
    assert last["kind"] == "wave_failed" and sorted(last["data"]["reverted"]) == sorted([*fleet, "x86-late"])
    assert "(revert-all)" in done["reason"]
    for device_id in [*fleet, "x86-late"]:
        wait_until(lambda d=device_id: database.get_deployment(d, "m")["version"] == "1", 20, f"{device_id} back on 1")

    metrics = httpx.get(f"{controller.url}/metrics").text
    assert f'edge_rollout_state{{rollout="{rid}",model="m",version="2",state="halted"}} 1' in metrics
    assert f'edge_rollout_wave{{rollout="{rid}",model="m",version="2"}} 2' in metrics
    assert 'gate="activation",result="fail"} 1' in metrics


def test_next_is_refused_for_a_wave_that_has_not_started(db):  # noqa: F811
    """Promoting a wave whose devices were never sent the version would leave them out of the rollout for good (the
    next wave starts only its own devices): next acts on a wave that has started, pending waves are refused."""
    store = RolloutStore(db)
    now = time.time()
    rollout = {
        "id": "r1", "name": "m-2", "model": "m", "version": "2", "state": "paused", "reason": "", "spec": {},
        "wave": 0, "phase": "pending", "phase_until": None, "extended": False,
        "waves": [{"index": i, "state": "pending"} for i in range(2)], "created_at": now, "updated_at": now,
    }  # fmt: skip
    rows = [{"device_id": f"cam-{i}", "hw_class": "x86", "wave": i, "previous": "1", "state": "waiting",
             "target": None, "applied": True, "pushed_at": None, "activated_at": None} for i in range(2)]  # fmt: skip
    store.create(rollout, rows, {"kind": "created", "wave": None, "reason": "", "data": {}})
    actions = RolloutActions(db, store, Deployments(db, None))  # type: ignore[arg-type]
    with pytest.raises(EdgeError, match="wave 1 of rollout r1 has not started"):
        actions.next("r1")
    assert store.get("r1")["wave"] == 0
    store.transition(store.get("r1"), "wave_started", "", {}, Change({"phase": "activating"}))
    assert actions.next("r1")["wave"] == 1


def send_telemetry(controller, device_id: str, version: str, ms: float, seqs: range, ts: float) -> None:
    """A sample every 0.1 s from `ts` (seq growing, as an agent's), 100 requests each at `ms`, no errors."""
    ingest = controller.bg.controller.fleet.telemetry
    for i, seq in enumerate(seqs):
        at = ts + 0.1 * i
        model = ModelTelemetry(name="m", version=version, requests=100, latency=[(latency_bucket(ms), 100)],
                               latency_sum_ms=100 * ms, latency_max_ms=ms)  # fmt: skip
        message = Telemetry(device_id=device_id, ts=at, seq=seq, start=at - 0.1, interval_s=0.1, models=[model])
        ingest.submit(device_id, message.encode())
    assert ingest.flush()


def wave_one_baking(controller, mlp_model, new_ms: float, *options: str) -> tuple[dict, str, list[str]]:
    """Three x86 devices on m 1 (5 ms p95 in their telemetry), a rollout of m 2 in waves 1,100%: the first wave's
    device reports serving it and sends its telemetry at `new_ms`. The rollout, that device, the rest."""
    database = controller.bg.controller.db
    fleet = [f"x86-{i}" for i in range(3)]
    now = time.time()
    for device_id in fleet:
        database.record_presence(device_id, True, {**X86, "labels": {"site": "lab"}}, "1.0", None)
        send_telemetry(controller, device_id, "1", 5.0, range(1, 6), now - 1.0)
    controller.client.upload_model(mlp_model, "m", "1")
    controller.client.deploy("m", "1", fleet)
    rollout = edgectl(controller, "rollout", "start", str(mlp_model), "--name", "m", "--version", "2", "--select",
                      "site=lab", "--waves", "1,100%", "--bake", "2", "--activate-timeout", "60", "--min-requests",
                      "50", "--seed", "3", *options)  # fmt: skip
    rid = rollout["id"]
    (first,) = rollout["waves"][0]["devices"]
    wait_until(lambda: database.get_deployment(first, "m")["version"] == "2", 20, "wave 1 sent version 2")
    database.record_state(first, [{"name": "m", "version": "2", "state": "serving", "serving": {"version": "2"}}])
    wait_until(lambda: controller.client.rollout(rid)["phase"] == "baking", 20, "wave 1 baking")
    send_telemetry(controller, first, "2", new_ms, range(6, 9), time.time())
    return controller.client.rollout(rid), first, sorted(set(fleet) - {first})


def test_on_fail_halt_stops_on_a_failed_gate_and_reverts_nothing(controller, mlp_model):
    """A version 10x slower than the previous one on the wave-1 device: the latency gate fails, the rollout halts
    with the gate and its figures in its reason, the wave's device stays on the new version and the rest never
    receive it (--on-fail halt: the operator decides)."""
    database = controller.bg.controller.db
    rollout, first, rest = wave_one_baking(controller, mlp_model, 50.0, "--on-fail", "halt")
    rid = rollout["id"]
    done = wait_until(lambda: (r := controller.client.rollout(rid))["state"] != "running" and r, 30, "a decision")
    assert done["state"] == "halted", done["reason"]
    assert done["reason"].startswith("wave 1 failed: x86") and "p95 ratio 10.0" in done["reason"]
    assert done["reason"].endswith("halted without reverting (--on-fail halt)")
    (gates,) = done["waves"][0]["classes"].values()
    assert gates["failed_gates"] == ["latency"] and gates["latency"]["median_p95_ratio"] == 10.0
    assert done["waves"][0]["state"] == "failed" and done["devices"][first]["state"] == "serving"
    failed = controller.client.rollout_events(rid)[-1]
    assert failed["kind"] == "wave_failed" and failed["data"]["reverted"] == []
    time.sleep(2.0)  # engine ticks (1 s) after the decision: still nothing reverted, nothing more sent
    assert database.get_deployment(first, "m")["version"] == "2"
    assert all(database.get_deployment(d, "m")["version"] == "1" for d in rest)
    assert controller.client.rollout_events(rid)[-1]["seq"] == failed["seq"]


def test_rollout_events_lists_each_decision_with_its_figures(controller, mlp_model):
    """`edgectl rollout events ID` (and --json) on a rollout whose wave 1 passed its gates: every event in order,
    the decision with the figures it was made on."""
    rollout, first, rest = wave_one_baking(controller, mlp_model, 5.0)
    rid = rollout["id"]
    wait_until(lambda: kinds(controller, rid).count("wave_started") == 2, 30, "wave 1 passed, wave 2 started")

    events = edgectl(controller, "rollout", "events", rid)
    assert events == controller.client.rollout_events(rid)
    assert [e["kind"] for e in events] == ["created", "started", "wave_started", "activated", "wave_passed",
                                           "wave_started"]  # fmt: skip
    by_kind = {e["kind"]: e for e in events}
    assert by_kind["activated"]["data"] == {"serving": 1, "failed": {}, "pending": 0}
    passed = by_kind["wave_passed"]
    assert passed["wave"] == 0 and passed["reason"] == "wave 1 passed its gates"
    (gates,) = passed["data"]["classes"].values()
    assert gates["verdict"] == "pass" and gates["latency"]["median_p95_ratio"] == 1.0
    assert gates["errors"]["requests_new"] == 300 and gates["evidence"]["devices_with_min_requests"] == 1
    assert passed["data"]["devices"] == 1 and passed["data"]["cpu_s"] >= 0
    assert events[-1]["data"]["devices"] == rest and events[-1]["reason"] == "wave 2: 2 device(s)"

    text = CliRunner().invoke(app, ["rollout", "events", rid, "--controller", controller.url])
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert len(lines) == len(events)
    for line, event in zip(lines, events, strict=True):
        seq, _stamp, kind, *rest_of_line = line.split()
        assert (int(seq), kind) == (event["seq"], event["kind"]), line
        assert line.rstrip().endswith(event["reason"]), line
    assert "wave 1" in lines[4] and "wave 2" in lines[5] and "wave 2: 2 device(s)" in lines[5]
