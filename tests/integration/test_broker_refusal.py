"""Wrong broker credentials, agent and controller, against Mosquitto as `edge-controller broker-config` sets it up:
each refusal is logged in one line that says what to check, and the attempts back off (doubling, capped at 60 s)
instead of one a second for ever."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

from conftest import free_port
from hardening import ControllerProcess, FleetMosquitto

from protocol.link import REFUSED_MAX_BACKOFF_S

REFUSED = re.compile(
    r"^(\S+ [\d:]+),(\d+) .*refused the connection: ([^;]+); (check the user name [^;]+); "
    r"attempt (\d+) failed, next in ([\d.]+)s$",
    re.MULTILINE,
)
WATCH_S = 14.0  # one attempt a second would log ~14 refusals in this time; doubling from ~1 s logs at most 5


def refusals(log: str) -> list[tuple[float, str, str, int, float]]:
    """(when, reason, fix, attempt, logged wait) of each logged refusal."""
    found = []
    for stamp, ms, reason, fix, n, delay in REFUSED.findall(log):
        when = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000
        found.append((when, reason, fix, int(n), float(delay)))
    return found


def check_backed_off(found: list[tuple[float, str, str, int, float]], log: str) -> None:
    assert 2 <= len(found) <= 6, log[-3000:]
    _, reason, fix, _, _ = found[0]
    assert "authori" in reason.lower() or "password" in reason.lower(), reason
    assert "mqtt://USER@HOST" in fix and "--broker-password-file" in fix, fix
    assert [n for *_, n, _ in found] == list(range(1, len(found) + 1))
    delays = [d for *_, d in found]
    assert all(abs(b - min(2 * a, REFUSED_MAX_BACKOFF_S)) <= 0.15 for a, b in zip(delays, delays[1:])), delays
    waited = [b[0] - a[0] for a, b in zip(found, found[1:])]  # the next attempt came when the line said it would
    assert all(abs(w - d) < 0.75 for w, d in zip(waited, delays)), (waited, delays)


def test_wrong_credentials_back_off_and_say_what_to_check(tmp_path, prefix):
    fleet = FleetMosquitto(tmp_path, prefix)
    (tmp_path / "wrong").write_text("not-the-password\n")
    agent_log = tmp_path / "agent.log"
    with agent_log.open("ab") as out:
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--broker", f"mqtt://dev-a@127.0.0.1:{fleet.port}",
             "--broker-password-file", str(tmp_path / "wrong"), "--device-id", "dev-a", "--topic-prefix", prefix,
             "--data-dir", str(tmp_path / "agent-data"), "--api", f"127.0.0.1:{free_port()}"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    controller = ControllerProcess(
        tmp_path, "--broker-password-file", str(tmp_path / "wrong"), "--topic-prefix", prefix,
        broker=f"mqtt://edge-controller@127.0.0.1:{fleet.controller_port}",
    )  # fmt: skip
    try:
        controller.start(wait=False)
        time.sleep(WATCH_S)
    finally:
        os.killpg(agent.pid, signal.SIGKILL)
        agent.wait(10)
        if controller.proc is not None:
            controller.proc.kill()
            controller.proc.wait(10)
        fleet.stop()
    check_backed_off(refusals(agent_log.read_text()), agent_log.read_text())
    check_backed_off(refusals(controller.logs()), controller.logs())
