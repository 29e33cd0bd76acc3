"""The spare model check (issue 29): an upload is checked by a child that waits with the parsers imported, with the
same answers, refusals and memory cap as a fresh child; each spare checks once and the next one replaces it."""

from __future__ import annotations

import time

import pytest

from controller.registry import model_check
from controller.registry.inspect import InvalidModel
from edgectl import sample_models


@pytest.fixture
def spares():
    model_check.enable_spare()
    yield model_check._spares
    model_check.disable_spare()


def waiting(spares) -> int:
    proc = spares.proc
    assert proc is not None and proc.poll() is None
    return proc.pid


def test_a_spare_checks_once_and_is_replaced_with_the_fresh_childs_answer(spares, tmp_path):
    path = sample_models.mlp(tmp_path / "m.onnx")
    first = waiting(spares)
    by_spare = model_check.check_model(path, "m.onnx")
    second = waiting(spares)
    assert second != first  # the spare that checked exited; a new one waits
    model_check.disable_spare()
    assert model_check._spares.proc is None
    assert model_check.check_model(path, "m.onnx") == by_spare  # a fresh child: the same format and description
    assert by_spare[0] == "onnx" and [i["name"] for i in by_spare[1]["inputs"]] == ["x"]


def test_a_spare_refuses_what_a_fresh_child_refuses(spares, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07" + b"not a protobuf model" * 10)
    with pytest.raises(InvalidModel, match="does not parse as an ONNX protobuf|not a valid ONNX model"):
        model_check.check_model(bad, "bad.onnx")
    waiting(spares)


def test_a_spare_keeps_the_memory_cap(spares, tmp_path, monkeypatch):
    path = sample_models.mlp(tmp_path / "m.onnx", pad_mb=48)  # far beyond any free slack in its heap
    waiting(spares)
    monkeypatch.setattr(model_check, "BASE_BYTES", 0)  # the cap below what the spare already maps
    with pytest.raises(InvalidModel, match="needed more than the|bad_alloc"):  # Python's or onnx's own refusal
        model_check.check_model(path, "m.onnx")


def test_a_spare_that_died_while_waiting_is_replaced_by_a_fresh_child(spares, tmp_path):
    path = sample_models.mlp(tmp_path / "m.onnx")
    dead = spares.proc
    dead.kill()
    dead.wait()
    started = time.monotonic()
    assert model_check.check_model(path, "m.onnx")[0] == "onnx"
    assert time.monotonic() - started < 60
    assert waiting(spares) != dead.pid
