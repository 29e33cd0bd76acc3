"""The spare trial worker (issue 29, item 1): started ahead with the runtimes imported, it runs the next isolated
trial (a real one, ONNX Runtime against OpenVINO); a fresh spare follows; one that died while waiting, or that holds
more memory than the cap, is replaced by a fresh worker for that job; and the shadow check does not wait for
traffic on an idle model."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agent.deploy.preswap import ShadowPlan, check_before_swap
from agent.deploy.shadow import IDLE_S
from agent.serving.live import LiveTap
from agent.serving.table import LoadedModel
from edgectl.sample_models import mlp
from targets import registry, trial_spare
from targets.candidates import candidates
from targets.probe import probe
from targets.trial_worker import run_isolated


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mlp(tmp_path_factory.mktemp("spare") / "mlp.onnx")


@pytest.fixture
def spares():
    yield trial_spare
    trial_spare.disable()


def _capture_warnings(caplog: pytest.LogCaptureFixture) -> None:
    """The module's warnings captured in this test's call phase, whatever an earlier test in this process did to
    logging (a root level raised, the logger disabled by a logging configuration)."""
    logging.getLogger(trial_spare.__name__).disabled = False
    caplog.set_level(logging.WARNING, logger=trial_spare.__name__)


def _trial(model: Path):
    return run_isolated(model, "onnx", {}, candidates("onnx", probe()), 0.3, None, None)


def _waiting(timeout: float = 60.0):
    """The spare once it has imported the runtimes (it then sleeps on its stdin)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = trial_spare._state.proc
        if proc is not None and proc.poll() is None:
            stat = Path(f"/proc/{proc.pid}/wchan").read_text() if Path(f"/proc/{proc.pid}/wchan").exists() else ""
            mib = trial_spare.rss_mib(proc.pid) or 0
            if mib > 60 or "read" in stat:  # numpy and a runtime in: past the imports
                return proc
        time.sleep(0.2)
    raise AssertionError("no spare trial worker came up")


def test_a_spare_runs_the_trial_and_the_next_one_starts(spares, model: Path):
    spares.enable(1024)
    first = _waiting()
    outcome = _trial(model)
    assert outcome.backend is not None and outcome.chosen is not None
    assert first.poll() is not None  # the spare took the job and exited
    assert {r.name for r in outcome.results} >= {"onnxruntime:cpu"}
    assert spares.status()["last_mib"] and spares.status()["last_mib"] > 30  # measured when handed the job
    second = _waiting()
    assert second.pid != first.pid
    spares.disable()
    assert second.wait(10) == 0  # EOF on stdin: it exits without running anything


def test_a_spare_that_died_is_replaced_by_a_fresh_worker(spares, model: Path, caplog):
    _capture_warnings(caplog)
    spares.enable(1024)
    _waiting().kill()
    time.sleep(0.2)
    outcome = _trial(model)
    assert outcome.backend is not None
    assert "ended while waiting" in caplog.text
    _waiting()  # and spares go on


def test_over_the_memory_cap_spares_stop(spares, model: Path, caplog):
    _capture_warnings(caplog)
    spares.enable(1)  # 1 MiB: any Python is over it
    proc = _waiting()
    outcome = _trial(model)
    assert outcome.backend is not None  # a fresh worker ran it
    assert "trial_spare_max_mb" in caplog.text and not spares.status()["enabled"]
    assert proc.wait(10) is not None and spares._state.proc is None


def _loaded(path: Path, version: str) -> LoadedModel:
    backend = registry.create("onnxruntime")
    backend.load(path, "onnx")
    probe_set = ({"x": np.ones((1, 16), np.float32)},)
    return LoadedModel("mlp", version, "0" * 64, backend, probe=probe_set, tap=None)


def test_the_shadow_check_does_not_wait_for_traffic_on_an_idle_model(model: Path):
    old, new = _loaded(model, "1"), _loaded(model, "2")
    plan = ShadowPlan(window_s=5.0, max_pairs=40, share=1.0, max_latency_pct=50.0)
    tap = LiveTap(None)
    started = time.monotonic()
    report = check_before_swap(new, old, plan, tap, threading.Event())
    assert report is not None and report.inputs == "samples" and report.pairs > 0
    assert time.monotonic() - started < IDLE_S  # no wait for requests that never came
    tap.offer({"x": np.ones((1, 16), np.float32)})  # a model that answered just now: live requests are awaited
    started = time.monotonic()
    report = check_before_swap(new, old, plan, tap, threading.Event())
    assert report is not None and time.monotonic() - started >= IDLE_S
