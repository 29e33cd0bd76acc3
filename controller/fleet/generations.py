"""Every signed change of a device's desired state gets a new generation. The agent follows a signed state whose
generation is no older than the one it follows, so a change published under the same generation (new samples or
input shapes picked up by a republish) would let the older state of that generation be replayed until it expires.
A replica bumps the generation whenever what it is about to publish differs from what it last published for the
device under that generation, or when it has not published for the device since it started (it cannot know what a
replica before it published); a plain republish of the same content (new URLs and expiry only) keeps it."""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

from protocol import Desired

# where and when the bytes come from, not what is deployed: renewed by every publish, so not a change
_TRANSPORT: dict[str, Any] = {
    "url": True,
    "fetch_spread_s": True,
    "signature": True,
    "variants": {"__all__": {"url", "signature"}},
    "samples": {"url"},
}


def content(desired: Desired) -> str:
    """A digest of what a desired state asks for (its models), without its generation, time, expiry, signature or
    download URLs."""
    exclude: dict[str, Any] = {"models": {"__all__": _TRANSPORT}}
    asked = desired.model_dump(mode="json", include={"models"}, exclude=exclude)
    return hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()


class Generations:
    """What this replica last published per device: (generation, content)."""

    def __init__(self) -> None:
        self._published: dict[str, tuple[int, str]] = {}
        self._lock = threading.Lock()

    def needs_bump(self, device_id: str, desired: Desired) -> bool:
        """Whether publishing `desired` under its generation could reuse that generation for other content."""
        with self._lock:
            last = self._published.get(device_id)
        if last is None:
            return True
        generation, digest = last
        return desired.generation <= generation and digest != content(desired)

    def published(self, device_id: str, desired: Desired) -> None:
        with self._lock:
            self._published[device_id] = (desired.generation, content(desired))
