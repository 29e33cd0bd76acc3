"""The controller's domain modules without HTTP: registry uploads, calibration, variant choice, deployment and
rollback planning, and the one table that turns their error codes into HTTP statuses."""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from controller.db.database import Conflict, Database, ModelRow, VariantRow
from controller.errors import STATUS, DeviceError, http_status
from controller.fleet.deployments import Deployments
from controller.registry.artifacts import ArtifactStore
from controller.registry.calibration import CalibrationStore
from controller.registry.inspect import InvalidModel
from controller.registry.models import Registry
from controller.registry.optimizer import choose_variants, variants_for_runtimes
from controller.registry.uploads import TooLarge, receive_bytes
from edgectl import sample_models
from protocol.errors import EdgeError

CONTROLLER = Path(__file__).resolve().parents[3] / "controller"


@pytest.fixture
def db(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'c.db'}")
    yield database
    database.close()


@pytest.fixture
def registry(db, tmp_path):
    return Registry(db, ArtifactStore(tmp_path / "artifacts"), max_upload_bytes=1 << 20)


async def chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def upload(registry: Registry, name: str, data: bytes, version: str | None = None, filename: str = "m.onnx"):
    received = asyncio.run(registry.receive(name, version, chunks(data)))
    return registry.register(name, version, filename, received)


def code_of(call) -> str:
    with pytest.raises(EdgeError) as info:
        call()
    return info.value.code


def message_of(call) -> str:
    with pytest.raises(EdgeError) as info:
        call()
    return str(info.value)


def leftovers(registry: Registry) -> list[Path]:
    return list(registry.artifacts.incoming.iterdir())


def test_registry_refuses_a_bad_name_version_file_or_size(registry):
    assert code_of(lambda: upload(registry, "bad name", b"x")) == "bad_name"
    assert code_of(lambda: upload(registry, "m", b"x", version="../x")) == "bad_version"
    assert code_of(lambda: upload(registry, "m", b"x" * (2 << 20))) == "too_large"
    with pytest.raises(InvalidModel, match=r"^m\.onnx: not a valid ONNX model") as bad:
        upload(registry, "m", b"not a model at all")
    assert bad.value.code == "invalid_model"
    assert code_of(lambda: upload(registry, "m", b"", filename="m.tflite")) == "invalid_model"
    assert leftovers(registry) == []  # every refused upload's temp file is gone
    assert registry.db.list_models() == []


def test_registry_registers_once_and_refuses_other_bytes_under_a_version(registry, tmp_path):
    model = sample_models.mlp(tmp_path / "mlp.onnx").read_bytes()
    row, created = upload(registry, "m", model, version="v1")
    assert created and row.version == "v1" and row.info["inputs"][0]["name"] == "x"
    assert registry.artifacts.has(row.sha256)
    again, created = upload(registry, "m", model)  # the same bytes without a version: the version already there
    assert not created and again.version == "v1"
    other = sample_models.mlp(tmp_path / "mlp2.onnx", seed=1).read_bytes()
    with pytest.raises(Conflict) as clash:
        upload(registry, "m", other, version="v1")
    assert clash.value.code == "version_exists" and http_status(clash.value) == 409
    newer, created = upload(registry, "m", other)
    assert created and newer.version == "1"
    assert registry.find("m", "v1") == row
    assert code_of(lambda: registry.find("m", "9")) == "unknown_model"
    assert message_of(lambda: registry.find("x")).endswith("registered models: m")  # names, not a Python list
    assert leftovers(registry) == []


def test_receive_bytes_stops_past_the_limit():
    assert asyncio.run(receive_bytes(chunks(b"abc" * 10), 30, "too big")) == b"abc" * 10
    with pytest.raises(TooLarge, match="too big"):
        asyncio.run(receive_bytes(chunks(b"abc" * 11, 3), 30, "too big"))


def test_calibration_is_checked_stored_and_replaced(tmp_path):
    store = CalibrationStore(tmp_path / "calibration")
    assert code_of(lambda: store.save("m", "1", b"not numpy")) == "bad_calibration"
    assert store.find("m", "1") is None
    npy = io.BytesIO()
    np.save(npy, np.zeros((2, 3), np.float32))
    assert store.save("m", "1", npy.getvalue()) == {"": [2, 3]}
    npz = io.BytesIO()
    np.savez(npz, image=np.zeros((4, 3, 8, 8), np.float32))
    assert store.save("m", "1", npz.getvalue()) == {"image": [4, 3, 8, 8]}
    assert store.find("m", "1") == tmp_path / "calibration" / "m" / "1" / "calibration.npz"  # the .npy is gone


def add_model(db: Database, version: str = "1", sha: str = "a") -> ModelRow:
    return db.add_model(ModelRow("m", version, sha * 64, 10, "onnx", "m.onnx", {}, time.time()))


def add_variant(db: Database, name: str, built: bool, passed: bool) -> None:
    report = {"agreement": {"top1": 1.0}} if passed else {"failed_metrics": ["probs: top-1 0.5 < 0.99"]}
    if not built:
        report = {"error": "converter crashed"}
    db.put_variant(VariantRow("m", "1", name, "b" * 64 if built else None, 5, "onnx", report, passed, time.time()))


def test_choose_variants_ships_passing_ones_and_checks_asked_for_ones(db):
    model = add_model(db)
    add_variant(db, "fp16", built=True, passed=True)
    add_variant(db, "int8", built=True, passed=False)
    add_variant(db, "tflite", built=False, passed=False)
    assert choose_variants(db, model, None, False) == ["fp16"]
    assert choose_variants(db, model, ["fp16", "fp16"], False) == ["fp16"]
    assert code_of(lambda: choose_variants(db, model, ["int4"], False)) == "unknown_variant"
    assert "no variant(s) int4; registered: fp16, int8, tflite" in message_of(
        lambda: choose_variants(db, model, ["int4"], False)
    )
    assert code_of(lambda: choose_variants(db, model, ["tflite"], True)) == "variant_not_built"
    assert code_of(lambda: choose_variants(db, model, ["int8"], False)) == "variant_below_threshold"
    assert choose_variants(db, model, ["int8", "fp16"], True) == ["int8", "fp16"]


def test_auto_variants_follow_the_installed_runtimes_and_their_formats():
    formats = {"int8-static": "onnx", "fp16": "onnx", "openvino": "openvino", "openvino-int8": "onnx"}
    runtimes = {"onnxruntime": "1.20", "openvino": "2024.1", "litert": None, "mystery": "1"}
    # openvino-int8 is listed for OpenVINO but (here) an ONNX file: OpenVINO does not get it; LiteRT is not installed
    assert variants_for_runtimes(runtimes, formats) == ["int8-static", "fp16", "openvino"]
    assert variants_for_runtimes({}, formats) == []


class Published(list):
    def publish_desired(self, device_id: str) -> None:
        self.append(device_id)


def test_deploy_and_rollback_plan_without_http(db):
    published = Published()
    deployments = Deployments(db, published)
    db.record_presence("cam-01", True, {}, "0.1", None)
    old, new = add_model(db, "1", "a"), add_model(db, "2", "c")
    assert code_of(lambda: deployments.deploy("m", None, ["cam-01", "ghost"])) == "unknown_device"
    said = message_of(lambda: deployments.deploy("m", None, ["cam-01", "ghost"]))
    assert said.startswith("unknown device(s) ghost;") and said.endswith("Known devices: cam-01"), said
    assert code_of(lambda: deployments.deploy("nope", None, ["cam-01"])) == "unknown_model"
    assert code_of(lambda: deployments.rollback("cam-01")) == "which_model"  # nothing deployed yet
    result = deployments.deploy("m", None, ["cam-01"], backend="openvino")
    (deployed,) = result["deployments"]
    assert result["version"] == "2" and deployed["device"] == "cam-01" and deployed["generation"] == 1
    assert deployed["attempt"] == db.deployment_attempts("cam-01")["m"] > 0  # what --wait waits for
    assert published == ["cam-01"]

    assert code_of(lambda: deployments.plan_rollback("cam-01")) == "no_previous"
    db.record_state("cam-01", [{"name": "m", "version": "2", "previous": {"version": "1"}}])
    plan = deployments.plan_rollback("cam-01")
    assert (plan.model, plan.target, plan.backend, plan.current) == ("m", old, "openvino", new)
    assert code_of(lambda: deployments.plan_rollback("cam-01", to="9")) == "unknown_version"
    assert code_of(lambda: deployments.plan_rollback("cam-01", model="other")) == "unknown_model"
    assert published == ["cam-01"]  # planning publishes nothing
    done = deployments.rollback("cam-01")
    assert (done["version"], done["from"], done["generation"]) == ("1", "2", 2)
    assert published == ["cam-01", "cam-01"]


def test_every_code_the_controller_raises_has_a_status():
    raised = set()
    for path in CONTROLLER.rglob("*.py"):
        text = path.read_text()  # EdgeError(message, code="...") and `code = "..."` in EdgeError subclasses
        raised |= set(re.findall(r',\s*code="([a-z_]+)"', text))
        raised |= set(re.findall(r'^\s+code = "([a-z_]+)"', text, re.M))
    assert raised - {"device_error"} <= set(STATUS), raised - set(STATUS)
    assert http_status(EdgeError("x", code="unknown_device")) == 404
    assert http_status(EdgeError("x", code="never_heard_of")) == 500
    # a device's own codes: the caller's fault keeps its status, anything else is the gateway's
    assert http_status(DeviceError("x", code="bad_input")) == 400
    assert http_status(DeviceError("x", code="too_large")) == 502
    assert http_status(DeviceError("x")) == 502
