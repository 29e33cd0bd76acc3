"""The memory budget (agent/serving/memory.py) from cgroup files, and eviction (agent/serving/eviction.py): LRU order,
pins, models mid-request, the one-line refusal, and the reload on an unloaded model's next request."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from agent.serving import memory
from agent.serving.eviction import MemoryRefused, ModelUnavailable, Residency, Unloaded
from agent.serving.inflight import TrackedTable
from agent.serving.memory import MIB, Budget, Cgroup, find_budget, own_cgroup
from agent.serving.table import LoadedModel
from targets.base import Backend, BackendConfig
from targets.tensors import TensorSpec
from targets.trial import CandidateResult


def test_v1_group_limit_is_the_lowest_up_the_tree(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "CGROUP_ROOT", tmp_path)
    group = tmp_path / "memory" / "system.slice" / "edge-agent.service"
    group.mkdir(parents=True)
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (group.parent / "memory.limit_in_bytes").write_text(str(300 * MIB))
    (group / "memory.limit_in_bytes").write_text(str(350 * MIB))
    (group / "memory.usage_in_bytes").write_text(str(200 * MIB))
    (group / "memory.stat").write_text(f"cache 1\ntotal_inactive_file {30 * MIB}\ntotal_active_file {20 * MIB}\n")
    (group / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    proc = tmp_path / "cgroup"
    proc.write_text("12:pids:/x\n4:memory:/system.slice/edge-agent.service\n0::/system.slice/edge-agent.service\n")
    found = own_cgroup(str(proc))
    assert found == Cgroup(group, 1)
    assert found.limit(1 << 40) == 300 * MIB  # the slice's limit binds
    assert found.used() == 150 * MIB  # the file cache is reclaimable
    assert found.oom_kills() == 2


def test_v2_group(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "CGROUP_ROOT", tmp_path)
    group = tmp_path / "system.slice" / "edge-agent.service"
    group.mkdir(parents=True)
    (group / "memory.max").write_text(f"{350 * MIB}\n")
    (group.parent / "memory.max").write_text("max\n")
    (group / "memory.current").write_text(str(100 * MIB))
    (group / "memory.stat").write_text(f"anon {80 * MIB}\ninactive_file {10 * MIB}\nactive_file 0\n")
    (group / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/system.slice/edge-agent.service\n")
    found = own_cgroup(str(proc))
    assert found == Cgroup(group, 2)
    assert (found.limit(1 << 40), found.used(), found.oom_kills()) == (350 * MIB, 90 * MIB, 1)


def test_configured_budget_wins():
    budget = find_budget(200)
    assert (budget.limit, budget.source) == (200 * MIB, "memory_budget_mb")


class FakeBudget(Budget):
    """Used memory is the sum of the footprints of the models whose backends are alive."""

    def __init__(self, limit_mb: float, base_mb: float = 100) -> None:
        super().__init__(int(limit_mb * MIB), "test")
        self.base_mb = base_mb
        self.alive: dict[int, float] = {}

    def used(self) -> int:
        return int((self.base_mb + sum(self.alive.values())) * MIB)


class Weighty(Backend):
    type_key = "weighty"
    runtime_module = "numpy"

    def __init__(self, budget: FakeBudget, mb: float) -> None:
        super().__init__(BackendConfig(type="weighty"))
        self.inputs = [TensorSpec("x", "FP32", (1,), (None,))]
        self.outputs = [TensorSpec("y", "FP32", (1,), (None,))]
        self.budget, self.mb = budget, mb
        budget.alive[id(self)] = mb

    def load(self, path, model_format):  # pragma: no cover
        pass

    def infer(self, inputs):
        return {"y": inputs["x"] * 2}

    def __del__(self) -> None:
        self.budget.alive.pop(id(self), None)


def _setup(limit_mb: float, pinned: set[str] | None = None):
    budget = FakeBudget(limit_mb)
    table = TrackedTable()
    residency = Residency(budget, table, pinned or set(), headroom_mb=0, wait_s=1)
    for name in ("a", "b", "c"):
        table.swap(LoadedModel(name, "1", name, Weighty(budget, 64)))
        residency.note(name, 64)

    def reload(name: str) -> LoadedModel:  # as the loader does: admitted on the trial's figure, then loaded
        with residency.loading(name, 0, trial=False) as admission:
            admission.admit(CandidateResult("onnxruntime:cpu", rss_mb=64, peak_mb=64))
            return LoadedModel(name, "1", name, Weighty(budget, 64))

    residency.reload = reload
    return budget, table, residency


def _use(table: TrackedTable, *names: str) -> None:
    for name in names:
        model = table.get(name)
        assert model is not None
        model.infer({"x": np.ones(1, np.float32)})


def test_least_recently_used_unpinned_idle_model_is_unloaded(monkeypatch):
    budget, table, residency = _setup(350, pinned={"a"})
    _use(table, "a", "b", "c", "a")  # b is the least recently used unpinned one
    residency.make_room(60, "d")  # 350 - 292 = 58 free: one model must go
    assert isinstance(table.current("b").backend, Unloaded)
    assert not isinstance(table.current("c").backend, Unloaded)
    assert budget.free_mb() == pytest.approx(122)
    assert table.get("b").infer({"x": np.ones(1, np.float32)})["y"][0] == 2  # loads again on its request
    assert not isinstance(table.current("b").backend, Unloaded)
    assert budget.free_mb() == pytest.approx(58)  # it fitted in what the unload freed
    _use(table, "c", "a")
    residency.make_room(130, "d")  # now b is the least recently used again, then c
    assert [n for n in "abc" if isinstance(table.current(n).backend, Unloaded)] == ["b", "c"]
    assert residency.status()["reloads"] == 1


def _reconcile(residency: Residency, desired_json: str) -> None:
    """The deployer's reconcile on a desired state as it arrives on the wire, up to where it pins (then cancelled)."""
    from types import SimpleNamespace

    from agent.deploy.deployer import Deployer
    from protocol import Desired

    deployer = Deployer.__new__(Deployer)  # only the parts reconcile reads before the first model
    deployer.board = SimpleNamespace(generation=0, names=lambda: ["a", "b", "c"])  # type: ignore[assignment]
    deployer.loader = SimpleNamespace(memory=residency)  # type: ignore[assignment]
    deployer.cancel = threading.Event()
    deployer.cancel.set()
    deployer.reconcile(Desired.model_validate_json(desired_json))


def _desired(pinned: dict[str, bool]) -> str:
    entries = [
        {"name": n, "version": "1", "sha256": "a" * 64, "size": 1} | ({"pinned": True} if pinned.get(n) else {})
        for n in "abc"
    ]
    return json.dumps({"kind": "desired", "device_id": "d", "models": entries})


def test_a_pin_from_the_desired_state_is_never_unloaded():
    budget, table, residency = _setup(350)  # no pins in the config
    _reconcile(residency, _desired({"b": True}))  # `edgectl push --pin` on b
    assert residency.pins() == {"b"}
    _use(table, "a", "b", "c", "a")  # b is the least recently used: pinned, c goes instead
    residency.make_room(60, "d")
    assert [n for n in "abc" if isinstance(table.current(n).backend, Unloaded)] == ["c"]
    with pytest.raises(MemoryRefused) as refused:  # only pins are left resident
        residency.make_room(200, "d")
    assert "pinned: b" in str(refused.value)
    assert not isinstance(table.current("b").backend, Unloaded)
    _reconcile(residency, _desired({}))  # pushed again without --pin: b may go now
    assert residency.pins() == set()
    residency.make_room(200, "d")
    assert isinstance(table.current("b").backend, Unloaded)


def test_refusal_names_memory_and_the_pins():
    _, table, residency = _setup(300, pinned={"a", "b"})
    _use(table, "c")
    with pytest.raises(MemoryRefused) as refused:
        residency.make_room(220, "d")
    assert str(refused.value) == "needs ~220 MiB, 72 MiB free of a 300 MiB budget; pinned: a, b"
    assert [n for n in "abc" if isinstance(table.current(n).backend, Unloaded)] == ["c"]


def test_a_model_mid_request_is_not_unloaded():
    _, table, residency = _setup(300)
    table.inflight.enter("a")
    try:
        with pytest.raises(MemoryRefused, match="busy: a"):
            residency.make_room(250, "d")
    finally:
        table.inflight.leave("a")
    assert not isinstance(table.current("a").backend, Unloaded)


def test_a_reload_that_cannot_fit_is_a_503_with_retry_after():
    _, table, residency = _setup(300, pinned={"a", "b"})
    residency.evict("c")
    residency.reload = lambda name: (_ for _ in ()).throw(MemoryRefused("needs ~64 MiB, 0 MiB free"))
    with pytest.raises(ModelUnavailable) as unavailable:
        table.get("c").infer({"x": np.ones(1, np.float32)})
    assert "needs ~64 MiB" in str(unavailable.value) and unavailable.value.retry_after_s == 1


def test_a_reload_waits_for_the_lock_with_a_bound():
    _, table, residency = _setup(300)
    residency.evict("c")
    holder = threading.Thread(target=lambda: (residency.lock.acquire(), threading.Event().wait(3)), daemon=True)
    holder.start()
    holder.join(0.2)
    with pytest.raises(ModelUnavailable, match="still waiting"):
        table.get("c").infer({"x": np.ones(1, np.float32)})


def test_admission_makes_room_for_the_peak(tmp_path: Path):
    budget, table, residency = _setup(350)
    _use(table, "a", "b", "c")
    with residency.loading("d", 0, trial=False) as admission:
        admission.admit(CandidateResult("onnxruntime:cpu", rss_mb=70, peak_mb=130))
    assert [n for n in "abc" if isinstance(table.current(n).backend, Unloaded)] == ["a", "b"]
    assert admission.report()["predicted_mb"] == 70


def test_telemetry_carries_the_budget_and_each_footprint():
    from protocol.telemetry import ModelTelemetry, Resources

    _, table, residency = _setup(350)
    residency.evict("b")
    figures = residency.telemetry()
    resources = Resources.model_validate(figures["resources"])
    assert (resources.budget_mb, resources.budget_used_mb, resources.unloads) == (350, 228.0, 1)
    model = ModelTelemetry.model_validate({"name": "b", "version": "1", **figures["models"]["b"]})
    assert (model.memory_mb, model.resident) == (64, False)
    assert figures["models"]["a"] == {"memory_mb": 64, "resident": True}


# A Jetson's GPU (nvmap) memory (targets/gpu_memory.py), on a copy of the jetson-orin fixture tree (no Jetson here)
FIXTURES = Path(__file__).parents[2] / "fixtures" / "probe"


def _jetson_with_own_client(tmp_path: Path, *sizes_k: int) -> Path:
    """The fixture tree (copied once) whose nvmap clients table lists this process, one client per size."""
    from targets.gpu_memory import CLIENTS

    root = tmp_path / "jetson-orin"
    if not root.exists():
        shutil.copytree(FIXTURES / "jetson-orin", root)
    lines = (FIXTURES / "jetson-orin" / CLIENTS).read_text().splitlines()
    own = [f"{'user':<18} {'edge-agent':>18} {os.getpid():>8} {size:>10}K" for size in sizes_k]
    (root / CLIENTS).write_text("\n".join(lines[:-1] + own + lines[-1:]) + "\n")
    return root


def test_the_admission_reserves_resident_and_gpu_memory(tmp_path: Path):
    from protocol.status import Memory
    from protocol.telemetry import ModelTelemetry

    budget, table, residency = _setup(350)  # 100 + 3 x 64 MiB used: 58 free
    residency.gpu_root = _jetson_with_own_client(tmp_path, 2048)  # the agent's CUDA context, before the model
    _use(table, "a", "b", "c")
    with residency.loading("d", 0, trial=False) as admission:
        admission.admit(CandidateResult("tensorrt:gpu", rss_mb=30, peak_mb=40, unified_mb=90))
        _jetson_with_own_client(tmp_path, 2048, 91 * 1024)  # the engine's buffers, through a second client
        table.swap(LoadedModel("d", "1", "d", Weighty(budget, 0)))
    # needs 40 (peak) + 90 (GPU, the same RAM) = 130 MiB: a and b go; its resident 40 alone fitted in the 58 free
    assert [n for n in "abc" if isinstance(table.current(n).backend, Unloaded)] == ["a", "b"]
    report = admission.report()
    assert (report["predicted_mb"], report["unified_mb"], report["measured_unified_mb"]) == (30, 90, 91.0)
    memory = Memory.model_validate(report)  # the selection's memory report, as the loader builds it
    assert Memory.model_validate_json(memory.model_dump_json()) == memory
    assert (memory.unified_mb, memory.measured_unified_mb) == (90, 91.0)
    footprint = residency.footprints["d"]
    resident = admission.measured_mb or admission.predicted_mb or 0  # measured here (nothing: the trial's)
    assert footprint == round(resident + 91.0, 1)  # resident plus GPU: what the box lost
    figures = residency.telemetry()["models"]["d"]
    assert (figures["memory_mb"], figures["unified_mb"]) == (footprint, 91.0)
    assert ModelTelemetry.model_validate({"name": "d", "version": "1", **figures}).unified_mb == 91.0


def test_without_the_nvmap_table_the_admission_is_as_before(tmp_path: Path):
    from protocol.status import Memory

    budget, table, residency = _setup(350)
    residency.gpu_root = FIXTURES / "intel-nuc"  # no nvmap: not a Jetson
    _use(table, "a", "b", "c")
    with residency.loading("d", 0, trial=False) as admission:
        admission.admit(CandidateResult("onnxruntime:cpu", rss_mb=70, peak_mb=70))
        table.swap(LoadedModel("d", "1", "d", Weighty(budget, 0)))
    assert [n for n in "abc" if isinstance(table.current(n).backend, Unloaded)] == ["a"]  # room for 70 MiB only
    report = admission.report()
    assert "unified_mb" not in report and "measured_unified_mb" not in report
    assert "unified_mb" not in Memory.model_validate(report).model_dump_json()  # the JSON an older agent sent
    assert "d" not in residency.unified and "unified_mb" not in residency.telemetry()["models"]["d"]
