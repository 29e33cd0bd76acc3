"""The gates a rollout wave passes, per hardware class, as pure statistics over what the devices measured: activation,
latency (median over devices of p95(new)/p95(old)), errors (a one-sided confidence bound on the error-rate
increase), answers (the shadow check's agreement on live inputs), optionally drift (no device's quality moved from
its previous version's baseline) and harm (rolled back, crashed or restarted), with
the minimum evidence below which a class is *inconclusive*. Every figure carries its sample counts."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from controller.telemetry.drift import Verdict as DriftVerdict
from protocol.histograms import LATENCY_BOUNDS_MS
from stats.proportion import wilson_interval

Verdict = Literal["pass", "fail", "inconclusive"]
Z_95 = 1.6448536269514722  # one-sided 95%


@dataclass
class Window:
    """Requests, errors and the latency histogram (bucket -> count) summed over telemetry windows."""

    requests: int = 0
    errors: int = 0
    latency: dict[int, int] = field(default_factory=dict)
    max_ms: float = 0.0

    def add(self, requests: int, errors: int, latency: list[tuple[int, int]] | list[list[int]], max_ms: float) -> None:
        self.requests += requests
        self.errors += errors
        for bucket, count in latency:
            self.latency[bucket] = self.latency.get(bucket, 0) + count
        self.max_ms = max(self.max_ms, max_ms)

    def merge(self, other: Window) -> None:
        self.add(other.requests, other.errors, list(other.latency.items()), other.max_ms)

    def p95(self) -> float | None:
        return quantile(self.latency, 0.95, self.max_ms)


@dataclass
class DeviceEvidence:
    """What one device of a wave measured: `new` after it activated the new version, `old` its own previous version
    before the swap; `activation` None while pending, else "ok" or why it failed; `harm` why the new version hurt it
    (rolled back, crashed, restarted) or None; the shadow check's agreement on live inputs and its pair count."""

    device_id: str
    new: Window = field(default_factory=Window)
    old: Window = field(default_factory=Window)
    had_previous: bool = True
    activation: str | None = "ok"
    harm: str | None = None
    agreement: float | None = None
    agreement_pairs: int = 0
    restart: str | None = None  # the agent restarted while serving the new version (telemetry seq went backwards)
    # with --no-new-drift: the new version's quality window against the previous version's baseline on this device
    # (drift.drift_verdict), or None with why not in `drift_missing` (no track, no baseline of either version yet)
    drift: DriftVerdict | None = None
    drift_missing: str | None = None


@dataclass
class PeerRestarts:
    """The not-yet-updated devices of a class in the same period: how many sent telemetry, which restarted (why)."""

    seen: int = 0
    restarted: dict[str, str] = field(default_factory=dict)

    def share(self) -> float:
        return len(self.restarted) / self.seen if self.seen else 0.0


@dataclass(frozen=True)
class Thresholds:
    max_p95_ratio: float = 1.10
    max_error_delta: float = 0.5  # percentage points
    min_agreement: float | None = None
    min_requests: int = 200  # per device, on the new version
    min_share: float = 0.8  # of the wave's devices (of a class) with min_requests
    no_new_drift: bool = False  # the drift gate: no device's quality drifted from its previous version's baseline


def quantile(counts: Mapping[int, int], q: float, max_ms: float | None = None) -> float | None:
    """The q-quantile of a bucketed latency histogram, interpolated geometrically inside its bucket (the buckets are
    26% wide: reading bucket bounds alone would turn a stable latency into 1.26x jumps)."""
    total = sum(counts.values())
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for index in sorted(counts):
        count = counts[index]
        if count <= 0:
            continue
        if seen + count >= rank:
            upper = LATENCY_BOUNDS_MS[index] if index < len(LATENCY_BOUNDS_MS) else (max_ms or LATENCY_BOUNDS_MS[-1])
            lower = LATENCY_BOUNDS_MS[index - 1] if index > 0 else upper / 1.2589
            if max_ms:
                upper = min(upper, max_ms) if max_ms > lower else upper
            fraction = (rank - seen) / count
            return lower * (upper / lower) ** fraction
        seen += count
    return max_ms


def rate_increase_bounds(
    errors_new: int, n_new: int, errors_old: int, n_old: int, z: float = Z_95
) -> tuple[float, float, float]:
    """(point, lower, upper) of p_new - p_old by Newcombe's hybrid score method (Wilson intervals of each rate): the
    lower bound exceeds a margin only when the new version is worse by more than it with 95% confidence."""
    p1 = errors_new / n_new if n_new else 0.0
    p2 = errors_old / n_old if n_old else 0.0
    l1, u1 = wilson_interval(errors_new, n_new, z)
    l2, u2 = wilson_interval(errors_old, n_old, z)
    point = p1 - p2
    lower = point - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    upper = point + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return point, lower, upper


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def latency_gate(devices: list[DeviceEvidence], peers: Window | None, th: Thresholds) -> dict[str, Any]:
    """Median over devices of p95(new)/p95(own previous version); when it is over the bar, the class's pooled p95
    against not-yet-updated devices of the class in the same period decides (a slowdown they share is the load's,
    not the version's). Devices that had no previous version compare with the peers only."""
    ratios = []
    for d in devices:
        new, old = d.new.p95(), d.old.p95()
        if new is not None and old:
            ratios.append(new / old)
    pooled = Window()
    for d in devices:
        pooled.merge(d.new)
    peer_p95 = peers.p95() if peers is not None and peers.requests >= th.min_requests else None
    new_p95 = pooled.p95()
    peer_ratio = new_p95 / peer_p95 if new_p95 is not None and peer_p95 else None
    median = statistics.median(ratios) if ratios else None
    figures: dict[str, Any] = {
        "median_p95_ratio": _r(median), "devices_compared": len(ratios), "peer_p95_ratio": _r(peer_ratio),
        "peer_requests": peers.requests if peers is not None else 0, "new_p95_ms": _r(new_p95),
        "peer_p95_ms": _r(peer_p95), "max_p95_ratio": th.max_p95_ratio,
    }  # fmt: skip
    if median is None and peer_ratio is None:
        if not any(d.had_previous for d in devices):
            return {**figures, "verdict": "pass", "note": "no previous version on these devices and no peers"}
        return {**figures, "verdict": "inconclusive", "note": "no latency of the previous version to compare with"}
    over = median is not None and median > th.max_p95_ratio
    peers_over = peer_ratio is None or peer_ratio > th.max_p95_ratio
    if median is None:
        over = peers_over
    return {**figures, "verdict": "fail" if over and peers_over else "pass"}


def error_gate(devices: list[DeviceEvidence], peers: Window | None, th: Thresholds) -> dict[str, Any]:
    """Pooled error rate of the new version against the devices' previous version (or, lacking it, the peers):
    fails when the one-sided 95% lower bound of the increase is above `max_error_delta` points."""
    n_new = sum(d.new.requests for d in devices)
    e_new = sum(d.new.errors for d in devices)
    n_old = sum(d.old.requests for d in devices)
    e_old = sum(d.old.errors for d in devices)
    baseline = "previous version"
    if n_old == 0 and peers is not None and peers.requests:
        n_old, e_old, baseline = peers.requests, peers.errors, "peers"
    if n_old:
        point, lower, upper = rate_increase_bounds(e_new, n_new, e_old, n_old)
    else:  # nothing to compare with: against a flawless 0%, so a fresh install that errs still fails
        baseline = "none (0%)"
        (lower, upper), point = wilson_interval(e_new, n_new, Z_95), (e_new / n_new if n_new else 0.0)
    figures = {
        "new_rate_pct": _r(100 * e_new / n_new if n_new else None, 3), "old_rate_pct":
        _r(100 * e_old / n_old if n_old else None, 3), "increase_pct": _r(100 * point, 3),
        "increase_lower_pct": _r(100 * lower, 3), "increase_upper_pct": _r(100 * upper, 3),
        "requests_new": n_new, "errors_new": e_new, "requests_old": n_old, "errors_old": e_old,
        "baseline": baseline, "max_error_delta_pct": th.max_error_delta,
    }  # fmt: skip
    if n_new == 0:
        return {**figures, "increase_lower_pct": None, "increase_upper_pct": None, "verdict": "inconclusive"}
    return {**figures, "verdict": "fail" if 100 * lower > th.max_error_delta else "pass"}


def agreement_gate(devices: list[DeviceEvidence], th: Thresholds) -> dict[str, Any] | None:
    """With --min-agreement: the pairs-weighted agreement of the shadow checks on live inputs; None without."""
    if th.min_agreement is None:
        return None
    measured = [d for d in devices if d.agreement is not None and d.agreement_pairs > 0]
    pairs = sum(d.agreement_pairs for d in measured)
    figures: dict[str, Any] = {"devices_measured": len(measured), "pairs": pairs, "min_agreement": th.min_agreement}
    if not pairs:
        return {**figures, "agreement": None, "lowest": None, "verdict": "inconclusive"}
    pooled = sum(d.agreement * d.agreement_pairs for d in measured if d.agreement is not None) / pairs
    lowest = min(d.agreement for d in measured if d.agreement is not None)
    verdict: Verdict = "fail" if pooled < th.min_agreement else "pass"
    if verdict == "pass" and len(measured) < math.ceil(th.min_share * len(devices)):
        verdict = "inconclusive"
    return {**figures, "agreement": _r(pooled), "lowest": _r(lowest), "verdict": verdict}


def drift_gate(devices: list[DeviceEvidence], th: Thresholds) -> dict[str, Any] | None:
    """With --no-new-drift: each device's new-version quality window against its previous version's baseline (the
    drift verdict's tests); fails when any device drifted (naming it and what moved), passes when every device with
    a previous version has a verdict and none drifted, else inconclusive. None without the option."""
    if not th.no_new_drift:
        return None
    drifted: dict[str, str] = {}
    missing: dict[str, str] = {}
    compared = 0
    scores: dict[str, float] = {}
    for d in devices:
        if not d.had_previous:
            continue
        verdict = d.drift
        if verdict is None or not verdict.judged:
            missing[d.device_id] = (verdict.reason if verdict is not None else d.drift_missing) or "no verdict"
            continue
        compared += 1
        scores[d.device_id] = round(verdict.score, 4)
        if verdict.flagged:
            drifted[d.device_id] = "; ".join(verdict.moved[:3]) or "drifted"
    figures: dict[str, Any] = {
        "devices_compared": compared, "drifted": drifted, "missing": dict(sorted(missing.items())[:10]),
        "devices_missing": len(missing), "scores": dict(sorted(scores.items())[:20]),
    }  # fmt: skip
    if drifted:
        return {**figures, "verdict": "fail"}
    if missing:
        return {**figures, "verdict": "inconclusive"}
    if not compared:
        if devices and not any(d.had_previous for d in devices):
            return {**figures, "verdict": "pass", "note": "no previous version on these devices"}
        return {**figures, "verdict": "inconclusive"}
    return {**figures, "verdict": "pass"}


def harm_gate(judged: list[DeviceEvidence], peers: PeerRestarts | None) -> dict[str, Any]:
    """Harm: a device that rolled back or reported the version failed; and restarts while serving the new version,
    attributed to it only when they are more frequent on the wave's devices than on the class's not-yet-updated
    devices in the same period (a power cut or an agent upgrade restarts those too). Unattributed restarts are kept
    in the figures with their evidence; without peers that sent telemetry, a restart counts as harm."""
    harmed = {d.device_id: d.harm for d in judged if d.harm}
    serving = [d for d in judged if d.activation == "ok"]
    restarts = {d.device_id: d.restart for d in serving if d.restart}
    peers = peers or PeerRestarts()
    share = len(restarts) / len(serving) if serving else 0.0
    attributed = bool(restarts) and (peers.seen == 0 or share > peers.share())
    if attributed:
        for device_id, why in restarts.items():
            harmed.setdefault(device_id, why)
    return {
        "devices": harmed, "restarts": restarts, "restart_share": _r(share), "peers_seen": peers.seen,
        "peer_restarts": dict(sorted(peers.restarted.items())[:10]), "peer_restart_share": _r(peers.share()),
        "restarts_attributed": attributed, "verdict": "fail" if harmed else "pass",
    }  # fmt: skip


def judge_class(
    devices: list[DeviceEvidence], peers: Window | None, th: Thresholds, peer_restarts: PeerRestarts | None = None
) -> dict[str, Any]:
    """One class of one wave: each gate's figures and verdict, and the class's: fail when any gate fails (on the
    evidence there is), else inconclusive while evidence is short, else pass. Devices whose activation is still
    pending are left out (they are judged with the next decision)."""
    judged = [d for d in devices if d.activation is not None]
    failed = {d.device_id: d.activation for d in judged if d.activation != "ok"}
    harm = harm_gate(judged, peer_restarts)
    harmed = harm["devices"]
    active = [d for d in judged if d.activation == "ok" and d.device_id not in harmed]
    enough = [d for d in active if d.new.requests >= th.min_requests]
    needed = math.ceil(th.min_share * len(judged)) if judged else 1
    gates: dict[str, Any] = {
        "activation": {"devices": len(judged), "failed": failed, "pending": len(devices) - len(judged),
                       "verdict": "fail" if failed else ("pass" if judged else "inconclusive")},
        "harm": harm,
        "evidence": {"devices_with_min_requests": len(enough), "needed": needed, "min_requests": th.min_requests,
                     "requests": {d.device_id: d.new.requests for d in active},
                     "verdict": "pass" if len(enough) >= needed and enough else "inconclusive"},
        "latency": latency_gate(enough, peers, th) if enough else {"verdict": "inconclusive"},
        "errors": error_gate(active, peers, th),
    }  # fmt: skip
    agreement = agreement_gate(active, th)
    if agreement is not None:
        gates["agreement"] = agreement
    drift = drift_gate(active, th)
    if drift is not None:
        gates["drift"] = drift
    verdicts = {g["verdict"] for g in gates.values()}
    if "fail" in verdicts:
        verdict: Verdict = "fail"
    elif "inconclusive" in verdicts:
        verdict = "inconclusive"
    else:
        verdict = "pass"
    failing = sorted(name for name, g in gates.items() if g["verdict"] == "fail")
    return {"verdict": verdict, "failed_gates": failing, "devices": len(devices), **gates}


def judge_wave(
    by_class: Mapping[str, list[DeviceEvidence]], peers: Mapping[str, Window], th: Thresholds,
    peer_restarts: Mapping[str, PeerRestarts] | None = None,
) -> dict:  # fmt: skip
    """Every class of a wave judged; the wave's verdict is the worst of its classes'."""
    restarts = peer_restarts or {}
    classes = {c: judge_class(devs, peers.get(c), th, restarts.get(c)) for c, devs in sorted(by_class.items())}
    verdicts = {c["verdict"] for c in classes.values()}
    verdict = "fail" if "fail" in verdicts else "inconclusive" if "inconclusive" in verdicts or not classes else "pass"
    return {"verdict": verdict, "classes": classes}
