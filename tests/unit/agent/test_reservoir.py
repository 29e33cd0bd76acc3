"""The live input reservoir keeps a uniform sample within its caps, and the shadow mirror never blocks a client."""

from __future__ import annotations

import random
import statistics

import numpy as np

from agent.serving.live import Mirror
from agent.serving.reservoir import Reservoir


def test_every_request_has_the_same_chance_to_be_kept():
    means = []
    for seed in range(200):
        reservoir = Reservoir(capacity=10, rng=random.Random(seed))
        for i in range(1000):
            reservoir.offer({"x": np.full((1, 4), i, np.float32)})
        kept = [int(s["x"][0, 0]) for s in reservoir.snapshot()]
        assert len(kept) == 10 and len(set(kept)) == 10
        means.append(statistics.mean(kept))
    assert abs(statistics.mean(means) - 499.5) < 25  # the first requests are not favoured (they would give ~5)


def test_the_byte_cap_holds_and_oversized_inputs_are_skipped():
    reservoir = Reservoir(capacity=100, max_bytes=64 << 10)
    for i in range(300):
        reservoir.offer({"x": np.full((1, 1024), i, np.float32)})  # 4 KiB each
    reservoir.offer({"x": np.zeros((1, 8192), np.float32)})  # 32 KiB: over a quarter of the cap
    summary = reservoir.summary()
    assert summary["bytes"] <= 64 << 10 and summary["kept"] == 16 and summary["seen"] == 300


def test_kept_inputs_are_copies_not_views_of_the_request():
    reservoir = Reservoir(capacity=2)
    x = np.ones((1, 4), np.float32)
    reservoir.offer({"x": x})
    x[:] = 7  # the request's buffer is reused
    assert reservoir.snapshot()[0]["x"].tolist() == [[1, 1, 1, 1]]


def test_a_full_mirror_drops_instead_of_waiting():
    mirror = Mirror(capacity=3)
    for i in range(10):
        mirror.offer({"x": np.full((1, 2), i, np.float32)})
    assert mirror.queue.qsize() == 3 and mirror.dropped == 7 and mirror.seen == 10
