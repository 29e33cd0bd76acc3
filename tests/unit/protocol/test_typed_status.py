"""The typed parts of a device's report (selection, failover, hardware) accept what agents send and dump it back
unchanged; every error the operator may see carries a stable code."""

from __future__ import annotations

import json

import pytest

from protocol import (
    DeviceState,
    EdgeError,
    Failover,
    Hardware,
    ModelStatus,
    Presence,
    ProtocolError,
    Selection,
    decode,
)
from protocol.signing import SignatureError

SELECTION = {
    "backend": "onnxruntime:cpu",
    "reason": "fastest that agrees",
    "cached": False,
    "precision": "full",
    "reference": "onnxruntime",
    "inputs": "synthetic inputs (batch 1)",
    "timed": True,
    "candidates": [
        {"name": "onnxruntime:cpu", "p50_ms": 0.1, "p95_ms": 0.2, "load_ms": 3.0, "runs": 60, "agreed": True,
         "error": None, "precision": "full", "deviation": 0.0},
        {"name": "openvino:cpu", "error": "failed to load"},
    ],
    "variants": [{"variant": "original", "backend": "onnxruntime:cpu", "p50_ms": 0.1},
                 {"variant": "int8", "error": "does not load: no"}],
    "variants_trial_s": 1.25,
    "from_a_newer_agent": {"ignored": True},
}  # fmt: skip
FAILOVER = {"active": "onnxruntime:cuda", "preferred": "onnxruntime:tensorrt", "failed_over": True, "failovers": 1,
            "reason": "CUDA error 999", "since": 12.5}  # fmt: skip


def status(**fields) -> ModelStatus:
    return ModelStatus(name="m", version="1", sha256="a" * 64, state="serving", **fields)


def test_selection_and_failover_are_typed_and_dump_what_was_sent():
    entry = status(selection=SELECTION, failover=FAILOVER)
    assert isinstance(entry.selection, Selection) and isinstance(entry.failover, Failover)
    assert entry.selection.candidates[1].error == "failed to load" and entry.selection.variants[1].variant == "int8"
    assert entry.failover.failed_over and entry.failover.since == 12.5
    sent = {k: v for k, v in SELECTION.items() if k != "from_a_newer_agent"}
    dumped = json.loads(entry.model_dump_json())
    assert dumped["selection"] == sent and dumped["failover"] == FAILOVER
    assert entry.model_dump()["selection"] == sent  # what the controller stores


def test_an_older_agents_report_validates_and_gains_no_fields():
    entry = decode(DeviceState, DeviceState(device_id="d", models=[status(selection={"backend": "x"})]).encode())
    assert entry.models[0].model_dump()["selection"] == {"backend": "x"}
    assert status().model_dump()["selection"] is None


def test_presence_keeps_the_probe_as_sent_with_a_typed_view():
    from targets.probe import probe

    found = probe()
    presence = decode(Presence, Presence(device_id="d", online=True, hardware=found).encode())
    assert presence.hardware == json.loads(json.dumps(found))  # stored as it came
    info = presence.hardware_info
    assert isinstance(info, Hardware) and info.cores == found["cores"] and info.runtimes == found["runtimes"]
    assert Presence(device_id="d", online=True, hardware={"arch": "aarch64", "x": 1}).hardware_info.arch == "aarch64"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ProtocolError("bad"), "invalid_message"),
        (SignatureError("bad"), "signature_invalid"),
    ],
)
def test_protocol_errors_carry_stable_codes(error, code):
    assert isinstance(error, EdgeError) and isinstance(error, ValueError) and error.code == code


def test_operator_facing_errors_derive_from_edge_error():
    pytest.importorskip("httpx")
    from converters import CalibrationError, ConversionError
    from edgectl.client import ApiError

    assert ApiError("x").code == "api_error" and ApiError("x", 409, "conflict").code == "conflict"
    assert ApiError("x", 404).status == 404 and isinstance(ApiError("x"), RuntimeError)
    assert ConversionError("x").code == "conversion_failed" and CalibrationError("x").code == "bad_calibration"
    assert all(issubclass(e, EdgeError) for e in (ApiError, ConversionError, CalibrationError))
