"""The trial's timer leaves a clearly beaten contender out of the rounds left (issue 29), never on one round's
evidence, and keeps close ones in."""

from __future__ import annotations

import time

from targets.timing import BEATEN, turn_about_pruned


def sleeper(seconds: float):
    return lambda: time.sleep(seconds)


def test_a_clearly_slower_contender_stops_after_its_second_round():
    measured = turn_about_pruned(
        [sleeper(0.002), sleeper(0.002), sleeper(0.002 * BEATEN * 3)], rounds=4, block_s=0.05, min_runs=3, max_runs=8
    )
    fast, also_fast, slow = measured
    assert len(fast) == 4 and len(also_fast) == 4 and all(len(r) >= 3 for r in fast)  # two close: all rounds
    assert len(slow) == 2 and all(len(r) >= 3 for r in slow)  # the rounds it ran stand for it


def test_the_leader_left_alone_stops_timing():
    """Rounds of the one contender left decide nothing: its p50 comes from the rounds it ran beside the others
    (a 15 ms model's leader spent two more rounds of 15 runs, ~0.45 s of a deployment, timed against no one)."""
    fast, slow = turn_about_pruned(
        [sleeper(0.002), sleeper(0.002 * BEATEN * 3)], rounds=4, block_s=0.05, min_runs=3, max_runs=8
    )
    assert len(fast) == 2 and len(slow) == 2 and all(len(r) >= 3 for r in fast + slow)


def test_a_contender_slow_in_one_round_only_stays_in():
    calls = {"n": 0}

    def burst_then_even() -> None:  # its first block hit by other work: ten times its speed, then as fast as the other
        calls["n"] += 1
        time.sleep(0.02 if calls["n"] <= 3 else 0.002)

    measured = turn_about_pruned([sleeper(0.002), burst_then_even], rounds=4, block_s=0.001, min_runs=3, max_runs=3)
    assert [len(rounds) for rounds in measured] == [4, 4]


def test_close_contenders_run_every_round():
    measured = turn_about_pruned(
        [sleeper(0.002), sleeper(0.0022), sleeper(0.002)], rounds=3, block_s=0.03, min_runs=5, max_runs=10
    )
    assert [len(rounds) for rounds in measured] == [3, 3, 3]
