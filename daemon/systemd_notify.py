"""sd_notify(3) in a few lines: datagrams to the AF_UNIX socket systemd names in NOTIFY_SOCKET.

Outside systemd (no NOTIFY_SOCKET) every call is a no-op that returns False, so the agent runs the same everywhere.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping

log = logging.getLogger(__name__)


def _address(value: str) -> str | bytes | None:
    """The socket address: a path, or an abstract name ('@name' -> b'\\0name'); None for what we cannot use."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # e.g. vsock:... addresses (VMs); not for a device agent


class Notifier:
    """Sends READY/STATUS/WATCHDOG/STOPPING to the service manager. Thread-safe; never raises."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        self.address = _address(raw) if raw else None
        if raw and self.address is None:
            log.warning("NOTIFY_SOCKET=%r is not a path or abstract socket; not notifying systemd", raw)
        self.watchdog_usec = self._watchdog_usec(env)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._last_status: str | None = None

    @staticmethod
    def _watchdog_usec(env: Mapping[str, str]) -> int | None:
        """WATCHDOG_USEC when it is meant for this process (WATCHDOG_PID unset or ours), as sd_watchdog_enabled()."""
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if not usec.isdigit() or int(usec) <= 0:
            return None
        if pid and (not pid.isdigit() or int(pid) != os.getpid()):
            return None
        return int(usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half the timeout, as systemd recommends; None when no watchdog."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None

    def notify(self, *lines: str) -> bool:
        if self.address is None:
            return False
        message = "\n".join(lines).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(message, self.address)
                return True
            except OSError as exc:
                log.debug("sd_notify %r failed: %s", message, exc)
                return False

    def ready(self, status: str | None = None) -> bool:
        if status is not None:
            self._last_status = status
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        """Send STATUS= only when it changed (the main loop calls this every second)."""
        text = text.replace("\n", " ")
        if text == self._last_status:
            return False
        self._last_status = text
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
