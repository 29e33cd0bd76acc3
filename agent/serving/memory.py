"""The agent's memory budget: how much it may use and how much it uses now.

The budget is `memory_budget_mb` when configured, else the limit of the memory cgroup the agent runs in (systemd
`MemoryMax`, a container's limit: cgroup v2 `memory.max` or v1 `memory.limit_in_bytes`, the lowest on the way up
from the agent's own group, read from /proc/self/cgroup), else the machine's MemTotal minus a reserve. What is used
is the cgroup's usage less its file cache (the kernel drops that before it kills anything), or, outside a limited
cgroup, the resident memory of the agent and its children (the trial worker)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MIB = 1 << 20
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass
class Cgroup:
    """The agent's memory cgroup: its directory and the hierarchy's version (1 or 2)."""

    path: Path
    version: int

    def read(self, name: str, at: Path | None = None) -> str | None:
        try:
            return ((at or self.path) / name).read_text()
        except OSError:
            return None

    def limit(self, ceiling: int) -> int | None:
        """The lowest limit from this group up to the hierarchy's root; None when none is under `ceiling`."""
        name = "memory.max" if self.version == 2 else "memory.limit_in_bytes"
        root = CGROUP_ROOT if self.version == 2 else CGROUP_ROOT / "memory"
        lowest: int | None = None
        at = self.path
        while True:
            text = (self.read(name, at) or "").strip()
            if text.isdigit() and int(text) < ceiling:
                lowest = int(text) if lowest is None else min(lowest, int(text))
            if at == root or at.parent == at or root not in at.parents:
                return lowest
            at = at.parent

    def used(self) -> int:
        """Usage less the file cache (active and inactive): what reclaim cannot give back."""
        usage = self.read("memory.current" if self.version == 2 else "memory.usage_in_bytes")
        stat = _pairs(self.read("memory.stat") or "")
        prefix = "" if self.version == 2 else "total_"
        cache = stat.get(f"{prefix}inactive_file", 0) + stat.get(f"{prefix}active_file", 0)
        return max(int(usage or 0) - cache, 0)

    def oom_kills(self) -> int:
        """Processes the kernel's OOM killer ended in this group (v2 memory.events, v1 memory.oom_control)."""
        text = self.read("memory.events" if self.version == 2 else "memory.oom_control") or ""
        return _pairs(text).get("oom_kill", 0)


def _pairs(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def own_cgroup(proc_cgroup: str = "/proc/self/cgroup") -> Cgroup | None:
    """The memory cgroup this process is in (v1's memory controller first, else the v2 unified group)."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    unified: Cgroup | None = None
    for line in lines:
        hid, controllers, rel = (line.split(":", 2) + ["", ""])[:3]
        rel = rel.lstrip("/")
        if "memory" in controllers.split(","):
            mount = CGROUP_ROOT / "memory"
            path = mount / rel
            return Cgroup(path if (path / "memory.limit_in_bytes").exists() else mount, 1)
        if hid == "0" and controllers == "":
            path = CGROUP_ROOT / rel
            if (path / "memory.current").exists():
                unified = Cgroup(path, 2)
            elif (CGROUP_ROOT / "memory.current").exists() or (CGROUP_ROOT / "memory.stat").exists():
                unified = Cgroup(CGROUP_ROOT, 2)  # a container sees its own group as the root
    return unified


def mem_total() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tree_rss(pid: int | None = None) -> int:
    """Resident memory of a process and its children (the trial worker counts too)."""
    try:
        import psutil
    except ImportError:
        from targets.footprint import rss_bytes

        return rss_bytes()
    proc = psutil.Process(pid or os.getpid())
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total


@dataclass
class Budget:
    """How much memory the agent may use (bytes), where that figure comes from, and how to read what it uses."""

    limit: int
    source: str
    cgroup: Cgroup | None = None

    @property
    def limit_mb(self) -> float:
        return self.limit / MIB

    def used(self) -> int:
        if self.cgroup is not None:
            return self.cgroup.used()
        return tree_rss()

    def free_mb(self) -> float:
        return (self.limit - self.used()) / MIB

    def oom_kills(self) -> int | None:
        return self.cgroup.oom_kills() if self.cgroup is not None else None

    def describe(self) -> str:
        return f"{self.limit_mb:.0f} MiB ({self.source})"


def find_budget(configured_mb: float | None = None, reserve_mb: float = 256.0) -> Budget:
    """The budget: configured, else the cgroup's limit, else MemTotal minus `reserve_mb`."""
    total = mem_total() or (1 << 62)
    group = own_cgroup()
    limit = group.limit(total) if group is not None else None
    measured = group if limit is not None else None  # an unlimited group's usage is not the agent's alone
    if configured_mb:
        return Budget(int(configured_mb * MIB), "memory_budget_mb", measured)
    if limit is not None and group is not None:
        name = "memory.max" if group.version == 2 else "memory.limit_in_bytes"
        return Budget(limit, f"cgroup v{group.version} {name} of {group.path}", group)
    reserve = int(reserve_mb * MIB)
    return Budget(max(total - reserve, total // 2), f"MemTotal less a {reserve_mb:.0f} MiB reserve")
