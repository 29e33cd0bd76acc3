"""One path for every inference: a request that does not fit the model counts the same inside a fresh version's
health window and out of it (an error in its telemetry, nothing toward a rollback); a failure of the model's own in
the window rolls it back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.config import AgentConfig
from agent.deploy.crashguard import CrashGuard
from agent.deploy.rollback import Rollback
from agent.fetch.store import Installed, ModelStore
from agent.serving.table import LoadedModel, ModelTable
from agent.telemetry.stats import Recorder
from edgectl.sample_models import mlp
from protocol.tensors import InputError
from targets import registry
from targets.base import BackendError

GOOD = {"x": np.ones((2, 16), np.float32)}
MALFORMED = [
    {"nope": np.ones((2, 16), np.float32)},  # an input the model does not take
    {"x": np.ones((2, 16), np.float64)},  # the wrong datatype
    {"x": np.ones((2, 15), np.float32)},  # the wrong shape
    {},  # no input at all
]


class Breakable:
    """The model's backend, failing every run once `broken` (a runtime gone bad)."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.broken = False

    def __getattr__(self, name: str):
        return getattr(self.backend, name)

    def infer(self, arrays):
        if self.broken:
            raise BackendError("the runtime died")
        return self.backend.infer(arrays)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mlp(tmp_path_factory.mktemp("models") / "mlp.onnx")


def loaded(path: Path, version: str, recorder: Recorder) -> LoadedModel:
    backend = registry.create("onnxruntime")
    backend.load(path, "onnx")
    return LoadedModel("m", version, version * 64, Breakable(backend), stats=recorder.model("m", version))


def served(model: LoadedModel, requests: list[dict]) -> list[str]:
    """Send each request; what each one raised (its class name), or "ok"."""
    outcomes = []
    for arrays in requests:
        try:
            model.infer(arrays)
            outcomes.append("ok")
        except Exception as exc:
            outcomes.append(type(exc).__name__)
    return outcomes


def test_a_malformed_request_counts_the_same_in_the_health_window_and_never_rolls_back(tmp_path, model_file):
    config = AgentConfig(data_dir=tmp_path, health_window_s=60, rollback_max_errors=2)
    table, store = ModelTable(), ModelStore(tmp_path / "store")
    rollback = Rollback(config, table, store, CrashGuard(tmp_path))
    outside, inside = Recorder(sample_every=1, budget_us=None), Recorder(sample_every=1, budget_us=None)
    table.swap(loaded(model_file, "1", outside))  # serving, no health window
    steady = table.current("m")
    rollback.swap_in(loaded(model_file, "2", inside), Installed("2", "2" * 64, "onnx", "onnxruntime:cpu"))
    fresh = table.current("m")
    assert steady is not None and steady.watch is None
    assert fresh is not None and fresh.watch is not None and fresh.watch.active

    requests = [GOOD, *MALFORMED, GOOD, *MALFORMED]
    assert served(steady, requests) == served(fresh, requests) == ["ok", *["InputError"] * 4] * 2
    assert issubclass(InputError, ValueError) and not issubclass(InputError, BackendError)
    (before,), (during,) = outside.take(), inside.take()
    assert (before.requests, before.errors) == (during.requests, during.errors) == (2, 8)
    assert fresh.watch.errors == 0 and fresh.watch.problem is None and fresh.watch.requests == 2
    assert rollback.check_all() == [] and table.current("m") is fresh  # the client's mistakes: no rollback

    fresh.backend.broken = True  # now the model itself fails: that counts toward its rollback
    assert served(fresh, [GOOD, GOOD]) == ["BackendError"] * 2
    (rolled,) = rollback.check_all()
    assert rolled.name == "m" and rolled.problem.code == "rolled_back"
    assert "2 inference errors within the health window" in rolled.problem.message
    assert table.current("m") is steady
