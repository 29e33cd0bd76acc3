"""Accuracy-driven mixed precision: when full INT8 misses the agreement bar, find the calibration setting and the
fewest layers to keep in float that bring it back, within a time and size budget, and say what was tried.

Runtime-agnostic: a toolchain gives `attempt(setting, float_layers) -> Trial` (build, size, judge on calibration
data) and the layers it can keep in float, in graph order. The search:
1. full INT8 with each calibration setting (method x per-channel); the best one is kept for what follows;
2. sensitivity: the layers in contiguous groups, each group kept in float alone, ranked by how much output error
   that removes (groups, not single layers: one layer's effect is below the noise of a few hundred samples);
3. greedy: keep the most sensitive group in float, then the next, until the variant reaches the aim;
4. shrink: bisect the groups kept in float while the aim still holds, so only the layers that matter stay float.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger("converters")

DEFAULT_BUDGET_S = 240.0  # the whole search, a laptop's few minutes
DEFAULT_MAX_SIZE_RATIO = 0.75  # of the float model's size: past this, keeping more in float is not worth it
SENSITIVITY_GROUPS = 8
KEEP_GAIN = 0.8  # shrinking the float set may give back at most a fifth of the output error it removed


@dataclass(frozen=True)
class Setting:
    method: str  # calibration method: MinMax | Entropy | Percentile (the toolchain maps it)
    per_channel: bool

    def __str__(self) -> str:
        return f"{self.method}, {'per-channel' if self.per_channel else 'per-tensor'}"


@dataclass
class Trial:
    """One built candidate judged on the calibration data."""

    step: str  # what was tried, in words
    setting: str
    float_layers: list[str]
    top1: float | None  # worst top-1 agreement over classifier-like outputs (None: no such output)
    cosine: float
    error: float  # mean absolute output error: the ranking signal (continuous, unlike top-1)
    size_bytes: int
    passed: bool  # reaches the aim
    artifact: Any = field(default=None, repr=False)  # the toolchain's handle on the built candidate

    @classmethod
    def judged(
        cls, step: str, setting: str, float_layers: list[str], agreement: tuple[dict[str, Any], list[str]],
        size_bytes: int, artifact: Any,
    ) -> Trial:  # fmt: skip
        """A candidate from converters.report.agreement's (summary, failed checks) against the float model."""
        summary, failed = agreement
        return cls(
            step=step,
            setting=setting,
            float_layers=list(float_layers),
            top1=summary.get("top1"),
            cosine=float(summary.get("cosine", 0.0)),
            error=float(summary.get("mean_abs_error", 0.0)),
            size_bytes=size_bytes,
            passed=not failed,
            artifact=artifact,
        )

    def better_than(self, other: Trial | None) -> bool:
        """Passing first, then higher top-1 / cosine, then lower error."""
        if other is None:
            return True
        return self._key() > other._key()

    def _key(self) -> tuple[bool, float, float, float]:
        return self.passed, self.top1 if self.top1 is not None else 1.0, self.cosine, -self.error

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("artifact")
        return data


@dataclass
class MixedReport:
    """What the search did: every step's agreement, the layers kept in float and why, why it stopped."""

    aim: str  # the agreement each candidate had to reach on the calibration data
    budget_s: float
    max_size_ratio: float
    float_size_bytes: int
    judged_on: int  # calibration batches each candidate was judged on
    steps: list[dict[str, Any]] = field(default_factory=list)
    sensitivity: list[dict[str, Any]] = field(default_factory=list)  # groups, most sensitive first
    float_layers: list[str] = field(default_factory=list)
    why_float: dict[str, str] = field(default_factory=dict)
    setting: str = ""
    stopped: str = ""  # full-int8-passed | passed | budget | size | exhausted
    best_top1: float | None = None
    best_cosine: float | None = None
    full_int8: dict[str, Any] = field(default_factory=dict)  # the best full-INT8 candidate's agreement
    layers_tried: list[str] = field(default_factory=list)
    seconds: float = 0.0
    size_of: str = "the model file"  # what size_bytes and float_size_bytes measure
    ranked_by: str = "a build with the group in float"  # how a group's sensitivity was measured

    @classmethod
    def for_job(
        cls, aim: Any, options: dict[str, Any], float_size_bytes: int, judged_on: int, **how: Any
    ) -> MixedReport:
        """The report a toolchain starts its search with: `aim` (Thresholds) in words, the budgets from the job's
        options; `how` says what size_bytes and the sensitivity measure where a toolchain differs."""
        return cls(
            aim=f"top-1 {aim.top1:.2%} / cosine {aim.cosine:.4f}",
            budget_s=float(options.get("mixed_budget_s", DEFAULT_BUDGET_S)),
            max_size_ratio=float(options.get("max_size_ratio", DEFAULT_MAX_SIZE_RATIO)),
            float_size_bytes=float_size_bytes,
            judged_on=judged_on,
            **how,
        )

    def summary(self) -> str:
        """One line for the report's fixes."""
        first = self.steps[0] if self.steps else {}
        start = _fmt(first.get("top1"), first.get("cosine"))
        end = _fmt(self.best_top1, self.best_cosine)
        if self.stopped == "full-int8-passed":  # its figures as the report table prints them, then the bar
            reached = ", ".join(
                f for f in (f"top-1 {self.best_top1:.1%}" if self.best_top1 is not None else "",
                            f"cosine {self.best_cosine:.4f}" if self.best_cosine is not None else "") if f
            )  # fmt: skip
            return (
                f"mixed precision not needed: full INT8 ({self.setting}) has {reached} on calibration data, "
                f"which meets the aim ({self.aim})"
            )
        kept = f"{len(self.float_layers)} layer(s) kept in float ({', '.join(self.float_layers[:6])}"
        kept += ", ..." if len(self.float_layers) > 6 else ""
        head = f"mixed precision ({self.setting}): {kept}); agreement on calibration data {start} -> {end}"
        if self.stopped == "passed":
            return f"{head} after {len(self.steps)} step(s)"
        return f"{head}; search stopped ({self.stopped}) short of {self.aim}, {len(self.layers_tried)} layer(s) tried"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fmt(top1: float | None, cosine: float | None) -> str:
    if top1 is not None:
        return f"top-1 {top1:.2%}"
    return f"cosine {cosine:.4f}" if cosine is not None else "-"


Attempt = Callable[[Setting, list[str], str], Trial]


class Search:
    """One mixed-precision search over a toolchain's `attempt`, bounded by time and size."""

    def __init__(self, attempt: Attempt, report: MixedReport, probe: Attempt | None = None) -> None:
        self.attempt = attempt
        self.probe = probe  # a cheaper estimate of a group's effect, for ranking only: never chosen, never the fallback
        self.report = report
        self.start = time.perf_counter()
        self.best: Trial | None = None  # best candidate within the size budget (passing or not)
        self.chosen: Trial | None = None  # the passing candidate the search settled on

    def out_of_time(self) -> bool:
        return time.perf_counter() - self.start > self.report.budget_s

    def too_big(self, trial: Trial) -> bool:
        return trial.size_bytes > self.report.max_size_ratio * self.report.float_size_bytes

    def _try(self, setting: Setting, layers: list[str], step: str, record: bool = True) -> Trial:
        trial = self.attempt(setting, layers, step)
        if record:
            self.report.steps.append(trial.as_dict() | {"seconds": round(time.perf_counter() - self.start, 1)})
        log.info("mixed precision: %s: top1=%s error=%.4g", step, trial.top1, trial.error)
        self.report.layers_tried = list(dict.fromkeys(self.report.layers_tried + layers))
        if not self.too_big(trial) and trial.better_than(self.best):
            self.best = trial  # the fallback to refuse honestly: never one past the size budget
        return trial

    def run(self, settings: list[Setting], layers: list[str]) -> Trial:
        """The chosen candidate: the passing one with the fewest float layers, else the best seen (to be refused)."""
        setting, full = self._settings(settings)
        self.report.full_int8 = {"setting": full.setting, "top1": full.top1, "cosine": full.cosine}
        if full.passed:
            self.report.stopped = "full-int8-passed"
            self.chosen = full
        elif not layers:
            self.report.stopped = "exhausted"
        else:
            self._mix(setting, full, layers)
        chosen = self.chosen or self.best or full
        self.report.setting = chosen.setting
        self.report.float_layers = list(chosen.float_layers)
        self.report.why_float = {k: v for k, v in self.report.why_float.items() if k in chosen.float_layers}
        self.report.best_top1, self.report.best_cosine = chosen.top1, chosen.cosine
        self.report.seconds = round(time.perf_counter() - self.start, 1)
        return chosen

    def _settings(self, settings: list[Setting]) -> tuple[Setting, Trial]:
        """Full INT8 with each calibration setting; the best (or the first that passes)."""
        best: tuple[Setting, Trial] | None = None
        for setting in settings:
            if best is not None and self.out_of_time():
                break
            trial = self._try(setting, [], f"full INT8, {setting}")
            if best is None or trial.better_than(best[1]):
                best = (setting, trial)
            if trial.passed:
                break
        assert best is not None
        return best

    def _mix(self, setting: Setting, full: Trial, layers: list[str]) -> None:
        groups = _split(layers, SENSITIVITY_GROUPS)
        ranked = self._rank(setting, full, groups)
        kept: list[list[str]] = []
        self.report.stopped = "budget" if self.out_of_time() else "exhausted"
        for gain, group in ranked:
            if self.out_of_time():
                self.report.stopped = "budget"
                return
            kept.append(group)
            for layer in group:
                self.report.why_float[layer] = (
                    f"its group ({group[0]}..{group[-1]}) kept in float alone cut the output error by {gain:.0%}"
                )
            trial = self._try(setting, _flat(kept), f"keep {len(_flat(kept))} layer(s) in float")
            if self.too_big(trial):
                self.report.stopped = "size"
                return
            if trial.passed:
                self.report.stopped = "passed"
                self.chosen = trial
                self._shrink(setting, kept, full.error, trial.error)
                return

    def _rank(self, setting: Setting, full: Trial, groups: list[list[str]]) -> list[tuple[float, list[str]]]:
        """Groups by the share of the full-INT8 output error that keeping each in float removes, largest first."""
        scored = []
        for group in groups:
            if self.out_of_time():
                break
            step = f"sensitivity: {group[0]}..{group[-1]} in float"
            if self.probe is not None:
                trial = self.probe(setting, group, step)
                self.report.layers_tried = list(dict.fromkeys(self.report.layers_tried + group))
            else:
                trial = self._try(setting, group, step, record=False)
            gain = 1 - trial.error / full.error if full.error > 0 else 0.0
            scored.append((gain, group))
            self.report.sensitivity.append(
                {"layers": group, "error": trial.error, "top1": trial.top1, "error_removed": round(gain, 4)}
            )
        scored.sort(key=lambda s: -s[0])
        self.report.sensitivity.sort(key=lambda s: -s["error_removed"])
        return scored

    def _shrink(self, setting: Setting, kept: list[list[str]], full_error: float, kept_error: float) -> None:
        """Bisect each kept group while the variant still reaches the aim with fewer layers in float and keeps
        KEEP_GAIN of the error reduction: a few hundred samples pass a too-small float set by luck otherwise."""
        worst = full_error - KEEP_GAIN * (full_error - kept_error)
        for i in range(len(kept)):
            while len(kept[i]) > 1 and not self.out_of_time():
                half = len(kept[i]) // 2
                for part in (kept[i][:half], kept[i][half:]):
                    trial = self._try(setting, _flat(kept[:i] + [part] + kept[i + 1 :]), "shrink: fewer in float")
                    if trial.passed and not self.too_big(trial) and trial.error <= worst:
                        kept[i] = part
                        self.chosen = trial
                        break
                else:
                    break


def _split(layers: list[str], count: int) -> list[list[str]]:
    """`layers` in `count` contiguous groups of near-equal size (fewer when there are fewer layers)."""
    count = max(1, min(count, len(layers)))
    size, extra = divmod(len(layers), count)
    groups, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        groups.append(layers[start:end])
        start = end
    return [g for g in groups if g]


def _flat(groups: list[list[str]]) -> list[str]:
    return [layer for group in groups for layer in group]
