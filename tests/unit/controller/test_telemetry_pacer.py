"""The telemetry reader's pause between reads (controller.telemetry.subscriber.Pacer): pauses that gather nothing
shrink to none, and they grow back while they bring messages (against a real broker: tests/integration)."""

from __future__ import annotations

from controller.telemetry.subscriber import GATHER_MIN_S, GATHER_S, Pacer


def test_pauses_shrink_when_they_bring_nothing_and_grow_back():
    pacer = Pacer()
    assert pacer.pause == GATHER_S
    for _ in range(10):
        pacer.paused(brought=False)
    assert pacer.pause == 0.0
    pacer.paused(brought=True)
    assert pacer.pause == GATHER_MIN_S
    for _ in range(10):
        pacer.paused(brought=True)
    assert pacer.pause == GATHER_S
