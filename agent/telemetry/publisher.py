"""Publishes one Telemetry message per interval; keeps what the broker could not take in a bounded disk queue.

Every interval the publisher takes the window from the Recorder, samples resources and publishes one compact message
(QoS 1) on `{prefix}/v1/devices/{id}/telemetry`, waiting for the broker's PUBACK. A sample the broker did not take
(disconnected, or no PUBACK in time) is appended to the disk queue: one file per sample, named by a growing counter,
so replay is in order. The queue is bounded in bytes; when full the oldest samples are deleted and counted (the count
travels in every later message as `dropped`). After a reconnect the live sample goes first and the backlog drains
behind it at `replay_rate` samples per second, oldest first, each deleted only after its PUBACK. On shutdown the
window in memory is written to the queue, and goes out after the next start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.telemetry.resources import ResourceSampler
from agent.telemetry.stats import Recorder
from protocol import QOS, Telemetry

log = logging.getLogger(__name__)

PUBACK_TIMEOUT_S = 5.0
# A broker's PUBACK means it took the sample, not that the controller got it: a broker that stops right after, or a
# controller that goes away before its offline will reaches us, loses what it had in hand. Samples acknowledged this
# long before such a loss are sent again after it (the controller stores a (device_id, ts) once).
IN_DOUBT_S = 5.0


class DiskQueue:
    """Samples as files `<counter>.json` in one directory, bounded in total bytes (oldest dropped, counted)."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        for stale in self.dir.glob("*.tmp"):
            stale.unlink(missing_ok=True)
        self._files: list[tuple[int, int]] = []  # (counter, size), oldest first
        for path in self.dir.glob("*.json"):
            if path.stem.isdigit():
                self._files.append((int(path.stem), path.stat().st_size))
        self._files.sort()
        self._next = (self._files[-1][0] + 1) if self._files else 0
        self.bytes = sum(size for _, size in self._files)
        self._dropped_file = self.dir / "dropped"
        try:
            self.dropped = int(self._dropped_file.read_text())
        except (OSError, ValueError):
            self.dropped = 0

    def __len__(self) -> int:
        return len(self._files)

    def _path(self, counter: int) -> Path:
        return self.dir / f"{counter:016d}.json"

    def put(self, payload: bytes) -> None:
        with self._lock:
            if len(payload) > self.max_bytes:
                self._count_dropped(1)
                return
            dropped = 0
            while self._files and self.bytes + len(payload) > self.max_bytes:
                counter, size = self._files.pop(0)
                self._path(counter).unlink(missing_ok=True)
                self.bytes -= size
                dropped += 1
            if dropped:
                self._count_dropped(dropped)
            counter = self._next
            self._next += 1
            tmp = self.dir / f"{counter:016d}.tmp"
            tmp.write_bytes(payload)
            os.replace(tmp, self._path(counter))
            self._files.append((counter, len(payload)))
            self.bytes += len(payload)

    def _count_dropped(self, n: int) -> None:
        self.dropped += n
        log.warning("telemetry queue full (%d bytes): dropped %d oldest sample(s)", self.max_bytes, n)
        with contextlib.suppress(OSError):
            self._dropped_file.write_text(str(self.dropped))

    def peek(self) -> tuple[int, bytes] | None:
        with self._lock:
            if not self._files:
                return None
            counter = self._files[0][0]
        try:
            return counter, self._path(counter).read_bytes()
        except OSError:
            self.remove(counter)
            return None

    def remove(self, counter: int) -> None:
        with self._lock:
            for i, (c, size) in enumerate(self._files):
                if c == counter:
                    del self._files[i]
                    self.bytes -= size
                    break
            self._path(counter).unlink(missing_ok=True)


class TelemetryPublisher:
    def __init__(
        self,
        device_id: str,
        topic: str,
        recorder: Recorder,
        link,
        queue_dir: Path,
        *,
        interval_s: float = 10.0,
        queue_bytes: int = 16 << 20,
        replay_rate: float = 20.0,
        data_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self.device_id = device_id
        self.topic = topic
        self.recorder = recorder
        self.link = link
        self.interval_s = interval_s
        self.replay_rate = replay_rate
        self.queue = DiskQueue(queue_dir, queue_bytes)
        self.resources = ResourceSampler(data_dir or queue_dir)
        # {"resources": {...}, "models": {name: {...}}} merged into each message (the memory budget's figures)
        self.memory: Callable[[], dict[str, Any]] | None = None
        self.clock = clock
        self.ready = ready or (lambda: True)  # e.g. "the controller is online": else samples wait on disk
        self.seq = 0
        self.published = 0
        self.window_start = clock()
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._reconnected = False
        self._lock = threading.Lock()
        self._recent: deque[tuple[float, bytes]] = deque()  # (sent at, payload) of the last IN_DOUBT_S
        self._sendable = False
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)

    def start(self) -> None:
        self.resources.sample()  # reference point for CPU percentages and network counters
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop and write the window in memory to the disk queue (sent after the next start)."""
        self._stop.set()
        self._kick.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if not self._can_send():
            self._requeue_in_doubt()
        try:
            self.queue.put(self.sample().encode())
        except Exception:
            log.exception("could not write the last telemetry sample to %s", self.queue.dir)

    def on_connected(self) -> None:
        """Called when sending becomes possible again (reconnect, controller back online): requeue what was in doubt,
        and wake the loop, which sends a live sample at once if a backlog waits, then drains it."""
        self._requeue_in_doubt()
        self._reconnected = True
        self._kick.set()

    def _watch_link(self) -> None:
        """Forget samples past doubt while sending works; requeue the doubtful ones once it stops working."""
        sendable = self._can_send()
        if sendable:
            cutoff = time.monotonic() - IN_DOUBT_S
            with self._lock:
                while self._recent and self._recent[0][0] < cutoff:
                    self._recent.popleft()
        elif self._sendable:
            self._requeue_in_doubt()
        self._sendable = sendable

    def _requeue_in_doubt(self) -> None:
        with self._lock:
            doubtful = [payload for _, payload in self._recent]
            self._recent.clear()
        for payload in doubtful:
            self.queue.put(payload)
        if doubtful:
            log.info("%d telemetry sample(s) sent just before the link went away will be sent again", len(doubtful))

    def sample(self) -> Telemetry:
        """Close the current window and describe it."""
        with self._lock:
            end = self.clock()
            models = self.recorder.take()
            resources = self.resources.sample()
            if self.memory is not None:  # the budget's figures, and each model's footprint and residency
                figures = self.memory()
                resources = resources.model_copy(update=figures["resources"])
                models = [m.model_copy(update=figures["models"].get(m.name, {})) for m in models]
            self.seq += 1
            message = Telemetry(
                device_id=self.device_id,
                ts=end,
                seq=self.seq,
                start=self.window_start,
                interval_s=self.interval_s,
                models=models,
                resources=resources,
                dropped=self.queue.dropped,
            )
            self.window_start = end
        return message

    def _run(self) -> None:
        next_at = time.monotonic() + self.interval_s
        while not self._stop.is_set():
            self._watch_link()
            now = time.monotonic()
            live_first = self._reconnected and len(self.queue) > 0 and self._can_send()
            self._reconnected = False
            if now >= next_at or live_first:
                next_at = max(next_at + self.interval_s, now)  # no catch-up bursts after a stall
                self.publish_or_queue(self.sample().encode())
            if len(self.queue) and self._can_send():
                self._drain(until=next_at)
            self._kick.wait(timeout=max(0.0, next_at - time.monotonic()))
            self._kick.clear()

    def publish_or_queue(self, payload: bytes) -> bool:
        if self._send(payload):
            return True
        self.queue.put(payload)
        return False

    def _can_send(self) -> bool:
        return self.link.connected.is_set() and self.ready()

    def _send(self, payload: bytes) -> bool:
        if not self._can_send():
            return False
        try:
            info = self.link.publish(self.topic, payload, QOS["telemetry"])
            info.wait_for_publish(timeout=PUBACK_TIMEOUT_S)
            ok = info.is_published()
        except (RuntimeError, ValueError):
            ok = False
        if ok:
            self.published += 1
            with self._lock:
                self._recent.append((time.monotonic(), payload))
        return ok

    def _drain(self, until: float) -> None:
        """Replay the backlog oldest first at `replay_rate` per second, stopping at the next live sample."""
        gap = 1.0 / self.replay_rate if self.replay_rate > 0 else 0.0
        while not self._stop.is_set() and time.monotonic() < until:
            item = self.queue.peek()
            if item is None:
                return
            counter, payload = item
            if not self._send(payload):
                return  # broker gone again: the item stays queued
            self.queue.remove(counter)
            if gap and self._stop.wait(gap):
                return
