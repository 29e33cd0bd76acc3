"""Accuracy-driven mixed precision: when full INT8 misses the agreement bar, find the calibration setting and the
fewest layers to keep in float that bring it back, within a time and size budget, and say what was tried.

Every choice is made on data the candidate was not fitted to: the calibration share is split (`inner_split`) into
the samples the quantization ranges are fitted on and the samples each candidate is judged on (out of sample); the
in-sample agreement is reported beside it, never decided on. (The conversion's own held-out share, which the
report's verdict stands on, is never seen here: converters.evidence.)

Runtime-agnostic: a toolchain gives `attempt(setting, float_layers) -> Trial` (build, size, judge in and out of
sample) and the layers it can keep in float, in graph order. The search:
1. full INT8 with each calibration setting (method x per-channel); the first (the toolchain's default) is kept
   unless another beats it out of sample (higher or equal agreement and lower output error);
2. sensitivity: the layers in contiguous groups, each group kept in float alone, ranked by how much output error
   that removes (groups, not single layers: one layer's effect is below the noise of a few hundred samples);
3. greedy: keep the most sensitive group in float, then the next, until the variant reaches the aim;
4. shrink: bisect the groups kept in float while the aim still holds, so only the layers that matter stay float;
5. when no mix reaches the aim, full INT8 stays unless the best mix within the size budget beats it out of sample.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from converters.evidence import Thresholds
from converters.report import agreement

log = logging.getLogger("converters")

DEFAULT_BUDGET_S = 240.0  # the whole search, a laptop's few minutes
DEFAULT_MAX_SIZE_RATIO = 0.75  # of the float model's size: past this, keeping more in float is not worth it
SENSITIVITY_GROUPS = 8
KEEP_GAIN = 0.8  # shrinking the float set may give back at most a fifth of the output error it removed
JUDGE_EVERY = 3  # every third calibration sample judges the candidates; the other two fit their ranges
IN_SAMPLE_MAX = 64  # fitted samples the in-sample figure is measured on (reported only: a candidate costs less)


def judge(
    reference: list[dict[str, Any]], outputs: list[dict[str, Any]], bar: Thresholds
) -> tuple[dict[str, Any], list[str]]:
    """A candidate's agreement out of sample and the checks that keep it from the aim (halfway from the bar to
    perfect agreement). No confidence bound here: the judge set is a few dozen to 128 samples, which vouch for no
    99%; a lucky top-1 is kept from deciding by `Trial.beats` (agreement and output error both better), and the
    verdict is the held-out share's, with its bound (converters.evidence)."""
    return agreement(reference, outputs, aim(bar))


def aim(thresholds: Thresholds) -> Thresholds:
    """What a candidate must reach out of sample: halfway from the bar to perfect agreement, a margin for the
    choices made on that same judge set (the report's verdict is measured on the held-out share it never saw)."""
    return Thresholds(top1=(1 + thresholds.top1) / 2, cosine=(1 + thresholds.cosine) / 2)


def inner_split(samples: list[Any]) -> tuple[list[Any], list[Any]]:
    """(fit, judge): the samples the quantization ranges are fitted on, and every JUDGE_EVERY-th one, kept out to
    judge candidates on (interleaved: ordered data lands on both sides)."""
    if len(samples) < JUDGE_EVERY:
        return samples, samples  # too few to split: judged in sample (the outer held-out verdict still stands)
    judge = samples[JUDGE_EVERY - 1 :: JUDGE_EVERY]
    fit = [s for i, s in enumerate(samples) if i % JUDGE_EVERY != JUDGE_EVERY - 1]
    return fit, judge


@dataclass(frozen=True)
class Setting:
    method: str  # calibration method: MinMax | Entropy | Percentile (the toolchain maps it)
    per_channel: bool

    def __str__(self) -> str:
        return f"{self.method}, {'per-channel' if self.per_channel else 'per-tensor'}"


@dataclass
class Trial:
    """One built candidate judged out of sample (the figures decided on) and in sample (reported beside them)."""

    step: str  # what was tried, in words
    setting: str
    float_layers: list[str]
    top1: float | None  # out of sample: worst top-1 agreement over classifier-like outputs (None: no such output)
    cosine: float  # out of sample
    error: float  # out of sample mean absolute output error: the ranking signal (continuous, unlike top-1)
    size_bytes: int
    passed: bool  # reaches the aim out of sample
    artifact: Any = field(default=None, repr=False)  # the toolchain's handle on the built candidate
    in_top1: float | None = None  # the same on samples its ranges were fitted on
    in_cosine: float | None = None
    in_error: float | None = None

    @classmethod
    def judged(
        cls, step: str, setting: str, float_layers: list[str], agreement: tuple[dict[str, Any], list[str]],
        size_bytes: int, artifact: Any, in_sample: dict[str, Any] | None = None,
    ) -> Trial:  # fmt: skip
        """A candidate from converters.report.agreement's (summary, failed checks) against the float model out of
        sample, and its summary in sample."""
        summary, failed = agreement
        inside = in_sample or {}
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
            in_top1=inside.get("top1"),
            in_cosine=inside.get("cosine"),
            in_error=inside.get("mean_abs_error"),
        )

    def better_than(self, other: Trial | None) -> bool:
        """Passing first, then higher top-1 / cosine, then lower error."""
        if other is None:
            return True
        return self._key() > other._key()

    def beats(self, other: Trial) -> bool:
        """Clearly better out of sample: agrees at least as well and with a lower output error (a flip or two of
        top-1 on a small judge set alone is noise, and so is reaching the aim by one of them)."""
        mine, theirs = (t.top1 if t.top1 is not None else t.cosine for t in (self, other))
        return mine >= theirs and self.error < other.error

    def _key(self) -> tuple[bool, float]:
        """Reaching the aim, then the output error (continuous: top-1 on a judge set of dozens moves by luck)."""
        return self.passed, -self.error

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("artifact")
        return data


@dataclass
class MixedReport:
    """What the search did: every step's agreement, the layers kept in float and why, why it stopped."""

    aim: str  # the agreement each candidate had to reach out of sample
    budget_s: float
    max_size_ratio: float
    float_size_bytes: int
    judged_on: int  # calibration samples each candidate was judged on, never fitted on (out of sample)
    fitted_on: int = 0  # calibration samples the quantization ranges were fitted on
    in_sample_on: int = 0  # of those, what the in-sample figures were measured on
    steps: list[dict[str, Any]] = field(default_factory=list)
    sensitivity: list[dict[str, Any]] = field(default_factory=list)  # groups, most sensitive first
    float_layers: list[str] = field(default_factory=list)
    why_float: dict[str, str] = field(default_factory=dict)
    setting: str = ""
    stopped: str = ""  # full-int8-passed | passed | budget | size | exhausted
    kept_full_int8: str = ""  # why full INT8 was kept over the best mix (no mix beat it out of sample)
    best_top1: float | None = None
    best_cosine: float | None = None
    full_int8: dict[str, Any] = field(default_factory=dict)  # the best full-INT8 candidate's agreement
    layers_tried: list[str] = field(default_factory=list)
    seconds: float = 0.0
    size_of: str = "the model file"  # what size_bytes and float_size_bytes measure
    ranked_by: str = "a build with the group in float"  # how a group's sensitivity was measured

    @classmethod
    def for_job(
        cls, aim: Any, options: dict[str, Any], float_size_bytes: int, judged_on: int, fitted_on: int, **how: Any
    ) -> MixedReport:
        """The report a toolchain starts its search with: `aim` (Thresholds) in words, the budgets from the job's
        options; `how` says what size_bytes and the sensitivity measure where a toolchain differs."""
        return cls(
            aim=f"top-1 {aim.top1:.2%} / cosine {aim.cosine:.4f}",
            budget_s=float(options.get("mixed_budget_s", DEFAULT_BUDGET_S)),
            max_size_ratio=float(options.get("max_size_ratio", DEFAULT_MAX_SIZE_RATIO)),
            float_size_bytes=float_size_bytes,
            judged_on=judged_on,
            fitted_on=fitted_on,
            in_sample_on=min(fitted_on, IN_SAMPLE_MAX),
            **how,
        )

    def summary(self) -> str:
        """One line for the report's fixes."""
        first = self.steps[0] if self.steps else {}
        start = _fmt(first.get("top1"), first.get("cosine"))
        end = _fmt(self.best_top1, self.best_cosine)
        where = f"out of sample ({self.judged_on} calibration samples not fitted on)"
        if self.stopped == "full-int8-passed":  # its figures as the report table prints them, then the bar
            reached = ", ".join(
                f for f in (f"top-1 {self.best_top1:.1%}" if self.best_top1 is not None else "",
                            f"cosine {self.best_cosine:.4f}" if self.best_cosine is not None else "") if f
            )  # fmt: skip
            return (
                f"mixed precision not needed: full INT8 ({self.setting}) has {reached} {where}, "
                f"which meets the aim ({self.aim})"
            )
        if self.kept_full_int8:
            return (f"mixed precision ({self.setting}): full INT8 kept, {self.kept_full_int8}; agreement {where} "
                    f"{end}; search stopped ({self.stopped}), {len(self.layers_tried)} layer(s) tried")  # fmt: skip
        kept = f"{len(self.float_layers)} layer(s) kept in float ({', '.join(self.float_layers[:6])}"
        kept += ", ..." if len(self.float_layers) > 6 else ""
        head = f"mixed precision ({self.setting}): {kept}); agreement {where} {start} -> {end}"
        if self.stopped == "passed":
            return f"{head} after {len(self.steps)} step(s)"
        return f"{head}; search stopped ({self.stopped}) short of {self.aim}, {len(self.layers_tried)} layer(s) tried"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fmt(top1: float | None, cosine: float | None) -> str:
    if top1 is not None:
        return f"top-1 {top1:.1%}"  # as the report table prints it
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
        self.trials: list[Trial] = []  # every candidate in the report's steps
        self.chosen: Trial | None = None  # the passing candidate the search settled on

    def out_of_time(self) -> bool:
        return time.perf_counter() - self.start > self.report.budget_s

    def too_big(self, trial: Trial) -> bool:
        return trial.size_bytes > self.report.max_size_ratio * self.report.float_size_bytes

    def _try(self, setting: Setting, layers: list[str], step: str, record: bool = True) -> Trial:
        trial = self.attempt(setting, layers, step)
        if record:
            self.trials.append(trial)
            self.report.steps.append(trial.as_dict() | {"seconds": round(time.perf_counter() - self.start, 1)})
        log.info("mixed precision: %s: top1=%s (in sample %s) error=%.4g", step, trial.top1, trial.in_top1, trial.error)
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
        chosen = self.chosen or self._fallback(full)
        self.report.setting = chosen.setting
        self.report.float_layers = list(chosen.float_layers)
        self.report.why_float = {k: v for k, v in self.report.why_float.items() if k in chosen.float_layers}
        self.report.best_top1, self.report.best_cosine = chosen.top1, chosen.cosine
        self.report.seconds = round(time.perf_counter() - self.start, 1)
        return chosen

    def _fallback(self, full: Trial) -> Trial:
        """No mix reached the aim: the simplest mix within the size budget that beats full INT8 out of sample (fewest
        layers in float), else full INT8."""
        better = [t for t in self.trials if t.float_layers and not self.too_big(t) and t.beats(full)]
        if better:
            return min(better, key=lambda t: (len(t.float_layers), t.error))
        if any(step["float_layers"] for step in self.report.steps):
            self.report.kept_full_int8 = "no mix beat it out of sample"
        return full

    def _settings(self, settings: list[Setting]) -> tuple[Setting, Trial]:
        """Full INT8 with each calibration setting: the first (the toolchain's default) unless another beats it out
        of sample (or the first that passes)."""
        best: tuple[Setting, Trial] | None = None
        for setting in settings:
            if best is not None and self.out_of_time():
                break
            trial = self._try(setting, [], f"full INT8, {setting}")
            if best is None or trial.beats(best[1]):
                best = (setting, trial)
            if best[1].passed:
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
            if trial.passed and trial.beats(full):
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
