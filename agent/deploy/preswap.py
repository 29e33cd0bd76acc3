"""The checks a version passes before it replaces the serving one: finite answers, and not slower than the serving
version beyond the budget, judged beside it on copies of live requests (agent.deploy.shadow) or on samples."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.deploy.shadow import IDLE_S, Pairs, run_pair, shadow
from agent.serving.live import Mirror
from protocol import Shadow
from protocol.errors import EdgeError
from targets.agreement import nonfinite
from targets.timing import percentile_ms

if TYPE_CHECKING:
    from agent.serving.live import LiveTap
    from agent.serving.table import LoadedModel

SAMPLE_PAIRS = 30  # pairs timed on the samples when live traffic is thin
SAMPLE_BUDGET_S = 5.0
MIN_LIVE_PAIRS = 8  # fewer live pairs than this and the samples decide
MIN_REGRESSION_MS = 0.1  # below this the difference does not matter, whatever the percentage


class Unhealthy(EdgeError):
    """A loaded version that must not replace the serving one; `code` says which check it failed."""

    code = "unhealthy"

    def __init__(self, message: str, code: str | None = None, report: Shadow | None = None) -> None:
        super().__init__(message, code)
        self.report = report


@dataclass(frozen=True)
class ShadowPlan:
    """How long and how much a shadow check may take, and the latency budget it judges by (0: no limit)."""

    window_s: float
    max_pairs: int
    share: float
    max_latency_pct: float


def check_before_swap(
    model: LoadedModel, serving: LoadedModel | None, plan: ShadowPlan, tap: LiveTap | None, stop: threading.Event
) -> Shadow | None:
    """The shadow report of a version fit to swap in; Unhealthy (with the report) for one that answers NaN/Inf or
    fails where the serving version answers, or runs slower than it beyond the budget in two passes."""
    for inputs in model.probe:
        bad = nonfinite(model.backend.infer(inputs))
        if bad:
            raise Unhealthy(f"{bad} on a warm-up inference; the serving version stays", "nonfinite_output")
    if serving is None:
        return None
    report = Shadow()
    for _ in range(2):  # a regression must show twice: a burst of other work is not the new version's fault
        pairs, source = _pairs(model, serving, plan, tap, stop)
        report = _report(serving, pairs, source, plan.max_latency_pct)
        if pairs.problem:
            raise Unhealthy(f"{pairs.problem}; the serving version stays", "unhealthy", report)
        if report.verdict == "passed":
            return report
    raise Unhealthy(f"{report.verdict}; the serving version stays", "latency_regression", report)


def _pairs(
    model: LoadedModel, serving: LoadedModel, plan: ShadowPlan, tap: LiveTap | None, stop: threading.Event
) -> tuple[Pairs, str]:
    """Pairs from live requests when enough arrive within the window, else from the new version's samples (at once
    when the model answered no request in the last IDLE_S: no waiting for traffic that is not there)."""
    if tap is not None and plan.window_s > 0 and not tap.idle_for(IDLE_S):
        tap.mirror = Mirror(plan.share)
        try:
            live = shadow(model, serving, tap.mirror, window_s=plan.window_s, max_pairs=plan.max_pairs, stop=stop)
        finally:
            tap.mirror = None
        if live.problem or len(live) >= MIN_LIVE_PAIRS:
            return live, "live"
    return on_samples(model, serving, stop), "samples"


def on_samples(model: LoadedModel, serving: LoadedModel, stop: threading.Event) -> Pairs:
    """Both versions on the new version's samples, turn about, SAMPLE_PAIRS times (within SAMPLE_BUDGET_S)."""
    pairs = Pairs()
    if not model.probe:
        return pairs
    deadline = time.monotonic() + SAMPLE_BUDGET_S
    for i in range(SAMPLE_PAIRS * 2):
        if len(pairs) >= SAMPLE_PAIRS or pairs.problem or stop.is_set() or time.monotonic() > deadline:
            break
        run_pair(model, serving, model.probe[i % len(model.probe)], new_first=i % 2 == 0, pairs=pairs)
    return pairs


def _report(serving: LoadedModel, pairs: Pairs, source: str, max_pct: float) -> Shadow:
    """The figures of one pass, with its verdict: "passed" or the regression in one line."""
    if not len(pairs):
        return Shadow(against=serving.version, inputs=source, pairs=0, verdict="passed")
    new_p50, old_p50 = pairs.medians()
    new_p95, old_p95 = (
        percentile_ms([t / 1000 for t in pairs.new_ms], 95),
        percentile_ms([t / 1000 for t in pairs.old_ms], 95),
    )
    ratio = pairs.ratio()
    verdict = "passed"
    where = "the same live requests" if source == "live" else "the model's samples, turn about"
    if max_pct and ratio > 1 + max_pct / 100 and new_p50 - old_p50 > MIN_REGRESSION_MS:
        verdict = (
            f"p50 latency {new_p50:.2f} ms vs {old_p50:.2f} ms for version {serving.version} on {where} "
            f"(+{(ratio - 1) * 100:.0f}%, limit +{max_pct:.0f}%)"
        )
    report = Shadow(
        against=serving.version, inputs=source, pairs=len(pairs), verdict=verdict,
        p50_ms=round(new_p50, 3), p95_ms=round(new_p95, 3),
        serving_p50_ms=round(old_p50, 3), serving_p95_ms=round(old_p95, 3),
        agreement=round(pairs.agreed / len(pairs), 4),
    )  # fmt: skip
    if pairs.difference:
        report.difference = pairs.difference
    return report
