"""The evidence a wave is judged on, read from what the controller stores: each device's telemetry windows of the new
version after it activated and of its previous version before the push, the not-yet-updated devices of its class in
the same period (the peers), and what its reported state says (serving, rolled back, the shadow check's agreement).
Two telemetry queries per decision (the wave's devices, their peers), summed in the database, whatever the wave's
size."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from controller.db.database import Database
from controller.rollouts.gates import DeviceEvidence, PeerRestarts, Window
from controller.telemetry.drift import drift_verdict
from controller.telemetry.tracker import QualityTracker

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


# -- the telemetry, aggregated in the database --------------------------------------------------------------------
# Each decision reads per device and part ("old": its previous version in the baseline window before the push, "new":
# the new version since it was seen serving it, "peer": a not-yet-updated device's version other than the new one
# since the wave activated) the sums of requests and errors, the largest latency, the latency histogram by bucket,
# and where the telemetry `seq` went backwards (the agent restarted). The database expands the stored JSON and sums;
# Python sees a few rows per device instead of parsing every telemetry row (1.4 s of CPU per decision for a
# 500-device wave before: bench/README.md). Rows: (device, part, bucket, a, b, c) with bucket -1 = the totals
# (requests, errors, max ms), bucket >= 0 = a histogram bucket (count, 0, 0), part "restart" = (-, seq before, seq
# after, ts) and part "seen" = (-, telemetry rows, 0, 0).

_WAVE_ROWS = {
    "postgresql": """
SELECT t.device_id, t.ts, rd.previous, coalesce(rd.pushed_at, :now) AS pushed, rd.activated_at, t.payload::jsonb AS j
FROM rollout_devices rd JOIN telemetry t ON t.device_id = rd.device_id
WHERE rd.rollout_id = :rollout AND rd.wave = :wave AND rd.state IN ('pushed', 'serving', 'failed')
  AND t.ts >= coalesce(rd.pushed_at, :now) - :baseline""",
    "sqlite": """
SELECT t.device_id, t.ts, rd.previous, coalesce(rd.pushed_at, :now) AS pushed, rd.activated_at, t.payload AS j
FROM rollout_devices rd JOIN telemetry t ON t.device_id = rd.device_id
WHERE rd.rollout_id = :rollout AND rd.wave = :wave AND rd.state IN ('pushed', 'serving', 'failed')
  AND t.ts >= coalesce(rd.pushed_at, :now) - :baseline""",
}
_PEER_ROWS = {
    "postgresql": """
SELECT t.device_id, t.ts, CAST(NULL AS VARCHAR) AS previous, CAST(:now AS DOUBLE PRECISION) AS pushed,
       CAST(:since AS DOUBLE PRECISION) AS activated_at, t.payload::jsonb AS j
FROM unnest(CAST(:peers AS VARCHAR[])) AS p(id) JOIN telemetry t ON t.device_id = p.id AND t.ts >= :since""",
    "sqlite": """
SELECT t.device_id, t.ts, NULL AS previous, :now AS pushed, :since AS activated_at, t.payload AS j
FROM telemetry t WHERE t.device_id IN :peers AND t.ts >= :since""",
}
# part of a model entry: the wave's own rows are "new" or "old" by version and time; a peer's are "peer"
_PART = {
    "wave": """CASE WHEN {version} = :version AND r.activated_at IS NOT NULL AND r.ts >= r.activated_at THEN 'new'
                    WHEN {version} = r.previous AND r.ts < r.pushed THEN 'old' END""",
    "peer": "CASE WHEN {version} <> :version THEN 'peer' END",
}
_AGGREGATE = {
    "postgresql": """
WITH r AS MATERIALIZED ({rows}),
m AS MATERIALIZED (
  SELECT r.device_id, {part} AS part, e
  FROM r CROSS JOIN LATERAL jsonb_array_elements(coalesce(r.j -> 'models', '[]'::jsonb)) e
  WHERE e ->> 'name' = :model
),
s AS (
  SELECT r.device_id, r.ts, coalesce((r.j ->> 'seq')::bigint, 0) AS seq,
         lag(coalesce((r.j ->> 'seq')::bigint, 0)) OVER (PARTITION BY r.device_id ORDER BY r.ts) AS before
  FROM r WHERE r.activated_at IS NOT NULL AND r.ts >= r.activated_at
)
SELECT device_id, part, -1 AS bucket, sum(coalesce((e ->> 'requests')::bigint, 0))::float8,
       sum(coalesce((e ->> 'errors')::bigint, 0))::float8, max(coalesce((e ->> 'latency_max_ms')::float8, 0))
FROM m WHERE part IS NOT NULL GROUP BY device_id, part
UNION ALL
SELECT device_id, part, (b ->> 0)::int, sum((b ->> 1)::bigint)::float8, 0, 0
FROM m CROSS JOIN LATERAL jsonb_array_elements(coalesce(e -> 'latency', '[]'::jsonb)) b
WHERE part IS NOT NULL GROUP BY device_id, part, (b ->> 0)::int
UNION ALL
SELECT device_id, 'restart', 0, before::float8, seq::float8, ts FROM s WHERE seq < before
UNION ALL
SELECT device_id, 'seen', 0, count(*)::float8, 0, 0 FROM s GROUP BY device_id""",
    "sqlite": """
WITH r AS ({rows}),
m AS (
  SELECT r.device_id, {part} AS part, e.value AS e
  FROM r, json_each(r.j, '$.models') e
  WHERE json_extract(e.value, '$.name') = :model
),
s AS (
  SELECT r.device_id, r.ts, coalesce(json_extract(r.j, '$.seq'), 0) AS seq,
         lag(coalesce(json_extract(r.j, '$.seq'), 0)) OVER (PARTITION BY r.device_id ORDER BY r.ts) AS before
  FROM r WHERE r.activated_at IS NOT NULL AND r.ts >= r.activated_at
)
SELECT device_id, part, -1 AS bucket, sum(coalesce(json_extract(e, '$.requests'), 0)),
       sum(coalesce(json_extract(e, '$.errors'), 0)), max(coalesce(json_extract(e, '$.latency_max_ms'), 0))
FROM m WHERE part IS NOT NULL GROUP BY device_id, part
UNION ALL
SELECT device_id, part, json_extract(b.value, '$[0]'), sum(json_extract(b.value, '$[1]')), 0, 0
FROM m, json_each(m.e, '$.latency') b
WHERE part IS NOT NULL GROUP BY device_id, part, json_extract(b.value, '$[0]')
UNION ALL
SELECT device_id, 'restart', 0, before, seq, ts FROM s WHERE seq < before
UNION ALL
SELECT device_id, 'seen', 0, count(*), 0, 0 FROM s GROUP BY device_id""",
}
_VERSION = {"postgresql": "e ->> 'version'", "sqlite": "json_extract(e.value, '$.version')"}


@dataclass
class Measured:
    """One device's telemetry as the database summed it: a window per part, the restarts seen (telemetry `seq` went
    backwards: (ts, seq before, seq after)) and how many telemetry rows the restart check read."""

    parts: dict[str, Window] = field(default_factory=dict)
    restarts: list[tuple[float, int, int]] = field(default_factory=list)
    rows: int = 0

    def window(self, part: str) -> Window:
        return self.parts.get(part) or Window()

    def restarted(self) -> str | None:
        if not self.restarts:
            return None
        ts, before, after = self.restarts[0]
        more = f" (+{len(self.restarts) - 1} more)" if len(self.restarts) > 1 else ""
        return f"restarted (telemetry seq {before} -> {after} at {ts:.1f}){more}"


def _aggregate(db: Database, which: str, params: dict[str, Any]) -> dict[str, Measured]:
    dialect = "postgresql" if db.engine.dialect.name == "postgresql" else "sqlite"
    rows = (_WAVE_ROWS if which == "wave" else _PEER_ROWS)[dialect]
    part = _PART[which].format(version=_VERSION[dialect])
    query = sa.text(_AGGREGATE[dialect].format(rows=rows, part=part))
    if which == "peer" and dialect == "sqlite":
        query = query.bindparams(sa.bindparam("peers", expanding=True))
    found: dict[str, Measured] = {}
    with db.engine.connect() as conn:
        if dialect == "postgresql":  # the set-returning functions' row estimates (100 each) make the plan look costly
            conn.execute(sa.text("SET LOCAL jit = off"))  # enough to JIT-compile it: 0.6 s for a 0.1 s query
        for device_id, kind, bucket, a, b, c in conn.execute(query, params):
            measured = found.setdefault(device_id, Measured())
            if kind == "restart":
                measured.restarts.append((float(c), int(a), int(b)))
            elif kind == "seen":
                measured.rows = int(a)
            elif bucket < 0:
                window = measured.parts.setdefault(kind, Window())
                window.requests += int(a)
                window.errors += int(b)
                window.max_ms = max(window.max_ms, float(c or 0.0))
            else:
                window = measured.parts.setdefault(kind, Window())
                window.latency[int(bucket)] = window.latency.get(int(bucket), 0) + int(a)
    for measured in found.values():
        measured.restarts.sort()
    return found


def wave_telemetry(
    db: Database, rollout: Mapping[str, Any], wave: int, baseline_s: float, now: float
) -> dict[str, Measured]:
    """The wave's devices (those that took the new version): "old" and "new" windows and restarts since serving."""
    params = {"rollout": rollout["id"], "wave": wave, "now": now, "baseline": baseline_s, "model": rollout["model"],
              "version": rollout["version"]}  # fmt: skip
    return _aggregate(db, "wave", params)


def peer_telemetry(db: Database, rollout: Mapping[str, Any], ids: Sequence[str], since: float, now: float):
    """Not-yet-updated devices: their "peer" window (any version but the new one) and restarts since `since`."""
    found: dict[str, Measured] = {}
    ids = sorted(set(ids))
    for i in range(0, len(ids), CHUNK):
        params = {"peers": ids[i : i + CHUNK], "since": since, "now": now, "model": rollout["model"],
                  "version": rollout["version"]}  # fmt: skip
        found.update(_aggregate(db, "peer", params))
    return found


def collect(
    db: Database,
    rollout: Mapping[str, Any],
    wave_rows: Sequence[Mapping[str, Any]],
    peers: Mapping[str, Sequence[str]],
    device_rows: Mapping[str, Mapping[str, Any]],
    since: float,
    now: float,
) -> tuple[dict[str, list[DeviceEvidence]], dict[str, Window], dict[str, PeerRestarts]]:
    """class -> the wave devices' evidence, class -> the peers' pooled window since `since` (the wave's activation),
    and class -> the peers' restarts in that period (what a wave device's restart is compared with). Two queries
    (the wave, the peers), whatever the wave's size."""
    model, version = rollout["model"], rollout["version"]
    baseline_s = float(rollout["spec"].get("baseline_s", 600))
    wave = wave_rows[0]["wave"] if wave_rows else rollout["wave"]
    measured = wave_telemetry(db, rollout, wave, baseline_s, now) if wave_rows else {}
    by_class: dict[str, list[DeviceEvidence]] = {}
    for row in wave_rows:
        device_id = row["device_id"]
        evidence = DeviceEvidence(device_id, had_previous=row["previous"] is not None)
        if row["state"] == "failed":
            evidence.activation = row["detail"] or "failed to activate"
        elif row["state"] != "serving" or row["activated_at"] is None:
            evidence.activation = None  # pending: judged with a later decision
        mine = measured.get(device_id) or Measured()
        evidence.old = mine.window("old")
        if evidence.activation == "ok":
            evidence.new = mine.window("new")
            entry = model_entry(device_rows.get(device_id), model)
            evidence.harm = harm(entry, version)
            evidence.restart = mine.restarted()
            evidence.agreement, evidence.agreement_pairs = agreement(entry, row["previous"])
        by_class.setdefault(row["hw_class"], []).append(evidence)
    seen = peer_telemetry(db, rollout, [d for ids in peers.values() for d in ids], since, now)
    pooled: dict[str, Window] = {}
    restarts: dict[str, PeerRestarts] = {}
    for hw_class, ids in peers.items():
        window, counted = Window(), PeerRestarts()
        for device_id in ids:
            mine = seen.get(device_id)
            if mine is None:
                continue
            window.merge(mine.window("peer"))
            counted.seen += mine.rows > 0
            if mine.restarts:
                counted.restarted[device_id] = mine.restarted() or ""
        pooled[hw_class] = window
        restarts[hw_class] = counted
    return by_class, pooled, restarts


def add_drift(
    quality: QualityTracker | None, model: str, version: str, by_class: Mapping[str, list[DeviceEvidence]]
) -> None:
    """With --no-new-drift: each serving device's quality window of `version` (its track's last judged chunk, or its
    own baseline once built) against the previous version's baseline on the same device (drift.drift_verdict, the
    tracker's settings); why not, when the tracker lacks either."""
    for devices in by_class.values():
        for d in devices:
            if d.activation != "ok":
                continue
            track = quality.track(d.device_id, model) if quality is not None else None
            if quality is None or track is None or track.version != version:
                d.drift_missing = f"no quality summary of {version} yet"
            elif track.previous is None:
                d.drift_missing = "no baseline of the previous version on this device"
            elif (window := track.last_chunk or (track.baseline if track.frozen else None)) is None:
                rows = track.baseline.count if track.baseline else 0
                d.drift_missing = f"building the baseline of {version}: {rows}/{quality.settings.baseline_rows} rows"
            else:
                d.drift = drift_verdict(track.previous[1], window, quality.settings)
