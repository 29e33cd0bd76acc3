"""The rollout gates as pure statistics: interpolated p95, Wilson / Newcombe bounds, the verdicts per class and the
minimum evidence below which nothing passes."""

from __future__ import annotations

import math

import pytest

from controller.rollouts.gates import (
    Z_95,
    DeviceEvidence,
    PeerRestarts,
    Thresholds,
    Window,
    judge_class,
    judge_wave,
    quantile,
    rate_increase_bounds,
)
from protocol.histograms import latency_bucket
from stats.proportion import wilson_interval


def window(latency_ms: float, requests: int, errors: int = 0, spread: float = 0.2) -> Window:
    """A histogram of `requests` latencies spread evenly over latency_ms * (1 +- spread)."""
    w = Window()
    for i in range(requests):
        ms = latency_ms * (1 - spread + 2 * spread * i / max(1, requests - 1))
        w.add(1, 0, [(latency_bucket(ms), 1)], ms)
    w.errors = errors
    return w


def device(name: str, old_ms: float, new_ms: float, n: int = 400, **kw) -> DeviceEvidence:
    return DeviceEvidence(name, new=window(new_ms, n, kw.pop("errors", 0)), old=window(old_ms, 1000), **kw)


def test_the_interpolated_quantile_is_close_to_the_true_one():
    w = window(10.0, 2000)
    assert quantile(w.latency, 0.95) == pytest.approx(11.8, rel=0.05)
    assert quantile({}, 0.95) is None


def test_wilson_bounds_hold_the_rate_and_tighten_with_samples():
    low, high = wilson_interval(0, 200, Z_95)
    assert low == 0 and 0.012 < high < 0.014
    low, high = wilson_interval(50, 1000, Z_95)
    assert low < 0.05 < high and high - low < 0.03
    point, lower, upper = rate_increase_bounds(0, 200, 0, 1000)
    assert point == 0 and lower < 0 < upper


def test_a_same_speed_version_passes_and_a_thirty_percent_slower_one_fails():
    th = Thresholds(min_requests=200)
    same = judge_class([device(f"d{i}", 5.0, 5.0) for i in range(3)], None, th)
    assert same["verdict"] == "pass" and same["latency"]["median_p95_ratio"] == pytest.approx(1.0, abs=0.02)
    slow = judge_class([device(f"d{i}", 5.0, 6.5) for i in range(3)], None, th)
    assert slow["verdict"] == "fail" and slow["failed_gates"] == ["latency"]
    assert slow["latency"]["median_p95_ratio"] == pytest.approx(1.3, abs=0.05)


def test_a_slowdown_the_not_yet_updated_peers_share_is_not_the_versions():
    th = Thresholds(min_requests=200)
    loaded = judge_class([device(f"d{i}", 5.0, 6.5) for i in range(3)], window(6.5, 2000), th)
    assert loaded["latency"]["verdict"] == "pass" and loaded["latency"]["peer_p95_ratio"] == pytest.approx(1, abs=0.05)


def test_errors_fail_on_the_bound_not_on_a_point_estimate():
    th = Thresholds(min_requests=200)
    one_error = judge_class([device("d", 5, 5, n=200, errors=1)], None, th)  # 0.5% point estimate on 200
    assert one_error["errors"]["verdict"] == "pass" and one_error["errors"]["increase_lower_pct"] < 0.5
    many = judge_class([device("d", 5, 5, n=400, errors=20)], None, th)  # 5%
    assert many["errors"]["verdict"] == "fail" and many["errors"]["increase_lower_pct"] > 0.5


def test_too_little_evidence_is_inconclusive_never_a_pass():
    th = Thresholds(min_requests=200)
    thin = judge_class([device("a", 5, 5, n=50), device("b", 5, 5, n=400)], None, th)
    assert thin["verdict"] == "inconclusive" and thin["evidence"]["devices_with_min_requests"] == 1
    assert judge_class([DeviceEvidence("a", activation="ok")], None, th)["verdict"] == "inconclusive"
    assert judge_wave({}, {}, th)["verdict"] == "inconclusive"


def test_activation_harm_and_agreement_fail_a_class():
    th = Thresholds(min_requests=200, min_agreement=0.95)
    never = judge_class([device("a", 5, 5), DeviceEvidence("b", activation="did not serve v2 within 600 s")], None, th)
    assert never["verdict"] == "fail" and "b" in never["activation"]["failed"]
    harmed = judge_class([device("a", 5, 5, harm="rolled back to 1")], None, th)
    assert harmed["failed_gates"] == ["harm"]
    disagree = judge_class([device("a", 5, 5, agreement=0.1, agreement_pairs=40)], None, th)
    assert disagree["failed_gates"] == ["agreement"] and disagree["agreement"]["agreement"] == pytest.approx(0.1)
    unmeasured = judge_class([device("a", 5, 5)], None, th)
    assert unmeasured["verdict"] == "inconclusive" and unmeasured["agreement"]["pairs"] == 0


def test_a_wave_is_as_bad_as_its_worst_class():
    th = Thresholds(min_requests=200)
    wave = judge_wave({"fast": [device("a", 5, 5)], "slow": [device("b", 5, 7)]}, {}, th)
    assert wave["verdict"] == "fail" and wave["classes"]["fast"]["verdict"] == "pass"
    assert math.isclose(wave["classes"]["slow"]["latency"]["median_p95_ratio"], 1.4, rel_tol=0.05)


def test_a_device_without_a_previous_version_is_judged_against_zero_errors():
    th = Thresholds(min_requests=200)
    fresh = DeviceEvidence("new", new=window(5.0, 400), had_previous=False)
    fresh.new.errors = 40
    result = judge_class([fresh], None, th)
    assert result["errors"]["verdict"] == "fail" and result["errors"]["baseline"] == "none (0%)"
    assert result["latency"]["verdict"] == "pass"  # no previous version, no peers: nothing to be slower than


def test_a_restart_counts_as_harm_only_when_the_not_yet_updated_peers_did_not_restart_as_often():
    th = Thresholds(min_requests=100)
    wave = [device("a", 10, 10, restart="restarted (telemetry seq 41 -> 1 at 5.0)"), device("b", 10, 10),
            device("c", 10, 10)]  # fmt: skip
    peers = window(10, 5000)
    quiet = PeerRestarts(seen=200, restarted={"p7": "restarted (telemetry seq 9 -> 1 at 4.0)"})
    result = judge_class(wave, peers, th, quiet)  # 1 of 3 against 1 of 200: the version's
    assert result["verdict"] == "fail" and result["failed_gates"] == ["harm"]
    assert result["harm"]["restarts_attributed"] and "seq 41 -> 1" in result["harm"]["devices"]["a"]
    assert result["harm"]["peer_restarts"] == quiet.restarted
    fleetwide = PeerRestarts(seen=200, restarted={f"p{i}": "restarted" for i in range(80)})
    result = judge_class(wave, peers, th, fleetwide)  # 1 of 3 against 80 of 200: the fleet's, recorded
    assert result["verdict"] == "pass" and not result["harm"]["restarts_attributed"]
    assert result["harm"]["devices"] == {} and "seq 41 -> 1" in result["harm"]["restarts"]["a"]
    assert result["evidence"]["devices_with_min_requests"] == 3  # the restarted device's evidence still counts
    assert judge_class(wave, peers, th, None)["harm"]["restarts_attributed"]  # no peers to compare: harm
    assert judge_class(wave, peers, th, PeerRestarts(seen=0))["verdict"] == "fail"
    assert judge_wave({"x": wave}, {"x": peers}, th, {"x": fleetwide})["verdict"] == "pass"
