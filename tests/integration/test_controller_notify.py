"""The controller under systemd: READY, STATUS and WATCHDOG over a real NOTIFY_SOCKET, STOPPING on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from conftest import free_port


def test_controller_notifies_systemd(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
    cmd = [
        sys.executable, "-m", "controller.cli", "serve", "--broker", f"embedded:{free_port()}",
        "--http", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "data"),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    messages: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("WATCHDOG=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, proc.stderr.read().decode()
        sock.settimeout(2)
        while not any("STOPPING=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    joined = "\n".join(messages)
    assert "READY=1" in joined and "STATUS=serving HTTP on http://127.0.0.1:" in joined
    assert "WATCHDOG=1" in joined and "STOPPING=1" in joined
