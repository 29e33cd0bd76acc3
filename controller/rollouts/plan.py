"""A rollout's plan: the waves as cumulative shares of the selected devices, each wave stratified by hardware class
(every class present gets a device in the first wave with room for it, then shares in proportion to its size), in a
seeded random order (the same seed and fleet give the same plan). Pure functions: no database."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from protocol.errors import EdgeError

DEFAULT_WAVES = "1,10%,50%,100%"
MAX_WAVES = 20
_STEP = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


@dataclass(frozen=True)
class WaveStep:
    """One wave's cumulative size: `count` devices, or `percent` of the selected devices."""

    count: int | None = None
    percent: float | None = None

    def target(self, total: int) -> int:
        """Devices updated once this wave is done (cumulative), at most `total`."""
        if self.percent is not None:
            return min(total, math.ceil(total * self.percent / 100 - 1e-9))
        return min(total, self.count or 0)

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else str(self.count)


def parse_waves(text: str) -> list[WaveStep]:
    """`1,10%,50%,100%` as wave steps: growing, the last reaching 100% (bad_rollout naming the problem)."""
    steps: list[WaveStep] = []
    for part in text.split(","):
        match = _STEP.match(part)
        if not match:
            raise EdgeError(f"--waves {text!r}: {part.strip()!r} is not a count or a percentage (e.g. 1,10%,50%,100%)",
                            "bad_rollout")  # fmt: skip
        number, percent = float(match.group(1)), bool(match.group(2))
        if percent and not 0 < number <= 100:
            raise EdgeError(f"--waves {text!r}: {part.strip()} is not a share in (0, 100]%", "bad_rollout")
        if not percent and (number < 1 or number != int(number)):
            raise EdgeError(f"--waves {text!r}: {part.strip()} is not a whole number of devices >= 1", "bad_rollout")
        steps.append(WaveStep(percent=number) if percent else WaveStep(count=int(number)))
    if not steps or len(steps) > MAX_WAVES:
        raise EdgeError(f"--waves {text!r}: give 1 to {MAX_WAVES} waves", "bad_rollout")
    if steps[-1].percent != 100:
        raise EdgeError(f"--waves {text!r}: the last wave must be 100% (every selected device)", "bad_rollout")
    return steps


def seeded_order(device_ids: Iterable[str], seed: int, hw_class: str) -> list[str]:
    """A class's devices in a random order fixed by the seed (sorted first: the database's order does not count)."""
    ordered = sorted(device_ids)
    random.Random(f"{seed}:{hw_class}").shuffle(ordered)
    return ordered


def allocate(sizes: Mapping[str, int], target: int, before: Mapping[str, int]) -> dict[str, int]:
    """How many devices of each class are updated once `target` devices are (cumulative, never fewer than `before`):
    first one per class not yet exposed while there is room (largest classes first), then one at a time to the class
    furthest below its proportional share."""
    alloc = {c: min(before.get(c, 0), n) for c, n in sizes.items()}
    total = sum(sizes.values())
    room = target - sum(alloc.values())
    for c in sorted(sizes, key=lambda c: (-sizes[c], c)):
        if room > 0 and alloc[c] == 0 and sizes[c] > 0:
            alloc[c] = 1
            room -= 1
    while room > 0:
        open_ = [c for c in sizes if alloc[c] < sizes[c]]
        if not open_:
            break
        c = max(open_, key=lambda c: (sizes[c] * target / total - alloc[c], sizes[c], c))
        alloc[c] += 1
        room -= 1
    return alloc


def plan_waves(classes: Mapping[str, Iterable[str]], steps: list[WaveStep], seed: int) -> list[list[str]]:
    """The devices each wave adds (wave i holds the devices first updated in it), from class -> device ids."""
    orders = {c: seeded_order(ids, seed, c) for c, ids in classes.items()}
    sizes = {c: len(ids) for c, ids in orders.items()}
    total = sum(sizes.values())
    waves: list[list[str]] = []
    before: dict[str, int] = dict.fromkeys(orders, 0)
    for step in steps:
        alloc = allocate(sizes, step.target(total), before)
        waves.append([d for c in sorted(orders) for d in orders[c][before[c] : alloc[c]]])
        before = alloc
    return waves
