"""What a desired state must show before the agent follows it, when trusted keys are configured: the controller's
signature over the whole state, this device's id, an expiry not passed, and a generation no older than the last one
followed (persisted), so a hostile broker can neither replay an old state nor send an unsigned "serve nothing"."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from protocol import Desired, decode
from protocol.errors import EdgeError
from protocol.files import atomic_write
from protocol.signing import Verifier

log = logging.getLogger(__name__)


class Refused(EdgeError):
    """A desired state the agent does not follow; `code` says which check it failed."""

    code = "desired_refused"


class DesiredGate:
    """Admits desired states for `device_id`; without a verifier only the device id is checked (trust the broker)."""

    def __init__(self, device_id: str, verifier: Verifier | None, data_dir: Path) -> None:
        self.device_id = device_id
        self.verifier = verifier
        self.path = data_dir / "desired-generation.json"
        self.generation = self._load()

    def admit(self, payload: bytes) -> Desired:
        """The decoded state to follow, or Refused (one line: why) / ProtocolError for a malformed one."""
        desired = decode(Desired, payload)
        if desired.device_id != self.device_id:
            raise Refused(f"addressed to {desired.device_id}, not to this device", "wrong_device")
        if self.verifier is None:
            return desired
        self.verifier.verify_state(json.loads(payload))
        if desired.expires and desired.expires < time.time():
            raise Refused(f"expired at {time.ctime(desired.expires)} (a state held back or replayed)", "expired")
        if desired.generation < self.generation:
            raise Refused(
                f"generation {desired.generation} is older than generation {self.generation} already followed "
                "(a replayed state)",
                "replayed",
            )
        if desired.generation > self.generation:
            self.generation = desired.generation
            atomic_write(self.path, json.dumps({"generation": self.generation}).encode())
        return desired

    def _load(self) -> int:
        try:
            return int(json.loads(self.path.read_text())["generation"])
        except FileNotFoundError:
            return 0
        except (ValueError, KeyError, TypeError) as exc:
            log.error("%s unreadable (%s): accepting any generation", self.path, exc)
            return 0
