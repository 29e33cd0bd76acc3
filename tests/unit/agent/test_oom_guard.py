"""The OOM safety net's record (agent/deploy/oomguard.py): a rise of the cgroup's oom_kill count with no clean stop is
an OOM kill of the agent; one the agent noted while running (a trial worker, killed as designed) or a clean stop is
not; the restore order is most recently used first and a model whose footprint does not fit is left out."""

from __future__ import annotations

from agent.deploy.crashguard import Mark
from agent.deploy.oomguard import OomGuard
from agent.fetch.store import ModelStore


class Kills:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> int:
        return self.n


def test_a_rise_with_no_clean_stop_is_an_oom_kill(tmp_path):
    kills, store = Kills(), ModelStore(tmp_path / "store")
    guard = OomGuard(tmp_path, kills)
    assert guard.check({}, store) is None  # first start: nothing to compare with
    guard.note(["a", "b", "c"], {"b": 2.0, "c": 1.0}, {"a": 64.0, "b": 64.0, "c": 200.0})
    kills.n = 1  # the kernel kills the agent while it loads d
    loading = {"d": Mark("f" * 64, "3", 2, "loading"), "b": Mark("e" * 64, "1", 0, "serving")}
    found = OomGuard(tmp_path, kills).check(loading, store)
    assert found is not None and (found.kills_before, found.kills_now) == (0, 1)
    assert found.order(["a", "c", "b", "x"]) == ["b", "c", "a", "x"]  # most recently used first
    assert list(found.left_out) == ["d"] and "while loading it (d 3)" in found.left_out["d"]
    refused = store.rejection("d", "f" * 64)
    assert refused is not None and (refused.code, refused.attempt) == ("oom_killed", 2)  # push --retry: attempt 3
    assert found.fits("b", 100) and not found.fits("c", 100)  # c needs ~200 MiB
    assert "needs ~200 MiB, 100 MiB free" in found.left_out["c"]
    assert "left out d: " in found.summary() and "\n" not in found.summary()


def test_a_trial_workers_kill_or_a_clean_stop_is_not_the_agents(tmp_path):
    kills, store = Kills(), ModelStore(tmp_path / "store")
    guard = OomGuard(tmp_path, kills)
    guard.check({}, store)
    kills.n = 1  # a trial worker took the kill; the agent notes it after the load
    guard.note(["a"], {}, {"a": 64.0})
    assert OomGuard(tmp_path, kills).check({}, store) is None  # then SIGKILL for another reason: not an OOM kill
    guard = OomGuard(tmp_path, kills)
    guard.check({}, store)
    kills.n = 2
    guard.stopped_cleanly()  # noted at the clean stop
    kills.n = 3  # a kill while the agent was stopped (another process in the group)
    assert OomGuard(tmp_path, kills).check({}, store) is None
