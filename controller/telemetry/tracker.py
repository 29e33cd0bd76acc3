"""Where each (device, model) stands on quality drift: its baseline (the version's first stable windows, merged
until they hold `baseline_rows` rows, or rebuilt from now on when the operator says so), the chunk of windows
gathering towards the next verdict (judged once it holds `min_rows` rows: one window at a busy device, several at a
quiet one), and the last verdict. The previous version's baseline is kept when a new version starts (rollout gates
compare the two), and the last judged chunk of every device feeds the fleet comparison (the same model version
across devices).

With a `store` (the database: controller/db/quality.py) baselines are shared: a frozen baseline is stored and the
first stored wins (`save`, after each batch), `refresh` (at start and every minute) adopts what other replicas stored
and drops a baseline reset through another replica, and `reset` is written for them to read.

Stable: the baseline is gathered in two halves of `baseline_rows / 2` rows, and the second judged against the first
as any window is; halves that differ (a version's first minutes while a cache warms, a scene still changing) start
it again from the second half, at most `UNSTABLE_TRIES` times, then it is kept and its status says it moved."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from controller.db.quality import QualityBaselineTables
from controller.telemetry.drift import DEFAULT_SETTINGS, DriftSettings, Verdict, drift_verdict
from controller.telemetry.peers import compare
from controller.telemetry.summary import Summary, from_window
from protocol import MAX_TELEMETRY_MODELS

log = logging.getLogger(__name__)

UNSTABLE_TRIES = 4  # baselines restarted because its halves differed, before one is kept as it is


@dataclass
class Track:
    version: str
    baseline: Summary | None = None
    frozen: bool = False  # the baseline holds baseline_rows rows and is judged against
    chunk: Summary | None = None
    last_chunk: Summary | None = None
    verdict: Verdict | None = None
    previous: tuple[str, Summary] | None = None  # the version before and its baseline
    since: float = 0.0  # when this baseline began
    generation: int = 0  # the operator's resets of this baseline (the stored row's)
    stored: bool = False  # the baseline is the one in the database (stored by this replica or adopted)
    first_half: Summary | None = None  # a baseline being gathered: its first half, judged against the rest
    restarts: int = 0  # times the baseline started again because its halves differed
    unstable: str = ""  # what moved between the halves last time

    def status(self, settings: DriftSettings) -> dict[str, Any]:
        base = self.baseline.count if self.baseline else 0
        data: dict[str, Any] = {"version": self.version, "baseline_rows": base, "baseline_since": self.since}
        if self.restarts:
            data["baseline_restarts"] = self.restarts
            data["baseline_unstable"] = self.unstable
        if not self.frozen:
            base += self.first_half.count if self.first_half else 0
            data["state"] = f"building baseline: {base}/{settings.baseline_rows} rows"
            if self.unstable:
                data["state"] += f" (started again {self.restarts}x: its halves differed, {self.unstable})"
        elif self.verdict is None:
            data["state"] = f"gathering: {self.chunk.count if self.chunk else 0}/{settings.min_rows} rows"
        else:
            data["state"] = "drift" if self.verdict.flagged else "ok"
            data.update(self.verdict.to_json())
        return data


class QualityTracker:
    def __init__(self, settings: DriftSettings = DEFAULT_SETTINGS, store: QualityBaselineTables | None = None) -> None:
        self.settings = settings
        self.store = store
        self._tracks: dict[tuple[str, str], Track] = {}
        self._per_device: dict[str, int] = {}
        self._unsaved: set[tuple[str, str]] = set()  # frozen here, not stored yet
        self._lock = threading.Lock()

    def observe(self, device_id: str, model: Any, ts: float) -> Track | None:
        """Fold one window (FastModelTelemetry) in; the track, or None when the window has no quality fields."""
        summary = from_window(model)
        if summary is None:
            return None
        key = (device_id, model.name)
        with self._lock:
            track = self._tracks.get(key)
            if track is None:
                held = self._per_device.get(device_id, 0)
                if held >= MAX_TELEMETRY_MODELS:
                    return None  # a device cycling model names cannot grow this
                self._per_device[device_id] = held + 1
                track = self._tracks[key] = Track(model.version, since=ts)
            elif track.version != model.version:
                previous = (track.version, track.baseline) if track.frozen and track.baseline else track.previous
                track = self._tracks[key] = Track(model.version, previous=previous, since=ts)
            if self._fold(track, summary) and self.store is not None:
                self._unsaved.add(key)
            return track

    def _fold(self, track: Track, summary: Summary) -> bool:
        """Fold a window into the baseline or the chunk; True when it froze the baseline."""
        settings = self.settings
        if not track.frozen:
            return _gather_baseline(track, summary, settings)
        track.chunk = track.chunk.merged(summary) if track.chunk else summary
        if track.chunk.count < settings.min_rows or track.baseline is None:
            return False
        track.verdict = drift_verdict(track.baseline, track.chunk, settings)
        track.last_chunk, track.chunk = track.chunk, None
        if track.verdict.flagged:
            log.info("quality drift on %s: %s", track.version, "; ".join(track.verdict.moved[:3]))
        return False

    def reset(self, device_id: str, model: str | None = None, since: float = 0.0) -> int:
        """A new baseline from the next windows on (the operator's `edgectl drift baseline`), stored for the other
        replicas; how many were reset."""
        with self._lock:
            keys = [k for k in self._tracks if k[0] == device_id and (model is None or k[1] == model)]
            for key in keys:
                old = self._tracks[key]
                self._tracks[key] = Track(old.version, previous=old.previous, since=since, generation=old.generation)
                self._unsaved.discard(key)
            current = {k[1]: self._tracks[k].version for k in keys}
        if self.store is None:
            return len(keys)
        count = self.store.reset_quality_baselines(device_id, model, current, since or time.time())
        self.refresh()  # the new generation
        return max(count, len(keys))

    # -- the database: shared by replicas, kept over restarts ---------------------------------------------------

    def save(self) -> None:
        """Store the baselines frozen here since the last call; adopt what is stored (another replica's first)."""
        if self.store is None:
            return
        with self._lock:
            pending = [(k, t, t.baseline) for k in self._unsaved if (t := self._tracks.get(k)) and t.baseline]
            self._unsaved.clear()
        for i, ((device, model), track, baseline) in enumerate(pending):
            try:
                row = self.store.store_quality_baseline(
                    device, model, track.version, track.generation, baseline.count, json.dumps(baseline.to_json()),
                    time.time(),
                )  # fmt: skip
            except Exception:
                with self._lock:  # stored with the next batch
                    self._unsaved.update(key for key, t, _ in pending[i:] if self._tracks.get(key) is t)
                raise
            with self._lock:
                if self._tracks.get((device, model)) is track:
                    self._adopt((device, model), track, row)

    def refresh(self) -> None:
        """Adopt the stored baselines: another replica's, a reset made through another replica, or (at start)
        every device's current and previous version as before the restart."""
        if self.store is None:
            return
        rows = self.store.quality_baselines()
        by_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in rows:
            by_key.setdefault((row["device_id"], row["model"]), []).append(row)
        with self._lock:
            for key, versions in by_key.items():
                versions.sort(key=lambda r: r["updated_at"], reverse=True)
                track = self._tracks.get(key)
                if track is None:
                    held = self._per_device.get(key[0], 0)
                    if held >= MAX_TELEMETRY_MODELS:
                        continue
                    self._per_device[key[0]] = held + 1
                    newest = versions[0]
                    older = next((r for r in versions[1:] if r["summary"]), None)
                    previous = (older["version"], Summary.from_json(json.loads(older["summary"]))) if older else None
                    track = self._tracks[key] = Track(newest["version"], previous=previous, since=newest["since"])
                stored = next((r for r in versions if r["version"] == track.version), None)
                if stored is not None:
                    self._adopt(key, track, stored)

    def _adopt(self, key: tuple[str, str], track: Track, row: dict[str, Any]) -> None:
        """Make the track hold the stored row's baseline (caller holds the lock): a newer generation (a reset)
        starts the baseline anew; a stored summary of this generation replaces one built here."""
        if row["generation"] > track.generation:
            track = self._tracks[key] = Track(
                track.version, previous=track.previous, since=row["since"], generation=row["generation"]
            )
            self._unsaved.discard(key)
        if row["generation"] != track.generation or not row["summary"] or track.stored:
            return
        track.baseline, track.frozen, track.stored = Summary.from_json(json.loads(row["summary"])), True, True
        track.first_half = None
        self._unsaved.discard(key)

    def track(self, device_id: str, model: str) -> Track | None:
        with self._lock:
            return self._tracks.get((device_id, model))

    def status(self, device_id: str, model: str) -> dict[str, Any] | None:
        with self._lock:
            track = self._tracks.get((device_id, model))
            return track.status(self.settings) if track else None

    def fleet(
        self, model: str, devices: set[str] | None = None, classes: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Each device's last judged chunk of `model` against its peers' (the same version on the same hardware
        class: `classes`, device -> class) merged, and per class the devices that differ (peers.py): a device whose
        inputs or outputs differ from its peers' shows here even when it drifted from its first day."""
        with self._lock:
            chunks = [
                (device, t.version, t.last_chunk)
                for (device, name), t in self._tracks.items()
                if name == model and t.last_chunk is not None and (devices is None or device in devices)
            ]
        return compare(chunks, classes or {}, self.settings)


def _gather_baseline(track: Track, summary: Summary, settings: DriftSettings) -> bool:
    """Fold a window into a baseline being gathered (`track.baseline` holds the half being filled); True when the
    baseline froze: both halves in and alike, or alike enough after UNSTABLE_TRIES restarts."""
    track.baseline = track.baseline.merged(summary) if track.baseline else summary
    half = settings.baseline_rows / 2
    if track.first_half is None:
        if track.baseline.count >= half:
            track.first_half, track.baseline = track.baseline, None
        return False
    if track.baseline.count < half:
        return False
    verdict = drift_verdict(track.first_half, track.baseline, settings)
    track.unstable = "; ".join(verdict.moved[:2]) if verdict.flagged else ""  # what the last comparison saw move
    if verdict.flagged and track.restarts < UNSTABLE_TRIES:
        track.restarts += 1
        track.first_half, track.baseline = track.baseline, None
        log.info("quality baseline of %s started again: its halves differed (%s)", track.version, track.unstable)
        return False
    track.baseline, track.first_half, track.frozen = track.first_half.merged(track.baseline), None, True
    return True
