"""The optional drift gate of a rollout wave (--no-new-drift): each device's quality window of the new version
against the previous version's baseline on the same device, through the tracker the ingest keeps."""

from __future__ import annotations

from controller.rollouts.engine import summary, thresholds
from controller.rollouts.evidence import add_drift
from controller.rollouts.gates import DeviceEvidence, Thresholds, Window, judge_class
from controller.telemetry.drift import DriftSettings
from controller.telemetry.summary import Part, Summary
from controller.telemetry.tracker import QualityTracker, Track
from protocol.histograms import latency_bucket

SETTINGS = DriftSettings(min_rows=200, baseline_rows=400)


def device(name: str, n: int = 400, **kw) -> DeviceEvidence:
    """A device whose latency and errors pass their gates: only the drift gate decides."""
    new, old = Window(), Window()
    new.add(n, 0, [(latency_bucket(5.0), n)], 5.0)
    old.add(1000, 0, [(latency_bucket(5.0), 1000)], 5.0)
    return DeviceEvidence(name, new=new, old=old, **kw)


def mix(a: int, b: int) -> Summary:
    """A classifier's output: `a` rows answered class 0, `b` class 1."""
    return Summary(windows=1, outputs={"probs": Part(rows=a + b, classes={"0": a, "1": b})})


def tracker(tracks: dict[str, Track]) -> QualityTracker:
    quality = QualityTracker(SETTINGS)
    quality._tracks.update({(d, "m"): t for d, t in tracks.items()})
    return quality


def new_track(window: Summary | None, previous: Summary | None, frozen: bool = True) -> Track:
    return Track("v2", baseline=mix(300, 300), frozen=frozen, last_chunk=window,
                 previous=("v1", previous) if previous is not None else None)  # fmt: skip


def judged(quality: QualityTracker, names: list[str], **kw) -> dict:
    devices = [device(d) for d in names]
    add_drift(quality, "m", "v2", {"cpu": devices})
    return judge_class(devices, None, Thresholds(no_new_drift=True, **kw))


def test_a_device_whose_class_mix_moved_fails_the_gate_by_name():
    quality = tracker({
        "d0": new_track(mix(250, 250), mix(500, 500)),
        "d1": new_track(mix(450, 50), mix(500, 500)),  # the new version answers class 0 far more often
    })  # fmt: skip
    result = judged(quality, ["d0", "d1"])
    gate = result["drift"]
    assert result["verdict"] == "fail" and result["failed_gates"] == ["drift"]
    assert list(gate["drifted"]) == ["d1"] and "probs" in gate["drifted"]["d1"] and gate["devices_compared"] == 2
    line = summary({"classes": {"cpu": result}})
    assert "drift on d1 (" in line


def test_no_drift_on_any_device_passes():
    quality = tracker({d: new_track(mix(240, 260), mix(500, 500)) for d in ("d0", "d1", "d2")})
    result = judged(quality, ["d0", "d1", "d2"])
    assert result["drift"]["verdict"] == "pass" and result["verdict"] == "pass"
    assert result["drift"]["drifted"] == {} and result["drift"]["devices_compared"] == 3


def test_the_new_versions_own_baseline_stands_in_for_a_chunk_not_judged_yet():
    quality = tracker({"d0": new_track(None, mix(500, 500))})  # baseline mix(300, 300), frozen
    assert judged(quality, ["d0"])["drift"]["verdict"] == "pass"


def test_devices_without_enough_rows_for_a_verdict_are_inconclusive():
    quality = tracker({
        "d0": new_track(mix(240, 260), mix(500, 500)),
        "d1": new_track(mix(40, 50), mix(500, 500)),  # too few rows for any test
        "d2": new_track(None, mix(500, 500), frozen=False),  # still building its baseline
        "d3": new_track(mix(240, 260), None),  # no baseline of the previous version
    })  # fmt: skip
    result = judged(quality, ["d0", "d1", "d2", "d3", "d4"])  # d4: no track at all
    gate = result["drift"]
    assert gate["verdict"] == "inconclusive" and result["verdict"] == "inconclusive"
    assert sorted(gate["missing"]) == ["d1", "d2", "d3", "d4"] and gate["devices_compared"] == 1
    assert "building the baseline" in gate["missing"]["d2"] and "previous version" in gate["missing"]["d3"]
    assert "no drift verdict on 4 device(s)" in summary({"classes": {"cpu": result}})
    # no tracker at all (nothing ingested): no evidence never passes
    devices = [device("d0")]
    add_drift(None, "m", "v2", {"cpu": devices})
    assert judge_class(devices, None, Thresholds(no_new_drift=True))["drift"]["verdict"] == "inconclusive"


def test_a_drifted_device_fails_even_while_others_lack_a_verdict():
    quality = tracker({"d0": new_track(mix(450, 50), mix(500, 500))})
    assert judged(quality, ["d0", "d1"])["drift"]["verdict"] == "fail"


def test_devices_with_no_previous_version_have_nothing_to_drift_from():
    devices = [device("d0", had_previous=False)]
    add_drift(tracker({}), "m", "v2", {"cpu": devices})
    gate = judge_class(devices, None, Thresholds(no_new_drift=True))["drift"]
    assert gate["verdict"] == "pass" and "no previous version" in gate["note"]


def test_the_gate_is_absent_when_the_option_is_off():
    quality = tracker({"d0": new_track(mix(450, 50), mix(500, 500))})
    devices = [device("d0")]
    add_drift(quality, "m", "v2", {"cpu": devices})
    result = judge_class(devices, None, Thresholds())
    assert "drift" not in result and result["verdict"] == "pass"
    spec = {"max_p95_ratio": 1.1, "max_error_delta": 0.5, "min_requests": 200}  # a rollout stored before the option
    assert thresholds(spec).no_new_drift is False
    assert thresholds({**spec, "no_new_drift": True}).no_new_drift is True


def test_the_option_flows_from_the_api_into_the_spec():
    from controller.api.routes.rollouts import StartRequest

    assert StartRequest(model="m", version="v2").request().no_new_drift is False
    assert StartRequest(model="m", version="v2", no_new_drift=True).request().no_new_drift is True
    assert DeviceEvidence("d").drift is None  # the evidence carries no verdict unless the gate asks
