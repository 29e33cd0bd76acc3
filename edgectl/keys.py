"""Single key presses on a terminal, for live screens (`edgectl top`): `q` quits without Ctrl-C. Off a terminal (a
pipe, a file, CI) no key is read and the screen runs until interrupted."""

from __future__ import annotations

import logging
import os
import select
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

log = logging.getLogger(__name__)

QUIT_KEYS = frozenset("qQ")


class KeyReader(Protocol):
    def __call__(self, timeout: float) -> str | None: ...


def _sleep_only(timeout: float) -> str | None:
    time.sleep(timeout)
    return None


@contextmanager
def key_presses() -> Iterator[KeyReader]:
    """A reader `wait(timeout)` that returns the key pressed within `timeout` seconds, or None; the terminal is in
    cbreak mode (keys arrive unbuffered, unechoed; Ctrl-C still interrupts) until the block ends."""
    try:
        import termios
        import tty
    except ImportError:  # not a POSIX terminal
        yield _sleep_only
        return
    fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else -1
    if fd < 0:
        yield _sleep_only
        return
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def wait(timeout: float) -> str | None:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return None
        data = os.read(fd, 32)
        return data.decode(errors="replace")[:1] if data else None

    try:
        yield wait
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def wait_or_quit(wait: KeyReader, seconds: float) -> bool:
    """Wait up to `seconds`; True as soon as a quit key is pressed (other keys are ignored)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        key = wait(left)
        if key is not None and key in QUIT_KEYS:
            return True
    return False
