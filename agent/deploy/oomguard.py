"""The OOM safety net: if the kernel's OOM killer ends the agent despite the memory budget, the next start knows it
and does not load the same set again blindly.

The agent keeps `data_dir/memory-run.json`: its memory cgroup's oom_kill count (v2 memory.events, v1
memory.oom_control) as last seen, whether the run stopped cleanly, and the models' most recent use and footprints.
It is written at start, after each load and on the health thread's ticks (so a trial worker the OOM killer took, as
designed, is not blamed on the agent), and on a clean stop. A start that finds the last run ended without a clean
stop while the count rose was OOM-killed: it says so (log and status), leaves out the version that was loading
(the crash guard's mark: refused for that attempt, `edgectl push --retry` tries again), and restores the rest one at
a time, most recently used first, only while each fits what is free of the budget."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.deploy.crashguard import Mark
from agent.fetch.store import ModelStore, Refusal
from protocol.files import atomic_write

log = logging.getLogger(__name__)


@dataclass
class OomRestart:
    """What a start found: the last run was OOM-killed (kills before -> now), what was left out and why."""

    kills_before: int
    kills_now: int
    recent: list[str]  # model names, most recently used first
    footprints: dict[str, float]
    left_out: dict[str, str] = field(default_factory=dict)  # name -> one-line reason
    skip: set[str] = field(default_factory=set)  # names not restored at all (a new version's older one still is)
    loading: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (version, sha256) it died loading
    restored: list[str] = field(default_factory=list)

    def order(self, names: list[str]) -> list[str]:
        """Most recently used first; models never used in the last run after them, in their stored order."""
        rank = {n: i for i, n in enumerate(self.recent)}
        return sorted(names, key=lambda n: rank.get(n, len(rank)))

    def fits(self, name: str, free_mb: float) -> bool:
        """Restore `name` only if its last footprint fits what is free of the budget now (unknown: it is tried)."""
        if name in self.skip:
            return False
        need = self.footprints.get(name)
        if need is not None and need > free_mb:
            self.skip.add(name)
            self.left_out[name] = (
                f"needs ~{need:.0f} MiB, {max(free_mb, 0):.0f} MiB free of the budget after an OOM kill; "
                "not restored (its next desired state loads it under the budget)"
            )
            return False
        return True

    def summary(self) -> str:
        """One line for the log and the status."""
        left = "; ".join(f"{n}: {why}" for n, why in self.left_out.items())
        return (
            f"oom_killed: the kernel's OOM killer ended the agent (cgroup oom_kill {self.kills_before} -> "
            f"{self.kills_now}, no clean stop); restored one at a time, most recently used first: "
            f"{', '.join(self.restored) or 'none'}" + (f"; left out {left}" if left else "")
        )


class OomGuard:
    """`data_dir/memory-run.json` (see the module's docstring); `kills` reads the cgroup's oom_kill count."""

    def __init__(self, data_dir: Path, kills: Callable[[], int | None]) -> None:
        self.path = data_dir / "memory-run.json"
        self.kills = kills
        self._recent: list[str] = []
        self._footprints: dict[str, float] = {}

    def check(self, marks: dict[str, Mark], store: ModelStore) -> OomRestart | None:
        """At start, before the crash guard's recover() (which drops a dead run's loading marks): was the last run
        OOM-killed? If so refuse the version that was loading for its attempt and say what a restore must do."""
        last = self._load()
        now = self.kills()
        self._recent, self._footprints = list(last.get("recent", [])), dict(last.get("footprints", {}))
        before = last.get("oom_kills")
        killed = bool(last) and not last.get("clean", True) and now is not None and before is not None
        killed = killed and now > before  # type: ignore[operator]
        self.save(clean=False)
        if not killed:
            return None
        found = OomRestart(int(before), int(now), list(self._recent), dict(self._footprints))  # type: ignore[arg-type]
        for name, mark in marks.items():
            if mark.phase not in ("loading", "restoring") or mark.clean:
                continue
            what = "loading it" if mark.phase == "loading" else "restoring it at start"
            reason = f"the kernel's OOM killer ended the agent while {what} ({name} {mark.version}); not loaded again"
            found.left_out[name] = reason
            found.loading[name] = (mark.version, mark.sha256)
            if mark.phase == "restoring":
                found.skip.add(name)
            else:  # a new version: refused for this attempt; the version before it serves
                store.reject(name, mark.sha256, Refusal(reason + " (edgectl push --retry tries again)", "oom_killed",
                                                        mark.attempt))  # fmt: skip
                store.fall_back(name, mark.sha256)
        log.error("%s", found.summary())
        return found

    def note(self, names: list[str], last_used: dict[str, float], footprints: dict[str, float]) -> None:
        """The models' order of use (this run's requests first, then the last run's order) and footprints now, with
        the cgroup's count (a trial worker's kill is no death of the agent's): written only when something changed."""
        rank = {n: i for i, n in enumerate(self._recent)}
        recent = sorted(names, key=lambda n: (-last_used.get(n, 0.0), rank.get(n, len(rank))))
        if recent == self._recent and footprints == self._footprints and self._last_kills == self.kills():
            return
        self._recent, self._footprints = list(recent), dict(footprints)
        self.save(clean=False)

    def stopped_cleanly(self) -> None:
        self.save(clean=True)

    _last_kills: int | None = None

    def save(self, clean: bool) -> None:
        self._last_kills = self.kills()
        state = {"oom_kills": self._last_kills, "clean": clean, "at": time.time(), "recent": self._recent,
                 "footprints": self._footprints}  # fmt: skip
        try:
            atomic_write(self.path, json.dumps(state).encode())
        except OSError as exc:
            log.warning("cannot write %s (%s): an OOM kill of this run will not be recognised", self.path, exc)

    def _load(self) -> dict:
        try:
            raw = json.loads(self.path.read_text())
            return raw if isinstance(raw, dict) else {}
        except FileNotFoundError:
            return {}
        except (ValueError, OSError) as exc:
            log.error("%s unreadable (%s); ignoring it", self.path, exc)
            return {}
