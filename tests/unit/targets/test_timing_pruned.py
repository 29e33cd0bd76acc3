"""The trial's timer leaves a clearly beaten contender out of the rounds left (issue 29) and keeps close ones in."""

from __future__ import annotations

import time

from targets.timing import BEATEN, BEATEN_TWICE, turn_about_pruned


def sleeper(seconds: float):
    return lambda: time.sleep(seconds)


def test_a_contender_many_times_slower_stops_after_the_first_round():
    measured = turn_about_pruned(
        [sleeper(0.001), sleeper(0.001 * BEATEN * 5)], rounds=4, block_s=0.05, min_runs=3, max_runs=8
    )
    fast, slow = measured
    assert len(fast) == 4 and all(len(r) >= 3 for r in fast)
    assert len(slow) == 1 and len(slow[0]) >= 3  # its first round's calls stand for it


def test_close_contenders_run_every_round():
    measured = turn_about_pruned(
        [sleeper(0.002), sleeper(0.0022), sleeper(0.002)], rounds=3, block_s=0.03, min_runs=5, max_runs=10
    )
    assert [len(rounds) for rounds in measured] == [3, 3, 3]


def test_a_contender_a_third_slower_stops_after_its_second_round():
    measured = turn_about_pruned(
        [sleeper(0.01), sleeper(0.01 * (BEATEN_TWICE + BEATEN) / 2)], rounds=4, block_s=0.05, min_runs=5, max_runs=6
    )
    assert len(measured[0]) == 4 and len(measured[1]) == 2
