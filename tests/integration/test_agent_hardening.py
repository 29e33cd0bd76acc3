"""The agent's own side of hardening, each attack made by a real client: the v2 API bounded (connections, read
timeout, JSON body cap, token), never invalid JSON for NaN, no ONNX external data, no broker password in logs."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from test_rollback import always_nan

from agent.api.http_server import Limits
from agent.api.routes import InferenceServer
from agent.config import AgentConfig
from agent.serving.table import LoadedModel, ModelTable
from edgectl.sample_models import mlp
from targets import registry
from targets.onnx_external import ExternalData, refuse_external_data


def loaded(name: str, path: Path) -> LoadedModel:
    backend = registry.create("onnxruntime")
    backend.load(path, "onnx")
    return LoadedModel(name=name, version="1", sha256="0" * 64, backend=backend)


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> ModelTable:
    folder = tmp_path_factory.mktemp("hardening-models")
    table = ModelTable()
    table.swap(loaded("mlp", mlp(folder / "mlp.onnx", seed=3)))
    table.swap(loaded("nan", always_nan(folder / "nan.onnx")))
    return table


def half_request(port: int) -> socket.socket:
    """A connection that sends headers promising a body, then nothing more (a slowloris client)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    return sock


def test_connections_are_capped_and_half_sent_requests_time_out(table):
    limits = Limits(max_connections=4, read_timeout_s=1.0)
    with InferenceServer(table, port=0, limits=limits) as srv:
        held = [half_request(srv.port) for _ in range(4)]
        time.sleep(0.2)
        busy = httpx.get(f"{srv.url}/v2/health/live", timeout=5)
        assert busy.status_code == 503 and "4 connections" in busy.json()["error"]  # no fifth thread
        started = time.monotonic()
        for sock in held:  # each closed by the server after its read timeout
            sock.settimeout(5)
            assert sock.recv(4096) == b""
        assert time.monotonic() - started < 3
        time.sleep(0.2)
        assert httpx.get(f"{srv.url}/v2/health/live", timeout=5).status_code == 200  # slots given back
        for sock in held:
            sock.close()


def test_json_bodies_have_a_lower_cap_than_binary_ones(table):
    limits = Limits(max_body_bytes=16 << 20, max_json_bytes=1 << 20)
    with InferenceServer(table, port=0, limits=limits) as srv:
        big_json = b'{"inputs": [' + b" " * (2 << 20) + b"]}"
        answer = httpx.post(f"{srv.url}/v2/models/mlp/infer", content=big_json, timeout=10)
        assert answer.status_code == 413 and "over the limit of 1048576 bytes" in answer.json()["error"]
        header = json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                                         "parameters": {"binary_data_size": 64}}]}).encode()  # fmt: skip
        blob = np.ones((1, 16), np.float32).tobytes() + b"\0" * (2 << 20)  # 2 MiB of binary: over the JSON cap only
        answer = httpx.post(
            f"{srv.url}/v2/models/mlp/infer", content=header + blob,
            headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
            timeout=10,
        )  # fmt: skip
        assert answer.status_code != 413


def test_a_token_guards_every_route_but_health(table):
    with InferenceServer(table, port=0, token="t0ken") as srv:
        assert httpx.get(f"{srv.url}/v2/health/live").status_code == 200
        denied = httpx.get(f"{srv.url}/v2/models/mlp")
        assert denied.status_code == 401 and "Authorization: Bearer" in denied.json()["error"]
        assert httpx.get(f"{srv.url}/v2/models/mlp", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{srv.url}/v2/models/mlp", headers={"Authorization": "Bearer t0ken"}).status_code == 200


def test_nan_outputs_are_valid_json(table):
    with InferenceServer(table, port=0) as srv:
        body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}]}
        answer = httpx.post(f"{srv.url}/v2/models/nan/infer", json=body)

    def no_bare_constants(name: str) -> float:
        raise AssertionError(f"bare {name} in a JSON response")

    parsed = json.loads(answer.text, parse_constant=no_bare_constants)
    assert parsed["outputs"][0]["data"] == ["NaN"] * 4
    assert np.isnan(np.asarray(parsed["outputs"][0]["data"], np.float32)).all()  # what a client gets back


def test_models_with_external_data_are_refused(tmp_path):
    model = onnx.load(mlp(tmp_path / "m.onnx", seed=4))
    onnx.save_model(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="w.bin",
                    size_threshold=0)  # fmt: skip
    with pytest.raises(ExternalData, match="in another file") as refused:
        refuse_external_data(tmp_path / "ext.onnx")
    assert refused.value.code == "external_data"
    refuse_external_data(tmp_path / "m.onnx")  # self-contained: fine


def test_the_broker_password_never_shows(tmp_path):
    (tmp_path / "pw").write_text("s3cret-pw\n")
    cfg = AgentConfig(broker="mqtt://dev1@broker.local:1883", password_file=tmp_path / "pw", data_dir=tmp_path)
    address = cfg.broker_address()
    assert address.password == "s3cret-pw" and address.username == "dev1"
    assert "s3cret" not in repr(address) and "s3cret" not in str(address)
