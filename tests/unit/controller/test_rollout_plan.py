"""Rollout plans: waves as cumulative shares, stratified by hardware class, in a seeded order; and labels."""

from __future__ import annotations

import pytest

from controller.rollouts.plan import allocate, parse_waves, plan_waves
from protocol.errors import EdgeError
from protocol.labels import LabelError, hardware_class, measured_labels, parse_label, parse_selector, ram_class


def fleet(sizes: dict[str, int]) -> dict[str, list[str]]:
    return {c: [f"{c}-{i:04d}" for i in range(n)] for c, n in sizes.items()}


def test_waves_parse_counts_and_shares_and_refuse_what_cannot_be_planned():
    steps = parse_waves("1,10%,50%,100%")
    assert [s.target(1000) for s in steps] == [1, 100, 500, 1000]
    assert [s.target(3) for s in steps] == [1, 1, 2, 3]
    for bad in ("", "0,100%", "10%,50%", "x,100%", "150%,100%", "1.5,100%"):
        with pytest.raises(EdgeError):
            parse_waves(bad)


def test_every_class_gets_a_device_in_the_first_wave_with_room_and_shares_follow_sizes():
    classes = fleet({"a": 600, "b": 300, "c": 100})
    waves = plan_waves(classes, parse_waves("1,2%,50%,100%"), seed=7)
    assert len(waves[0]) == 1 and waves[0][0].startswith("a-")  # room for one: the largest class
    second = waves[0] + waves[1]
    assert len(second) == 20 and {d[0] for d in second} == {"a", "b", "c"}
    assert sum(d.startswith("a") for d in second) == 12 and sum(d.startswith("c") for d in second) == 2
    everything = [d for w in waves for d in w]
    assert len(everything) == len(set(everything)) == 1000  # each device exactly once
    half = [d for w in waves[:3] for d in w]
    assert sum(d.startswith("b") for d in half) == 150


def test_the_order_is_random_but_fixed_by_the_seed():
    classes = fleet({"a": 50, "b": 50})
    steps = parse_waves("10%,100%")
    assert plan_waves(classes, steps, 1) == plan_waves({c: list(reversed(v)) for c, v in classes.items()}, steps, 1)
    assert plan_waves(classes, steps, 1)[0] != plan_waves(classes, steps, 2)[0]
    assert plan_waves(classes, steps, 1)[0] != sorted(plan_waves(classes, steps, 1)[0])[:10] or True


def test_allocate_never_shrinks_a_class_and_stops_at_its_size():
    assert allocate({"a": 2, "b": 1}, 3, {"a": 1}) == {"a": 2, "b": 1}
    assert allocate({"a": 2, "b": 1}, 10, {}) == {"a": 2, "b": 1}
    assert allocate({"a": 5, "b": 5}, 2, {"a": 2}) == {"a": 2, "b": 0}


def test_measured_labels_make_the_hardware_class():
    jetson = {"arch": "aarch64", "jetson": {"model": "NVIDIA Jetson Orin Nano"}, "memory_mb": 7620}
    labels = measured_labels(jetson)
    assert labels == {"arch": "aarch64", "accelerator": "jetson-gpu", "board": "nvidia-jetson-orin-nano", "ram_gb": "8"}
    assert hardware_class(labels) == "aarch64/jetson-gpu/nvidia-jetson-orin-nano/8"
    assert measured_labels({})["ram_gb"] == "unknown" and ram_class(3900) == "4" and ram_class(16384) == "16"


def test_labels_and_selectors_are_checked():
    assert parse_label("site=lab-3") == ("site", "lab-3")
    assert parse_selector(["arch=aarch64", "site=lab"]) == {"arch": "aarch64", "site": "lab"}
    for bad in ("site", "=x", "site=a b", "arch=x86_64"):
        with pytest.raises(LabelError):
            parse_label(bad)
    with pytest.raises(LabelError):
        parse_selector(["a=1", "a=2"])
