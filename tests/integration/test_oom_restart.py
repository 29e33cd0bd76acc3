"""Issue 27, point 6: the OOM safety net, for real. An agent in a cgroup v1 memory group whose limit is below what it
is told it may use (memory_budget_mb, as a wrong setting would) serves a 64 MiB model; a 256 MiB one is pushed, and
the kernel's OOM killer ends the agent while it loads it. Restarted with the same data dir in the same group, the
agent records `oom_killed` (log line, the status' reason, one line), restores the model that fitted, and leaves out the
version it died loading instead of loading it again: no second OOM kill, and the model that fitted answers."""

from __future__ import annotations

import contextlib
import os
import time

from conftest import model_state, wait_until
from test_memory_budget import _answers, _cgroup, _online, _oom_kills, _remove

from edgectl.sample_weighty import weighty

LIMIT_MB = 300


def test_an_oom_killed_agent_restarts_without_the_fatal_load(controller, start_agent, tmp_path):
    small = weighty(tmp_path / "small.onnx", 4096, seed=0)  # 64 MiB
    big = weighty(tmp_path / "big.onnx", 8192, seed=1)  # 256 MiB: cannot fit beside the agent in 300 MiB
    group = _cgroup(f"edgefleet-oom-{os.getpid()}")
    (group / "memory.limit_in_bytes").write_text(str(LIMIT_MB << 20))
    config = "memory_budget_mb = 4000\nbackend_trial = false\ntrial_spare_max_mb = 0\n"  # a budget the box lacks
    try:
        agent = start_agent("dev1", config=config)
        (group / "cgroup.procs").write_text(str(agent.proc.pid))
        wait_until(lambda: _online(controller), 30, "dev1 online")
        record = controller.client.upload_model(small, "m0", None)
        controller.client.deploy("m0", record["version"], ["dev1"])
        wait_until(lambda: (model_state(controller, "dev1", "m0") or {}).get("state") == "serving", 120, "m0 serving")
        _answers(agent.api, "m0", 0)
        kills = _oom_kills(group)
        record = controller.client.upload_model(big, "m1", None)
        controller.client.deploy("m1", record["version"], ["dev1"])
        wait_until(lambda: agent.proc.poll() is not None, 180, "the kernel to OOM-kill the agent loading m1")
        assert agent.proc.returncode == -9, agent.logs()[-2000:]  # SIGKILL
        assert _oom_kills(group) > kills, "the agent died, but not of the OOM killer"
        kills = _oom_kills(group)

        again = start_agent("dev1", config=config)
        (group / "cgroup.procs").write_text(str(again.proc.pid))
        wait_until(lambda: "oom_killed: the kernel's OOM killer ended the agent" in again.logs(), 60, "oom_killed")

        def m1_reported():
            entry = model_state(controller, "dev1", "m1") or {}
            return entry if entry.get("state") == "failed" and entry.get("reason") else None

        entry = wait_until(m1_reported, 120, "m1 reported failed")
        assert entry["reason"]["code"] == "oom_killed", entry
        assert "while loading it" in entry["reason"]["message"] and "\n" not in entry["reason"]["message"]
        wait_until(lambda: (model_state(controller, "dev1", "m0") or {}).get("state") == "serving", 60, "m0 serving")
        _answers(again.api, "m0", 0)
        time.sleep(5)  # the desired state (m1 included) has been reconciled by now: it must not load m1 again
        assert again.proc.poll() is None, again.logs()[-3000:]
        assert _oom_kills(group) == kills
        line = [x for x in again.logs().splitlines() if "oom_killed:" in x][-1]  # after the restore
        print(line)
        assert "left out m1" in line and "restored one at a time, most recently used first: m0" in line
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)
        _remove(group)
