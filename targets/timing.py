"""The one interleaved timer: every latency comparison (backend trial, variant contest, pre-swap check, converters'
reports, benchmarks) times its contenders in blocks taken in turn, so the box's drift hits them all alike (this
box's speed drifts up to 1.6x between seconds; absolute timings taken apart cannot be compared)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

Run = Callable[[], object]


def block(run: Run, *, min_runs: int, max_runs: int, seconds: float) -> list[float]:
    """Seconds of each of at least `min_runs` and at most `max_runs` calls of `run`, for about `seconds`."""
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < min_runs or (time.perf_counter() < end and len(times) < max_runs):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return times


def turn_about(
    runs: Sequence[Run],
    *,
    rounds: int,
    block_s: float | Sequence[float],
    min_runs: int = 3,
    max_runs: int | Sequence[int] = 500,
    settle_s: float = 0.0,
) -> list[list[list[float]]]:
    """Per contender, per round, the seconds of each call: contenders' blocks taken in turn, `rounds` times. With
    `settle_s`, each block waits that long and runs twice untimed first (the other runtime's worker threads spin
    for a while after its last run: ONNX Runtime, XNNPACK)."""
    seconds = [block_s] * len(runs) if isinstance(block_s, (float, int)) else list(block_s)
    limits = [max_runs] * len(runs) if isinstance(max_runs, int) else list(max_runs)
    measured: list[list[list[float]]] = [[] for _ in runs]
    for _ in range(rounds):
        for i, run in enumerate(runs):
            if settle_s:
                time.sleep(settle_s)
                run()
                run()
            measured[i].append(block(run, min_runs=min(min_runs, limits[i]), max_runs=limits[i], seconds=seconds[i]))
    return measured


def percentile_ms(times: Sequence[float], q: float) -> float:
    """The q-th percentile of seconds, in milliseconds."""
    import numpy as np

    return float(np.percentile(times, q)) * 1000 if times else float("nan")


def best_block_ms(rounds: list[list[float]], q: float) -> float:
    """The best round's q-th percentile (ms): a block hit by a burst of other work does not count against one."""
    return min(percentile_ms(r, q) for r in rounds)


def pooled_ms(rounds: list[list[float]], q: float) -> float:
    """The q-th percentile (ms) over every call of every round."""
    return percentile_ms([t for r in rounds for t in r], q)


# A contender whose median in every round, over two rounds or more, was this many times the leader's median will not
# win: it stops early. Never on one round: on 12 zoo models a burst of other work in one OpenVINO block (ppocr_v4_det
# at 96.7 ms against its usual 30-42) had it dropped after its first round and the slower runtime chosen; nor on its
# fastest call, a tail value (an MLP's OpenVINO at 3-5 ms p50 ran all its rounds beside ONNX Runtime's 1.0-1.2 ms).
BEATEN = 1.2


def turn_about_pruned(
    runs: Sequence[Run], *, rounds: int, block_s: float, min_runs: int, max_runs: int
) -> list[list[list[float]]]:
    """turn_about, where a contender clearly beaten from its second round on (its best round's median over BEATEN
    times the leader's median) sits out the rounds left; what it ran stands for it. One left alone stops too.
    A 10 MB MLP's trial spent 0.3 s of 0.55 s timing OpenVINO at 3.1 ms a call beside ONNX Runtime's 0.6 ms, a
    50 MB one ~1 s of its ~2 s at 21 ms beside 15 ms (issue 29)."""
    measured: list[list[list[float]]] = [[] for _ in runs]
    running = list(range(len(runs)))
    for done in range(1, rounds + 1):
        timed = turn_about([runs[i] for i in running], rounds=1, block_s=block_s, min_runs=min_runs, max_runs=max_runs)
        for i, one in zip(running, timed):
            measured[i] += one
        if done >= 2:
            leader = min(statistics.median(t for r in measured[i] for t in r) for i in running)
            best = {i: min(statistics.median(r) for r in measured[i]) for i in running}
            running = [i for i in running if best[i] <= BEATEN * leader]
            if len(running) == 1:  # the one left has no one to be compared with: its rounds so far give its p50
                break
    return measured
