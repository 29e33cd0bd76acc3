"""The device status the agent keeps: written from one module (the deployer), and the backend selection (and
failover) typed from the loader to the wire, so a report dumps as the trial and the contest made it."""

from __future__ import annotations

import ast
import json
import warnings
from pathlib import Path

import pytest

from agent.deploy.loader import reported
from agent.fetch.store import ModelStore
from agent.serving.table import ModelTable
from agent.status_board import StatusBoard
from edgectl.sample_models import mlp
from protocol import DeviceState, Failover, Selection, VariantTrial
from targets.probe import probe
from targets.selection import select_backend

AGENT = Path(__file__).resolve().parents[3] / "agent"
WRITES = {"open", "update", "update_serving", "remove"}


def board_writes(path: Path) -> list[int]:
    """Lines of `path` that change a status board: a call of one of its write methods, or `board.generation = ...`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in WRITES:
            owner = node.func.value
            name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            if name.endswith("board"):
                found.append(node.lineno)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Attribute) and ast.unparse(target.value).endswith("board"):
                    found.append(node.lineno)
    return found


def test_the_deployer_alone_writes_the_status_board():
    writers = {str(p.relative_to(AGENT.parent)) for p in AGENT.rglob("*.py") if board_writes(p)}
    assert writers == {"agent/deploy/deployer.py"}


@pytest.fixture(scope="module")
def trial(tmp_path_factory: pytest.TempPathFactory):
    path = mlp(tmp_path_factory.mktemp("models") / "mlp.onnx")
    return select_backend(path, "onnx", probe(), budget_s=0.3)


def test_the_reported_selection_dumps_what_the_trial_found(trial):
    selection = reported(trial)
    assert isinstance(selection, Selection) and selection.backend == trial.label
    assert selection.model_dump() == json.loads(json.dumps(trial.as_dict()))  # the trial's own JSON summary


def test_a_typed_entry_reaches_the_wire_without_warnings(tmp_path: Path, trial):
    sent: list[DeviceState] = []
    board = StatusBoard("d", ModelTable(), ModelStore(tmp_path / "store"), sent.append)
    board.open("m", "1", "a" * 64, "loading")
    variants = [VariantTrial(variant="original", backend="onnxruntime:cpu", p50_ms=0.1)]
    selection = reported(trial).model_copy(update={"variants": variants, "live": "kept onnxruntime:cpu"})
    failover = Failover(active="onnxruntime:cpu", preferred="openvino:cpu", failed_over=True, failovers=1)
    board.update("m", state="serving", selection=selection, failover=failover)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydantic warns when a field holds something other than its type
        wire = json.loads(sent[-1].encode())["models"][0]
    assert wire["selection"]["variants"] == [{"variant": "original", "backend": "onnxruntime:cpu", "p50_ms": 0.1}]
    assert wire["selection"]["live"] == "kept onnxruntime:cpu" and wire["selection"]["reason"] == trial.reason
    assert wire["failover"] == {"active": "onnxruntime:cpu", "preferred": "openvino:cpu", "failed_over": True,
                                "failovers": 1}  # fmt: skip
    assert wire["shadow"] is None
