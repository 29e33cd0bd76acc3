"""A queue with one bounded lane per device, served round-robin: one device flooding artifact chunk requests fills
only its own lane and waits its turn, so another device's requests are neither dropped nor stuck behind the flood."""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from typing import Generic, TypeVar

T = TypeVar("T")

PER_DEVICE = 64  # an agent keeps a few chunk requests in flight; far more than that is a flood
MAX_DEVICES = 100_000


class FairQueue(Generic[T]):
    """put(device, item) -> False when that device's lane is full; get() blocks and takes the next device's turn;
    close() wakes every getter with None."""

    def __init__(self, per_device: int = PER_DEVICE, max_devices: int = MAX_DEVICES) -> None:
        self.per_device = per_device
        self.max_devices = max_devices
        self._lanes: OrderedDict[str, deque[T]] = OrderedDict()
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0

    def put(self, device_id: str, item: T) -> bool:
        with self._cond:
            lane = self._lanes.get(device_id)
            if lane is None:
                if len(self._lanes) >= self.max_devices:
                    self.dropped += 1
                    return False
                lane = self._lanes[device_id] = deque()
            if len(lane) >= self.per_device:
                self.dropped += 1
                return False
            lane.append(item)
            self._cond.notify()
            return True

    def get(self) -> tuple[str, T] | None:
        """The oldest item of the device whose turn it is (that device then goes to the back), or None once closed."""
        with self._cond:
            while not self._lanes and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            device_id, lane = self._lanes.popitem(last=False)
            item = lane.popleft()
            if lane:
                self._lanes[device_id] = lane  # back of the line
            return device_id, item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return sum(len(lane) for lane in self._lanes.values())
