"""The evidence a wave is judged on, read from what the controller stores: each device's telemetry windows of the new
version after it activated and of its previous version before the push, the not-yet-updated devices of its class in
the same period (the peers), and what its reported state says (serving, rolled back, the shadow check's agreement).
One telemetry query per decision, whatever the wave's size."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from controller.db.database import Database
from controller.db.schema import telemetry
from controller.rollouts.gates import DeviceEvidence, Window

log = logging.getLogger(__name__)
CHUNK = 500


def model_entry(device: Mapping[str, Any] | None, model: str) -> dict[str, Any] | None:
    """The device's reported state of `model`, or None."""
    for entry in (device or {}).get("state") or []:
        if entry.get("name") == model:
            return entry
    return None


def activation(entry: Mapping[str, Any] | None, version: str) -> tuple[str, str] | None:
    """("serving", "") once the device serves `version`; ("failed", why) when it reports that version failed; None
    while it is on its way."""
    if entry is None:
        return None
    if (entry.get("serving") or {}).get("version") == version:
        return "serving", ""
    if entry.get("version") == version and entry.get("state") == "failed":
        reason = (entry.get("reason") or {}).get("message") or "no reason given"
        return "failed", f"reported {version} failed: {reason}"[:500]
    return None


def harm(entry: Mapping[str, Any] | None, version: str) -> str | None:
    """Why a device that activated `version` no longer serves it (rolled back, failed), or None."""
    if entry is None:
        return "reports no state for the model any more"
    serving = (entry.get("serving") or {}).get("version")
    if serving != version:
        reason = (entry.get("reason") or {}).get("message")
        return f"rolled back to {serving or 'nothing'}" + (f": {reason}" if reason else "")
    return None


def agreement(entry: Mapping[str, Any] | None, previous: str | None) -> tuple[float | None, int]:
    """The shadow check's agreement with the previous version on live inputs, and its pairs (None, 0 without)."""
    shadow = (entry or {}).get("shadow") or {}
    if shadow.get("inputs") != "live" or shadow.get("agreement") is None:
        return None, 0
    if previous is not None and shadow.get("against") not in (None, previous):
        return None, 0
    return float(shadow["agreement"]), int(shadow.get("pairs") or 0)


def windows(db: Database, device_ids: Iterable[str], since: float) -> dict[str, list[tuple[float, dict[str, Any]]]]:
    """device -> its telemetry samples (ts, parsed message) with ts >= since, oldest first."""
    found: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    ids = sorted(set(device_ids))
    with db.engine.connect() as conn:
        for i in range(0, len(ids), CHUNK):
            query = sa.select(telemetry.c.device_id, telemetry.c.ts, telemetry.c.payload).where(
                telemetry.c.device_id.in_(ids[i : i + CHUNK]), telemetry.c.ts >= since
            )
            for device_id, ts, payload in conn.execute(query):
                try:
                    found.setdefault(device_id, []).append((ts, json.loads(payload)))
                except ValueError:
                    continue
    for samples in found.values():
        samples.sort(key=lambda s: s[0])
    return found


def _add(window: Window, entry: Mapping[str, Any]) -> None:
    window.add(
        int(entry.get("requests") or 0), int(entry.get("errors") or 0), entry.get("latency") or [],
        float(entry.get("latency_max_ms") or 0.0),
    )  # fmt: skip


def summed(
    samples: Sequence[tuple[float, dict[str, Any]]], model: str, accept: Any, start: float, end: float | None
) -> tuple[Window, str | None]:
    """The model's windows with start <= ts < end whose version `accept` takes, summed; and a restart seen among them
    (the agent's telemetry `seq` starts again at each start of the agent)."""
    window = Window()
    last_seq: int | None = None
    restarted = None
    for ts, message in samples:
        if ts < start or (end is not None and ts >= end):
            continue
        for entry in message.get("models") or []:
            if entry.get("name") == model and accept(entry.get("version")):
                _add(window, entry)
                seq = message.get("seq")
                if isinstance(seq, int):
                    if last_seq is not None and seq < last_seq:
                        restarted = f"restarted (telemetry seq {last_seq} -> {seq})"
                    last_seq = seq
    return window, restarted


def collect(
    db: Database,
    rollout: Mapping[str, Any],
    wave_rows: Sequence[Mapping[str, Any]],
    peers: Mapping[str, Sequence[str]],
    device_rows: Mapping[str, Mapping[str, Any]],
    since: float,
    now: float,
) -> tuple[dict[str, list[DeviceEvidence]], dict[str, Window]]:
    """class -> the wave devices' evidence, and class -> the peers' pooled window since `since` (the wave's start)."""
    model, version = rollout["model"], rollout["version"]
    baseline_s = float(rollout["spec"].get("baseline_s", 600))
    earliest = min([r["pushed_at"] or now for r in wave_rows] + [since]) - baseline_s
    samples = windows(db, [r["device_id"] for r in wave_rows], earliest)
    samples.update(windows(db, [d for ids in peers.values() for d in ids], since))  # peers: this period only
    by_class: dict[str, list[DeviceEvidence]] = {}
    for row in wave_rows:
        device_id, pushed = row["device_id"], row["pushed_at"] or now
        evidence = DeviceEvidence(device_id, had_previous=row["previous"] is not None)
        if row["state"] == "failed":
            evidence.activation = row["detail"] or "failed to activate"
        elif row["state"] != "serving" or row["activated_at"] is None:
            evidence.activation = None  # pending: judged with a later decision
        mine = samples.get(device_id, [])
        evidence.old, _ = summed(mine, model, lambda v, p=row["previous"]: v == p, pushed - baseline_s, pushed)
        if evidence.activation == "ok":
            evidence.new, restarted = summed(mine, model, lambda v: v == version, row["activated_at"], None)
            entry = model_entry(device_rows.get(device_id), model)
            evidence.harm = harm(entry, version) or restarted
            evidence.agreement, evidence.agreement_pairs = agreement(entry, row["previous"])
        by_class.setdefault(row["hw_class"], []).append(evidence)
    pooled: dict[str, Window] = {}
    for hw_class, ids in peers.items():
        window = Window()
        for device_id in ids:
            part, _ = summed(samples.get(device_id, []), model, lambda v: v != version, since, None)
            window.merge(part)
        pooled[hw_class] = window
    return by_class, pooled
