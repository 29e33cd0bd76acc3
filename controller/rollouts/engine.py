"""The rollout state machine, driven by `tick()` on the replica holding the rollout lease. Per running rollout, the
current wave goes pending -> activating (the new version pushed, each device given --activate-timeout to report it
serving) -> baking (--bake seconds of evidence) -> a decision: passed (the next wave, or completed), failed (halt and
revert per --on-fail), or inconclusive (the bake extends once, then the rollout pauses). Every decision is a
transition of the store (an event with its figures, committed only from the seq it read); what a transition does
to the fleet is applied after it commits, idempotently (effects.py)."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from controller.db.database import Database
from controller.db.schema import devices as devices_table
from controller.db.schema import rollout_devices
from controller.fleet.deployments import Deployments
from controller.rollouts import labels
from controller.rollouts.effects import apply_pending, revert_target
from controller.rollouts.evidence import activation, add_drift, collect, harm, model_entry
from controller.rollouts.gates import Thresholds, judge_wave
from controller.rollouts.store import ACTIVE, Change, RolloutStore, Stale
from controller.telemetry.tracker import QualityTracker

log = logging.getLogger(__name__)

JOIN_EVERY_S = 5.0  # how often a running rollout looks for late joiners matching its selector
MAX_PEERS = 200  # not-yet-updated devices per class read as the same-period comparison
TOOK_NEW = ("pushed", "serving", "failed")  # device states that received the new version


def thresholds(spec: Mapping[str, Any]) -> Thresholds:
    return Thresholds(
        max_p95_ratio=spec["max_p95_ratio"], max_error_delta=spec["max_error_delta"],
        min_agreement=spec.get("min_agreement"), min_requests=spec["min_requests"],
        no_new_drift=bool(spec.get("no_new_drift", False)),
    )  # fmt: skip


def summary(verdict: Mapping[str, Any]) -> str:
    """The classes that failed (or lacked evidence) and the figures that decided it, in one line."""
    parts = []
    for hw_class, result in verdict["classes"].items():
        if result["verdict"] == "pass":
            continue
        gates = result["failed_gates"] or [g for g, v in result.items() if isinstance(v, dict) and
                                           v.get("verdict") == "inconclusive"]  # fmt: skip
        figures = []
        for gate in gates:
            g = result[gate]
            if gate == "latency":
                figures.append(f"p95 ratio {g.get('median_p95_ratio')} (peers {g.get('peer_p95_ratio')}) > "
                               f"{g.get('max_p95_ratio')} on {g.get('devices_compared')} device(s)")  # fmt: skip
            elif gate == "errors":
                figures.append(f"error increase >= {g.get('increase_lower_pct')} points (95% bound) on "
                               f"{g.get('requests_new')} requests")  # fmt: skip
            elif gate == "agreement":
                figures.append(f"agreement {g.get('agreement')} < {g.get('min_agreement')} ({g.get('pairs')} pairs)")
            elif gate == "drift":
                moved = sorted(g.get("drifted", {}).items())[:3]
                figures.append("drift on " + ", ".join(f"{d} ({what})" for d, what in moved) if moved else
                               f"no drift verdict on {g.get('devices_missing')} device(s)")  # fmt: skip
            elif gate == "evidence":
                figures.append(f"{g['devices_with_min_requests']}/{g['needed']} device(s) with {g['min_requests']} "
                               "requests")  # fmt: skip
            elif gate == "activation":
                figures.append(f"activation failed on {sorted(g['failed'])[:3]}" if g["failed"] else "no activation")
            elif gate == "harm":
                figures.append("harm on " + ", ".join(f"{d} ({why})" for d, why in sorted(g["devices"].items())[:3]))
        parts.append(f"{hw_class}: " + "; ".join(figures or gates))
    return " | ".join(parts)


class RolloutEngine:
    def __init__(
        self, db: Database, store: RolloutStore, deployments: Deployments, quality: QualityTracker | None = None
    ) -> None:
        self.db = db
        self.store = store
        self.deployments = deployments
        self.quality = quality  # the ingest's quality tracker: the drift gate (--no-new-drift) reads its tracks
        self._joined: dict[str, float] = {}  # rollout -> when it last looked for late joiners

    # -- the tick ----------------------------------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        """One pass over every active rollout (and any whose effects are still undone)."""
        now = time.time() if now is None else now
        for rollout in self.store.listed(ACTIVE) + self._undone():
            try:
                self.step(rollout, now)
            except Stale:
                log.info("rollout %s moved on elsewhere; read again next tick", rollout["id"])
            except Exception:
                log.exception("rollout %s: tick failed", rollout["id"])

    def _undone(self) -> list[dict[str, Any]]:
        query = sa.select(rollout_devices.c.rollout_id).where(rollout_devices.c.applied.is_(False)).distinct()
        with self.db.engine.connect() as conn:
            ids = list(conn.execute(query).scalars())
        return [r for r in (self.store.get(i) for i in ids) if r["state"] not in ACTIVE]

    def step(self, rollout: dict[str, Any], now: float) -> dict[str, Any]:
        rows = self.store.devices(rollout["id"])
        if apply_pending(self.store, self.deployments, rollout, rows):
            rows = self.store.devices(rollout["id"])
        if rollout["state"] == "planned":
            rollout = self.store.transition(rollout, "started", "", {}, Change({"state": "running"}), now)
        if rollout["state"] != "running":
            return rollout
        if now - self._joined.get(rollout["id"], 0.0) >= JOIN_EVERY_S:
            self._joined[rollout["id"]] = now
            rollout = self._join(rollout, rows, now)
            rows = self.store.devices(rollout["id"])
        if rollout["phase"] == "pending":
            return self._start_wave(rollout, rows, now)
        states = self._device_rows([r["device_id"] for r in rows if r["wave"] == rollout["wave"]])
        rows = self._observe(rollout, rows, states, now)
        wave_rows = [r for r in rows if r["wave"] == rollout["wave"] and r["state"] in TOOK_NEW]
        hurt = any(r["state"] == "failed" for r in wave_rows) or any(
            r["state"] == "serving" and harm(model_entry(states.get(r["device_id"]), rollout["model"]),
                                             rollout["version"]) for r in wave_rows
        )  # fmt: skip
        if rollout["phase"] == "activating":
            if any(r["state"] == "pushed" for r in wave_rows) and now < (rollout["phase_until"] or 0) and not hurt:
                return rollout
            serving = [r["device_id"] for r in wave_rows if r["state"] == "serving"]
            failed = {r["device_id"]: r["detail"] for r in wave_rows if r["state"] == "failed"}
            pending = sum(r["state"] == "pushed" for r in wave_rows)
            data = {"serving": len(serving), "failed": failed, "pending": pending}
            change = Change({"phase": "baking", "phase_until": now + rollout["spec"]["bake_s"]})
            change.rollout["waves"] = self._wave(rollout, state="baking", activated_at=now)
            rollout = self.store.transition(rollout, "activated", "", data, change, now)
            return self._decide(rollout, rows, states, now) if failed else rollout
        if rollout["phase"] == "baking" and (hurt or now >= (rollout["phase_until"] or 0)):
            return self._decide(rollout, rows, states, now, early=hurt and now < (rollout["phase_until"] or 0))
        return rollout

    # -- phases ------------------------------------------------------------------------------------------------------

    def _wave(self, rollout: Mapping[str, Any], **changes: Any) -> list[dict[str, Any]]:
        waves = copy.deepcopy(rollout["waves"])
        waves[rollout["wave"]].update(changes)
        return waves

    def _start_wave(self, rollout: dict[str, Any], rows: Sequence[Mapping[str, Any]], now: float) -> dict[str, Any]:
        index = rollout["wave"]
        joining = [r["device_id"] for r in rows if r["wave"] == index and r["state"] == "waiting"]
        if not joining:
            return self._advance(rollout, "wave_skipped", "no device left for this wave", {}, now, "skipped")
        spec = rollout["spec"]
        by_class: dict[str, int] = {}
        for r in rows:
            if r["device_id"] in joining:
                by_class[r["hw_class"]] = by_class.get(r["hw_class"], 0) + 1
        change = Change({"phase": "activating", "phase_until": now + spec["activate_timeout_s"]})
        change.rollout["waves"] = self._wave(rollout, state="activating", started_at=now)
        change.devices.append((joining, {"state": "pushed", "target": rollout["version"], "applied": False,
                                         "pushed_at": now}))  # fmt: skip
        data = {"devices": joining, "classes": by_class}
        rollout = self.store.transition(rollout, "wave_started", f"wave {index + 1}: {len(joining)} device(s)", data,
                                        change, now)  # fmt: skip
        apply_pending(self.store, self.deployments, rollout, self.store.devices(rollout["id"]))
        return rollout

    def _device_rows(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        with self.db.engine.connect() as conn:
            for i in range(0, len(ids), 500):
                query = sa.select(devices_table.c.id, devices_table.c.state, devices_table.c.online).where(
                    devices_table.c.id.in_(list(ids[i : i + 500]))
                )
                found.update({r.id: dict(r._mapping) for r in conn.execute(query)})
        return found

    def _observe(
        self, rollout: Mapping[str, Any], rows: list[dict[str, Any]], states: Mapping[str, Any], now: float
    ) -> list[dict[str, Any]]:
        """Devices seen serving the new version (or reporting it failed, or past their deadline): not decisions."""
        timeout = rollout["spec"]["activate_timeout_s"]
        serving = {"state": "serving", "activated_at": now}
        pushed = [row for row in rows if row["state"] == "pushed" and row["pushed_at"] is not None]
        seen = {row["device_id"]: activation(model_entry(states.get(row["device_id"]), rollout["model"]),
                                             rollout["version"]) for row in pushed}  # fmt: skip
        now_serving = [d for d, s in seen.items() if s is not None and s[0] == "serving"]
        if now_serving:  # a wave's devices mostly activate together: one transaction for them
            changed = self.store.observe_many(rollout["id"], now_serving, "pushed", **serving)
            for row in pushed:
                if row["device_id"] in changed:
                    row.update(serving)
        for row in pushed:
            if row["state"] != "pushed" or (seen[row["device_id"]] or ("",))[0] == "serving":
                continue
            failed = seen[row["device_id"]]
            values: dict[str, Any] = {}
            if failed is not None:
                values = {"state": "failed", "detail": failed[1]}
            elif now - row["pushed_at"] >= timeout:
                values = {"state": "failed", "detail": f"did not report serving {rollout['version']} within "
                                                       f"{timeout:g} s"}  # fmt: skip
            if values and self.store.observe(rollout["id"], row["device_id"], "pushed", **values):
                row.update(values)
        return rows

    def _decide(
        self, rollout: dict[str, Any], rows: list[dict[str, Any]], states: Mapping[str, Any], now: float,
        early: bool = False,
    ) -> dict[str, Any]:  # fmt: skip
        """Judge the current wave on its evidence and act on the verdict (early: only a failure acts)."""
        started = time.thread_time()
        index = rollout["wave"]
        wave_rows = [r for r in rows if r["wave"] == index and r["state"] in TOOK_NEW]
        peers: dict[str, list[str]] = {}
        for r in rows:
            if r["state"] == "waiting" and len(peers.setdefault(r["hw_class"], [])) < MAX_PEERS:
                peers[r["hw_class"]].append(r["device_id"])
        since = rollout["waves"][index].get("activated_at") or rollout["waves"][index].get("started_at") or now
        clock = time.monotonic()
        by_class, pooled, restarts = collect(self.db, rollout, wave_rows, peers, states, since, now)
        if rollout["spec"].get("no_new_drift"):
            add_drift(self.quality, rollout["model"], rollout["version"], by_class)
        verdict = judge_wave(by_class, pooled, thresholds(rollout["spec"]), restarts)
        data = {**verdict, "cpu_s": round(time.thread_time() - started, 4), "devices": len(wave_rows),
                "wall_s": round(time.monotonic() - clock, 4)}  # fmt: skip
        if verdict["verdict"] == "fail":
            return self._fail(rollout, rows, data, now)
        if early:
            return rollout
        if verdict["verdict"] == "pass":
            return self._advance(rollout, "wave_passed", f"wave {index + 1} passed its gates", data, now, "passed")
        why = f"wave {index + 1} inconclusive: {summary(verdict)}"
        if not rollout["extended"]:
            change = Change({"phase_until": now + rollout["spec"]["bake_s"], "extended": True})
            change.rollout["waves"] = self._wave(rollout, state="extended", classes=verdict["classes"])
            return self.store.transition(rollout, "bake_extended", why, data, change, now)
        change = Change({"state": "paused", "reason": f"{why}; evidence too thin: resume to bake again, or next"})
        change.rollout["waves"] = self._wave(rollout, state="inconclusive", classes=verdict["classes"])
        return self.store.transition(rollout, "paused", change.rollout["reason"], data, change, now)

    def _advance(
        self, rollout: dict[str, Any], kind: str, reason: str, data: dict[str, Any], now: float, state: str
    ) -> dict[str, Any]:
        index = rollout["wave"]
        change = Change({"phase": "pending", "phase_until": None, "extended": False})
        change.rollout["waves"] = self._wave(rollout, state=state, decided_at=now, classes=data.get("classes", {}))
        if index + 1 >= len(rollout["waves"]):
            change.rollout.update(state="completed", reason=f"every wave passed ({reason})")
            change.release = True
        else:
            change.rollout["wave"] = index + 1
        return self.store.transition(rollout, kind, reason, data, change, now)

    def _fail(self, rollout: dict[str, Any], rows: Sequence[Mapping[str, Any]], data: dict[str, Any], now: float):
        index, on_fail = rollout["wave"], rollout["spec"]["on_fail"]
        scope = [r for r in rows if r["state"] in TOOK_NEW and (on_fail == "revert-all" or r["wave"] == index)]
        if on_fail == "halt":
            scope = []
        reason = f"wave {index + 1} failed: {summary(data)}; " + (
            f"reverted {len(scope)} device(s) ({on_fail})" if scope else "halted without reverting (--on-fail halt)"
        )
        change = Change({"state": "halted", "reason": reason[:512]}, release=True)
        change.rollout["waves"] = self._wave(rollout, state="failed", decided_at=now, classes=data["classes"])
        for r in scope:
            change.devices.append(([r["device_id"]], {"state": "reverted", "target": revert_target(r),
                                                      "applied": False}))  # fmt: skip
        data = {**data, "reverted": [r["device_id"] for r in scope]}
        rollout = self.store.transition(rollout, "wave_failed", reason, data, change, now)
        apply_pending(self.store, self.deployments, rollout, self.store.devices(rollout["id"]))
        return rollout

    # -- late joiners ------------------------------------------------------------------------------------------------

    def _join(self, rollout: dict[str, Any], rows: Sequence[Mapping[str, Any]], now: float) -> dict[str, Any]:
        """Devices that came to match the selector since the plan enter the current wave."""
        known = {r["device_id"] for r in rows}
        fresh = [d for d in labels.select(self.db, rollout["spec"]["selector"]) if d.id not in known]
        if not fresh:
            return rollout
        held = self.store.claimed(rollout["model"], [d.id for d in fresh])
        fresh = [d for d in fresh if d.id not in held]
        if not fresh:
            return rollout
        pushing = rollout["phase"] != "pending"
        added = []
        for d in fresh:
            current = self.db.get_deployment(d.id, rollout["model"])
            added.append({
                "device_id": d.id, "hw_class": d.hw_class, "wave": rollout["wave"],
                "previous": current["version"] if current else None, "state": "pushed" if pushing else "waiting",
                "target": rollout["version"] if pushing else None, "applied": not pushing,
                "pushed_at": now if pushing else None,
            })  # fmt: skip
        ids = [a["device_id"] for a in added]
        reason = f"{len(ids)} device(s) joined wave {rollout['wave'] + 1}"
        return self.store.transition(rollout, "devices_joined", reason, {"devices": ids}, Change(added=added), now)
