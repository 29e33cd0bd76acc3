"""What an operator asks of rollouts (the HTTP API calls these): plan one (--dry-run), start it, pause, resume,
promote the current wave by hand, abort (the emergency stop: every device that took the new version reverted at
once, in the caller's thread). Each is a transition of the store, so it races safely with the engine's tick."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from controller.db.database import Database
from controller.fleet.deployments import Deployments
from controller.rollouts import labels
from controller.rollouts.effects import apply_pending, revert_target
from controller.rollouts.engine import TOOK_NEW
from controller.rollouts.plan import parse_waves, plan_waves
from controller.rollouts.store import Change, RolloutStore, Stale
from protocol.errors import EdgeError

RUNTIME_FOR_FORMAT = {"onnx": ("onnxruntime",), "openvino": ("openvino",), "tflite": ("litert", "tflite_runtime")}
OnFail = Literal["halt", "revert-wave", "revert-all"]


@dataclass
class RolloutRequest:
    model: str
    version: str
    name: str = ""
    selector: dict[str, str] = field(default_factory=dict)
    waves: str = "1,10%,50%,100%"
    bake_s: float = 600.0
    activate_timeout_s: float = 600.0
    max_p95_ratio: float = 1.10
    max_error_delta: float = 0.5
    min_agreement: float | None = None
    no_new_drift: bool = False
    min_requests: int = 200
    on_fail: OnFail = "revert-wave"
    seed: int | None = None
    size: int | None = None  # a dry run of a version not registered yet: its file's size and format
    format: str | None = None


def incompatible(device: labels.Labelled, fmt: str, size: int, disk_free_mb: float | None) -> str | None:
    """Why the device cannot take the model (no runtime for its format, too little disk), or None."""
    runtimes = (device.row.get("hardware") or {}).get("runtimes")
    if isinstance(runtimes, Mapping) and not any(runtimes.get(r) for r in RUNTIME_FOR_FORMAT.get(fmt, ())):
        return f"no runtime for {fmt} models (needs {' or '.join(RUNTIME_FOR_FORMAT.get(fmt, ()))})"
    if disk_free_mb is not None and disk_free_mb * (1 << 20) < 2 * size:
        return f"too little disk: {disk_free_mb:.0f} MB free, the model needs {2 * size / (1 << 20):.1f} MB"
    return None


class RolloutActions:
    def __init__(
        self, db: Database, store: RolloutStore, deployments: Deployments,
        disk_free_mb: Callable[[str], float | None] = lambda _: None,
    ) -> None:  # fmt: skip
        self.db = db
        self.store = store
        self.deployments = deployments
        self.disk_free_mb = disk_free_mb

    def plan(self, req: RolloutRequest) -> dict[str, Any]:
        """The waves (devices per wave and class), bytes to move, devices that cannot take the model, conflicts."""
        row = self.db.get_model(req.model, req.version)
        if row is None and req.size is None:
            raise EdgeError(f"model {req.model!r} version {req.version!r} is not registered", "unknown_model")
        size, fmt = (row.size, row.format) if row is not None else (req.size or 0, req.format or "onnx")
        steps = parse_waves(req.waves)
        selected = labels.select(self.db, req.selector)
        cannot = {}
        for d in selected:
            why = incompatible(d, fmt, size, self.disk_free_mb(d.id))
            if why:
                cannot[d.id] = why
        conflicts = self.store.claimed(req.model, [d.id for d in selected])
        able = [d for d in selected if d.id not in cannot and d.id not in conflicts]
        classes: dict[str, list[str]] = {}
        for d in able:
            classes.setdefault(d.hw_class, []).append(d.id)
        seed = req.seed if req.seed is not None else uuid.uuid4().int % 1_000_000
        waves = plan_waves(classes, steps, seed)
        of = {d.id: d.hw_class for d in able}
        moving = [d.id for d in able if (self.db.get_deployment(d.id, req.model) or {}).get("version") != req.version]
        return {
            "model": req.model, "version": req.version, "selector": req.selector, "seed": seed,
            "devices": len(able), "bytes": size * len(moving), "format": fmt,
            "waves": [{"index": i, "step": str(step), "devices": ids,
                       "classes": {c: sum(of[d] == c for d in ids) for c in sorted(classes)}}
                      for i, (step, ids) in enumerate(zip(steps, waves, strict=True))],
            "incompatible": cannot, "conflicts": conflicts,
            "classes": {c: len(ids) for c, ids in sorted(classes.items())},
        }  # fmt: skip

    def start(self, req: RolloutRequest) -> str:
        """Create the rollout (state planned; the engine starts it on its next tick); its id."""
        if self.db.get_model(req.model, req.version) is None:
            raise EdgeError(f"model {req.model!r} version {req.version!r} is not registered", "unknown_model")
        plan = self.plan(req)
        if plan["conflicts"]:
            held = sorted(set(plan["conflicts"].values()))
            raise EdgeError(
                f"{len(plan['conflicts'])} selected device(s) are in active rollout(s) {held} of {req.model}; "
                "finish or abort those first (one active rollout per device and model)",
                "rollout_conflict",
            )
        if not plan["devices"]:
            raise EdgeError(
                f"the selector {req.selector or '(every device)'} matches no device that can take {req.model} "
                f"(incompatible: {len(plan['incompatible'])}); `edgectl devices --select ...` lists what matches",
                "no_devices",
            )
        now, rollout_id = time.time(), uuid.uuid4().hex[:12]
        spec = {
            "selector": req.selector, "waves": req.waves, "bake_s": req.bake_s, "seed": plan["seed"],
            "activate_timeout_s": req.activate_timeout_s, "max_p95_ratio": req.max_p95_ratio,
            "max_error_delta": req.max_error_delta, "min_agreement": req.min_agreement,
            "no_new_drift": req.no_new_drift, "min_requests": req.min_requests, "on_fail": req.on_fail,
            "baseline_s": max(req.bake_s, 60.0),
        }  # fmt: skip
        waves = [{"index": w["index"], "step": w["step"], "state": "pending", "classes": {}, "started_at": None,
                  "decided_at": None} for w in plan["waves"]]  # fmt: skip
        classes = {d.id: d.hw_class for d in labels.select(self.db, req.selector)}
        devices = []
        for wave in plan["waves"]:
            for device_id in wave["devices"]:
                current = self.db.get_deployment(device_id, req.model)
                devices.append({
                    "device_id": device_id, "hw_class": classes[device_id], "wave": wave["index"],
                    "previous": current["version"] if current else None, "state": "waiting", "target": None,
                    "applied": True,
                })  # fmt: skip
        row = {
            "id": rollout_id, "name": req.name or f"{req.model}-{req.version}", "model": req.model,
            "version": req.version, "state": "planned", "reason": "", "spec": spec, "wave": 0, "phase": "pending",
            "phase_until": None, "extended": False, "waves": waves, "created_at": now, "updated_at": now,
        }  # fmt: skip
        event = {
            "kind": "created",
            "wave": None,
            "reason": f"{len(devices)} device(s) in {len(waves)} wave(s)",
            "data": {"spec": spec, "plan": {k: plan[k] for k in ("waves", "incompatible", "classes")}},
        }
        self.store.create(row, devices, event)
        return rollout_id

    def _act(self, rollout_id: str, act: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        """Run an action from the rollout as read now; once again if the engine moved it meanwhile."""
        for _ in range(3):
            try:
                return act(self.store.get(rollout_id))
            except Stale:
                continue
        raise EdgeError(f"rollout {rollout_id} is changing too fast to act on; try again", "rollout_state")

    @staticmethod
    def _require(rollout: Mapping[str, Any], action: str, states: tuple[str, ...]) -> None:
        if rollout["state"] not in states:
            raise EdgeError(
                f"cannot {action} rollout {rollout['id']}: it is {rollout['state']} (only when {' or '.join(states)})",
                "rollout_state",
            )

    def pause(self, rollout_id: str) -> dict[str, Any]:
        def act(r: dict[str, Any]) -> dict[str, Any]:
            self._require(r, "pause", ("planned", "running"))
            return self.store.transition(r, "paused", "paused by the operator", {},
                                         Change({"state": "paused", "reason": "paused by the operator"}))  # fmt: skip

        return self._act(rollout_id, act)

    def resume(self, rollout_id: str) -> dict[str, Any]:
        """Running again; a wave that was baking bakes a full --bake again (with one extension)."""

        def act(r: dict[str, Any]) -> dict[str, Any]:
            self._require(r, "resume", ("paused",))
            change = Change({"state": "running", "reason": ""})
            if r["phase"] == "baking":
                change.rollout.update(phase_until=time.time() + r["spec"]["bake_s"], extended=False)
            return self.store.transition(r, "resumed", "resumed by the operator", {}, change)

        return self._act(rollout_id, act)

    def next(self, rollout_id: str) -> dict[str, Any]:
        """Promote the current wave by hand (the operator's decision, recorded as such) and run on."""

        def act(r: dict[str, Any]) -> dict[str, Any]:
            self._require(r, "promote", ("planned", "running", "paused"))
            index = r["wave"]
            if r["phase"] == "pending":  # its devices were never sent the version: promoting would skip them
                raise EdgeError(f"wave {index + 1} of rollout {r['id']} has not started: nothing to promote yet "
                                "(resume it, or wait for the wave to start)", "rollout_state")  # fmt: skip
            waves = [dict(w) for w in r["waves"]]
            waves[index].update(state="promoted", decided_at=time.time())
            change = Change({"state": "running", "reason": "", "phase": "pending", "phase_until": None,
                             "extended": False, "waves": waves})  # fmt: skip
            if index + 1 >= len(waves):
                change.rollout.update(state="completed", reason="the last wave was promoted by the operator")
                change.release = True
            else:
                change.rollout["wave"] = index + 1
            return self.store.transition(r, "promoted", f"wave {index + 1} promoted by the operator", {}, change)

        return self._act(rollout_id, act)

    def abort(self, rollout_id: str) -> dict[str, Any]:
        """Stop and revert every device that took the new version, now (not on the next tick)."""

        def act(r: dict[str, Any]) -> dict[str, Any]:
            self._require(r, "abort", ("planned", "running", "paused", "halted"))
            rows = self.store.devices(r["id"])
            took = [row for row in rows if row["state"] in TOOK_NEW]
            change = Change({"state": "aborted", "reason": f"aborted by the operator; reverted {len(took)} device(s)"},
                            release=True)  # fmt: skip
            for row in took:
                change.devices.append(([row["device_id"]], {"state": "reverted", "target": revert_target(row),
                                                            "applied": False}))  # fmt: skip
            data = {"reverted": [row["device_id"] for row in took]}
            return self.store.transition(r, "aborted", change.rollout["reason"], data, change)

        rollout = self._act(rollout_id, act)
        apply_pending(self.store, self.deployments, rollout, self.store.devices(rollout_id))
        return rollout
