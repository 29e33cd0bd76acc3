"""The crash-loop breaker: while a version is on trial in the agent's own process (loaded from disk at start,
loaded and checked before a swap, or serving inside its health window) a marker on disk names it. If a runtime's
native crash kills the agent meanwhile, the next start finds the marker, reads what Python's faulthandler wrote, and
refuses the version (after MAX_DEATHS deaths while it serves; at once when it died loading) instead of crashing
again: the previous version serves, and the reason names the signal and the runtime."""

from __future__ import annotations

import faulthandler
import json
import logging
import re
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Literal

from agent.fetch.store import ModelStore, Refusal
from protocol.files import atomic_write

log = logging.getLogger(__name__)

MAX_DEATHS = 2  # deaths of the agent while a version serves in its health window, before it is rolled back
Phase = Literal["restoring", "loading", "serving"]


@dataclass
class Mark:
    """A version on trial: `until` (wall clock) ends a serving mark; `deaths` counts agent deaths under it."""

    sha256: str
    version: str
    attempt: int
    phase: Phase
    until: float = 0.0
    deaths: int = 0
    clean: bool = False  # the agent stopped cleanly with this mark on: not a death


@dataclass(frozen=True)
class Death:
    """What a start found: the agent died while `mark` was on trial for `name`."""

    name: str
    mark: Mark
    cause: str  # "Segmentation fault in .../onnxruntime_inference_collection.py run (backend onnxruntime)"


class CrashGuard:
    """Marks by model name in `data_dir/on-trial.json`; faulthandler's reports go to `data_dir/crash.log`."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "on-trial.json"
        self.crash_log = data_dir / "crash.log"
        self._marks: dict[str, Mark] = {}
        self._lock = threading.Lock()
        self._log_file: IO[str] | None = None

    def arm(self) -> None:
        """Have faulthandler write the fatal signal and every thread's stack to crash.log (it does nothing else)."""
        self.crash_log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.crash_log.open("a")
        faulthandler.enable(self._log_file, all_threads=True)

    # -- while running -----------------------------------------------------------------------------------------------

    def begin(self, name: str, sha256: str, version: str, attempt: int, phase: Phase, window_s: float = 0.0) -> None:
        with self._lock:
            deaths = self._marks[name].deaths if name in self._marks and self._marks[name].sha256 == sha256 else 0
            until = time.time() + window_s if phase == "serving" else 0.0
            self._marks[name] = Mark(sha256, version, attempt, phase, until, deaths)
            self._save()

    def mark(self, name: str) -> Mark | None:
        with self._lock:
            return self._marks.get(name)

    def resume(self, name: str, mark: Mark | None) -> None:
        """After loading from disk: put back the serving mark the version had (its window goes on), or end it."""
        with self._lock:
            if mark is None:
                self._marks.pop(name, None)
            else:
                self._marks[name] = mark
            self._save()

    def end(self, name: str) -> None:
        """The version passed (or failed cleanly): the agent's death is no longer its fault."""
        with self._lock:
            if self._marks.pop(name, None) is not None:
                self._save()

    def stopped_cleanly(self) -> None:
        """A clean stop (SIGTERM) is no death: the marks stay, flagged, so a serving version keeps its count."""
        with self._lock:
            for mark in self._marks.values():
                mark.clean = True
            self._save()

    def expire(self) -> None:
        """End every serving mark whose health window is over."""
        now = time.time()
        with self._lock:
            done = [n for n, m in self._marks.items() if m.phase == "serving" and m.until <= now]
            for name in done:
                del self._marks[name]
            if done:
                self._save()

    # -- at start ----------------------------------------------------------------------------------------------------

    def left(self) -> dict[str, Mark]:
        """The marks the last run left on disk (read before recover(), which ends a killed run's loading marks)."""
        return self._load()

    def recover(self, store: ModelStore, window_s: float) -> list[Death]:
        """Count a death for every mark left by the last run when it died of a native crash (faulthandler recorded a
        fatal error) and refuse the versions that earned it; a serving mark below MAX_DEATHS stays, with a fresh
        health window. A death with no record (SIGKILL, power loss) is nobody's fault: the marks stay as they were."""
        marks = self._load()
        cause = self._last_crash()
        deaths = []
        for name, mark in list(marks.items()):
            if cause is None:
                mark.clean, mark.until = False, time.time() + window_s
                if mark.phase != "serving":
                    del marks[name]
                continue
            if mark.clean:  # stopped on purpose: a serving version goes on with a fresh window, the rest is moot
                mark.clean, mark.until = False, time.time() + window_s
                if mark.phase != "serving":
                    del marks[name]
                continue
            mark.deaths += 1
            deaths.append(Death(name, mark, cause))
            if mark.phase == "serving" and mark.deaths < MAX_DEATHS:
                mark.until = time.time() + window_s
                continue
            del marks[name]
            self._refuse(store, name, mark, cause)
        with self._lock:
            self._marks = marks
            self._save()
        return deaths

    def _refuse(self, store: ModelStore, name: str, mark: Mark, cause: str) -> None:
        where = {"restoring": "loading it at start", "loading": "loading it", "serving": "serving it"}[mark.phase]
        times = f" ({mark.deaths} times)" if mark.deaths > 1 else ""
        reason = f"the agent died while {where}{times}: {cause}; the version before it serves"
        log.error("%s %s refused: %s", name, mark.version, reason)
        store.reject(name, mark.sha256, Refusal(reason, "crashed", mark.attempt))
        store.fall_back(name, mark.sha256)

    def _last_crash(self) -> str | None:
        """The last fatal error faulthandler wrote, with the innermost frame of the thread that crashed; None when
        the last run left none (a clean stop, or killed: SIGKILL, out of memory, power loss)."""
        try:
            text = self.crash_log.read_text(errors="replace")[-65536:]
        except OSError:
            return None
        blocks = text.split("Fatal Python error: ")
        if len(blocks) < 2:
            return None
        last = blocks[-1]
        signal = last.splitlines()[0].strip()
        current = re.search(r"Current thread[^\n]*\n((?:\s+File [^\n]*\n?)+)", last)
        frames = re.findall(r"File \"([^\"]+)\", line \d+ in (\S+)", current.group(1)) if current else []
        where = f" in {_short(frames[0][0])} {frames[0][1]}" if frames else ""
        backend = next((Path(f).stem for f, _ in frames if "targets/backends/" in f.replace("\\", "/")), None)
        where += f" (backend {backend})" if backend else ""
        self.crash_log.write_text("")  # read once: the next death is not blamed on this one
        return f"{signal}{where}"

    def _load(self) -> dict[str, Mark]:
        try:
            raw = json.loads(self.path.read_text())
            return {name: Mark(**m) for name, m in raw.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError) as exc:
            log.error("crash marks at %s unreadable (%s); ignoring them", self.path, exc)
            return {}

    def _save(self) -> None:
        atomic_write(self.path, json.dumps({n: asdict(m) for n, m in self._marks.items()}).encode())


def _short(path: str) -> str:
    """site-packages/onnxruntime/... or targets/backends/... rather than the full path."""
    parts = Path(path).parts
    for anchor in ("site-packages", "dist-packages"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) + 1 :])
    return "/".join(parts[-3:])
