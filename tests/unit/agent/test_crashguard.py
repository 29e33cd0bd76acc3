"""The crash-loop breaker's bookkeeping: marks survive a restart, deaths are counted, and the version is refused
(with the cause faulthandler recorded) at the right count; the store then serves the version before it."""

from __future__ import annotations

from agent.deploy.crashguard import MAX_DEATHS, CrashGuard
from agent.fetch.store import Installed, ModelStore

FAULT = """Fatal Python error: Segmentation fault

Current thread 0x00007f3 (most recent call first):
  File "/venv/lib/python3.11/site-packages/onnxruntime/capi/onnxruntime_inference_collection.py", line 220 in run
  File "/opt/edge/targets/backends/onnxruntime.py", line 150 in infer
  File "/opt/edge/agent/serving.py", line 60 in infer
"""


def store_with_two_versions(tmp_path) -> ModelStore:
    store = ModelStore(tmp_path / "store")
    store.mark_serving("m", Installed("1", "a" * 64))
    store.mark_serving("m", Installed("2", "b" * 64))
    return store


def test_a_serving_version_is_refused_on_the_second_death_and_the_one_before_serves(tmp_path):
    store = store_with_two_versions(tmp_path)
    guard = CrashGuard(tmp_path)
    guard.begin("m", "b" * 64, "2", 7, "serving", window_s=60)
    (tmp_path / "crash.log").write_text(FAULT)

    deaths = CrashGuard(tmp_path).recover(store, window_s=60)  # first restart: counted, kept on trial
    assert [d.mark.deaths for d in deaths] == [1] and store.records["m"].serving.version == "2"
    assert "Segmentation fault" in deaths[0].cause and "(backend onnxruntime)" in deaths[0].cause
    assert "onnxruntime/capi/onnxruntime_inference_collection.py run" in deaths[0].cause

    assert CrashGuard(tmp_path).recover(store, window_s=60) == []  # killed (no fatal error recorded): not counted
    (tmp_path / "crash.log").write_text(FAULT.replace("Segmentation fault", "Aborted"))
    deaths = CrashGuard(tmp_path).recover(store, window_s=60)  # the second native crash: refused
    assert deaths[0].mark.deaths == MAX_DEATHS == 2
    assert store.records["m"].serving.version == "1"
    refusal = store.rejection("m", "b" * 64)
    assert refusal.code == "crashed" and refusal.attempt == 7 and "(2 times)" in refusal.reason
    assert "Aborted" in refusal.reason  # the log was read once per death
    assert CrashGuard(tmp_path).recover(store, window_s=60) == []  # nothing left on trial


def test_a_death_while_loading_from_disk_refuses_at_once(tmp_path):
    store = store_with_two_versions(tmp_path)
    CrashGuard(tmp_path).begin("m", "b" * 64, "2", 0, "restoring")
    (tmp_path / "crash.log").write_text(FAULT)
    (deaths,) = CrashGuard(tmp_path).recover(store, window_s=60)
    assert deaths.mark.phase == "restoring" and store.records["m"].serving.version == "1"
    assert "while loading it at start" in store.rejection("m", "b" * 64).reason


def test_a_kill_while_loading_is_nobodys_fault(tmp_path):
    store = store_with_two_versions(tmp_path)
    CrashGuard(tmp_path).begin("m", "b" * 64, "2", 0, "loading")  # then SIGKILL: faulthandler writes nothing
    assert CrashGuard(tmp_path).recover(store, window_s=60) == []
    assert store.rejection("m", "b" * 64) is None and store.records["m"].serving.version == "2"


def test_a_mark_ended_or_expired_costs_nothing(tmp_path):
    store = store_with_two_versions(tmp_path)
    guard = CrashGuard(tmp_path)
    guard.begin("m", "b" * 64, "2", 0, "serving", window_s=0.0)
    guard.expire()
    guard.begin("n", "c" * 64, "1", 0, "loading")
    guard.end("n")
    assert CrashGuard(tmp_path).recover(store, window_s=60) == []
    assert store.records["m"].serving.version == "2"


def test_a_clean_stop_is_not_a_death(tmp_path):
    store = store_with_two_versions(tmp_path)
    guard = CrashGuard(tmp_path)
    guard.begin("m", "b" * 64, "2", 0, "serving", window_s=60)
    guard.begin("n", "c" * 64, "1", 0, "loading")
    guard.stopped_cleanly()
    for _ in range(3):  # start, SIGTERM, start, ...
        guard = CrashGuard(tmp_path)
        assert guard.recover(store, window_s=60) == []
        guard.stopped_cleanly()
    assert store.records["m"].serving.version == "2" and store.rejection("m", "b" * 64) is None
    kept = CrashGuard(tmp_path)
    kept.recover(store, window_s=60)
    assert kept.mark("m").deaths == 0 and kept.mark("n") is None  # still on trial; the interrupted load is moot
