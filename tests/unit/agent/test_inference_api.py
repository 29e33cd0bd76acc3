"""The v2 inference API end to end: real ONNX Runtime sessions on real models, raw HTTP and the stock tritonclient."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from agent import __version__
from agent.api.http_server import Limits
from agent.api.routes import InferenceServer
from agent.serving.table import LoadedModel, ModelTable
from edgectl.sample_models import mlp, scaled_sum
from targets import registry

ROOT = Path(__file__).resolve().parents[3]


def _load(name: str, path: Path, version: str = "1") -> LoadedModel:
    backend = registry.create("onnxruntime")
    backend.load(path, "onnx")
    return LoadedModel(name=name, version=version, sha256="0" * 64, backend=backend)


def _failing_model(path: Path) -> Path:
    """x[N, 4] reshaped to a fixed [2, 2]: loads fine, fails in ONNX Runtime for every batch but N=1."""
    import onnx
    from onnx import TensorProto, helper

    target = helper.make_tensor("target", TensorProto.INT64, [2], [2, 2])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "target"], ["y"])],
        "failing",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
        [target],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> ModelTable:
    folder = tmp_path_factory.mktemp("models")
    table = ModelTable()
    table.swap(_load("mlp", mlp(folder / "mlp.onnx")))
    table.swap(_load("scaled_sum", scaled_sum(folder / "scaled_sum.onnx"), version="3"))
    table.swap(_load("failing", _failing_model(folder / "failing.onnx")))
    return table


@pytest.fixture(scope="module")
def server(table: ModelTable):
    with InferenceServer(table, port=0, limits=Limits(max_body_bytes=1 << 20)) as srv:
        yield srv


@pytest.fixture()
def client(server: InferenceServer):
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def _mlp_request(x: np.ndarray, **extra) -> dict:
    return {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}], **extra}


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()["error"]


# -- import cost ---------------------------------------------------------------------------------------------------


def test_import_does_not_load_numpy():
    code = "import sys, agent.api.routes; assert 'numpy' not in sys.modules, 'numpy imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


# -- health and metadata -------------------------------------------------------------------------------------------


def test_health_live_and_ready(client: httpx.Client):
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200


def test_not_ready_with_an_empty_table():
    with InferenceServer(ModelTable(), port=0) as srv:
        assert httpx.get(f"{srv.url}/v2/health/live").status_code == 200
        response = httpx.get(f"{srv.url}/v2/health/ready")
        assert response.status_code == 503
        assert "not ready" in response.json()["error"]
        assert "no models are being served" in _error(httpx.get(f"{srv.url}/v2/models/mlp"), 404)


def test_ready_callable_decides(table: ModelTable):
    state = {"ready": False}
    with InferenceServer(table, port=0, ready=lambda: state["ready"]) as srv:
        assert httpx.get(f"{srv.url}/v2/health/ready").status_code == 503
        state["ready"] = True
        assert httpx.get(f"{srv.url}/v2/health/ready").status_code == 200


def test_server_metadata(client: httpx.Client):
    response = client.get("/v2")
    assert response.status_code == 200
    assert response.json() == {"name": "edge-agent", "version": __version__, "extensions": ["binary_tensor_data"]}


def test_model_metadata(client: httpx.Client):
    meta = client.get("/v2/models/scaled_sum").json()
    assert meta == {
        "name": "scaled_sum",
        "versions": ["3"],
        "platform": "onnxruntime:cpu",
        "parameters": {"precision": "full"},
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "k", "datatype": "INT64", "shape": []},
        ],
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "total", "datatype": "FP32", "shape": [-1]},
        ],
    }
    assert client.get("/v2/models/scaled_sum/versions/3").json() == meta
    assert client.get("/v2/models/mlp").json()["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]


def test_model_ready(client: httpx.Client):
    assert client.get("/v2/models/mlp/ready").status_code == 200
    assert client.get("/v2/models/scaled_sum/versions/3/ready").status_code == 200
    assert "unknown model 'nope'" in _error(client.get("/v2/models/nope/ready"), 404)


def test_head_is_get_without_a_body(server: InferenceServer):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("HEAD", "/v2")
    response = conn.getresponse()
    assert response.status == 200
    assert int(response.getheader("Content-Length")) > 0
    assert response.read() == b""
    conn.request("GET", "/v2")  # the connection is still in step
    assert json.loads(conn.getresponse().read())["name"] == "edge-agent"
    conn.close()


# -- JSON inference ------------------------------------------------------------------------------------------------


def test_json_infer_matches_the_backend(client: httpx.Client, table: ModelTable):
    x = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    response = client.post("/v2/models/mlp/infer", json=_mlp_request(x, id="req-7"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["model_name"] == "mlp" and body["model_version"] == "1" and body["id"] == "req-7"
    [out] = body["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("probs", "FP32", [3, 4])
    expected = table.get("mlp").backend.infer({"x": x})["probs"]
    np.testing.assert_array_equal(np.asarray(out["data"], dtype=np.float32).reshape(3, 4), expected)


def test_json_infer_accepts_nested_data(client: httpx.Client, table: ModelTable):
    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)
    request = {"inputs": [{"name": "x", "shape": [2, 16], "datatype": "FP32", "data": x.tolist()}]}
    out = client.post("/v2/models/mlp/versions/1/infer", json=request).json()["outputs"][0]
    expected = table.get("mlp").backend.infer({"x": x})["probs"]
    np.testing.assert_array_equal(np.asarray(out["data"], dtype=np.float32).reshape(2, 4), expected)


def test_two_inputs_with_an_int64_scalar(client: httpx.Client):
    request = {
        "inputs": [
            {"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6, 7, 8]},
            {"name": "k", "shape": [], "datatype": "INT64", "data": [3]},
        ]
    }
    outputs = {o["name"]: o for o in client.post("/v2/models/scaled_sum/infer", json=request).json()["outputs"]}
    assert outputs["y"] == {"name": "y", "datatype": "FP32", "shape": [2, 4], "data": [3, 6, 9, 12, 15, 18, 21, 24]}
    assert outputs["total"] == {"name": "total", "datatype": "FP32", "shape": [2], "data": [30, 78]}


def test_only_requested_outputs_are_returned(client: httpx.Client):
    request = {
        "inputs": [
            {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]},
            {"name": "k", "shape": [], "datatype": "INT64", "data": 2},
        ],
        "outputs": [{"name": "total"}],
    }
    outputs = client.post("/v2/models/scaled_sum/infer", json=request).json()["outputs"]
    assert outputs == [{"name": "total", "datatype": "FP32", "shape": [1], "data": [8.0]}]


# -- binary tensor extension (raw) ---------------------------------------------------------------------------------


def _split_binary(response: httpx.Response) -> tuple[dict, bytes]:
    header_length = int(response.headers["Inference-Header-Content-Length"])
    return json.loads(response.content[:header_length]), response.content[header_length:]


def test_binary_inputs_and_outputs_raw(client: httpx.Client, table: ModelTable):
    x = np.random.default_rng(2).standard_normal((3, 16)).astype(np.float32)
    header = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [3, 16], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
            ],
            "outputs": [{"name": "probs", "parameters": {"binary_data": True}}],
        }
    ).encode()
    header += b" " * (1 - len(header) % 2)  # an odd offset for the binary part: must still decode
    response = client.post(
        "/v2/models/mlp/infer",
        content=header + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    meta, blob = _split_binary(response)
    [out] = meta["outputs"]
    assert out == {"name": "probs", "datatype": "FP32", "shape": [3, 4], "parameters": {"binary_data_size": 48}}
    expected = table.get("mlp").backend.infer({"x": x})["probs"]
    np.testing.assert_array_equal(np.frombuffer(blob, dtype=np.float32).reshape(3, 4), expected)


def test_binary_data_output_request_parameter(client: httpx.Client):
    request = {
        "inputs": [
            {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
            {"name": "k", "shape": [], "datatype": "INT64", "data": [2]},
        ],
        "parameters": {"binary_data_output": True},
    }
    meta, blob = _split_binary(client.post("/v2/models/scaled_sum/infer", json=request))
    sizes = [o["parameters"]["binary_data_size"] for o in meta["outputs"]]
    assert [o["name"] for o in meta["outputs"]] == ["y", "total"] and sizes == [16, 4]
    assert np.frombuffer(blob, dtype=np.float32).tolist() == [2, 4, 6, 8, 20]


def test_binary_size_that_does_not_match_the_shape(client: httpx.Client):
    header = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": 60}}]}
    ).encode()
    response = client.post(
        "/v2/models/mlp/infer",
        content=header + bytes(60),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert "expected 64" in _error(response, 400)


# -- the stock tritonclient ----------------------------------------------------------------------------------------


@pytest.fixture()
def triton(server: InferenceServer):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    yield client
    client.close()


def test_tritonclient_health_and_metadata(triton):
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready("mlp")
    assert triton.is_model_ready("scaled_sum", model_version="3")
    assert not triton.is_model_ready("nope")
    meta = triton.get_model_metadata("mlp")
    assert meta["name"] == "mlp" and meta["versions"] == ["1"]
    assert meta["outputs"] == [{"name": "probs", "datatype": "FP32", "shape": [-1, 4]}]
    assert triton.get_server_metadata()["extensions"] == ["binary_tensor_data"]


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False])
def test_tritonclient_infer(triton, table: ModelTable, binary_in: bool, binary_out: bool):
    import tritonclient.http as httpclient

    x = np.random.default_rng(3).standard_normal((3, 16)).astype(np.float32)
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary_in)
    outputs = [httpclient.InferRequestedOutput("probs", binary_data=binary_out)]
    result = triton.infer("mlp", [tensor], outputs=outputs, request_id="r1")
    np.testing.assert_array_equal(result.as_numpy("probs"), table.get("mlp").backend.infer({"x": x})["probs"])
    response = result.get_response()
    assert response["id"] == "r1"
    assert ("parameters" in response["outputs"][0]) is binary_out


@pytest.mark.parametrize("binary_in", [True, False])
def test_tritonclient_two_inputs_all_outputs(triton, binary_in: bool):
    import tritonclient.http as httpclient

    x = httpclient.InferInput("x", [2, 4], "FP32")
    x.set_data_from_numpy(np.arange(8, dtype=np.float32).reshape(2, 4), binary_data=binary_in)
    k = httpclient.InferInput("k", [], "INT64")
    k.set_data_from_numpy(np.array(3, dtype=np.int64), binary_data=binary_in)
    result = triton.infer("scaled_sum", [x, k], model_version="3")  # no outputs: all of them, binary
    np.testing.assert_array_equal(result.as_numpy("y"), np.arange(8, dtype=np.float32).reshape(2, 4) * 3)
    np.testing.assert_array_equal(result.as_numpy("total"), np.array([18, 66], dtype=np.float32))


def test_tritonclient_sees_errors(triton):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    tensor = httpclient.InferInput("x", [1, 15], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 15), dtype=np.float32))
    with pytest.raises(InferenceServerException, match=r"expected \[-1, 16\]"):
        triton.infer("mlp", [tensor])
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        triton.infer("nope", [tensor])
    with pytest.raises(InferenceServerException, match="serving version '1'"):
        triton.get_model_metadata("mlp", model_version="2")


# -- errors --------------------------------------------------------------------------------------------------------


def test_unknown_model(client: httpx.Client):
    message = _error(client.post("/v2/models/nope/infer", json=_mlp_request(np.zeros((1, 16)))), 404)
    assert "unknown model 'nope'" in message and "failing, mlp, scaled_sum" in message
    assert "unknown model" in _error(client.get("/v2/models/nope"), 404)


def test_unknown_version(client: httpx.Client):
    request = _mlp_request(np.zeros((1, 16)))
    assert "serving version '1'" in _error(client.post("/v2/models/mlp/versions/2/infer", json=request), 404)
    assert "serving version '3'" in _error(client.get("/v2/models/scaled_sum/versions/1"), 404)
    assert "serving version '3'" in _error(client.get("/v2/models/scaled_sum/versions/1/ready"), 404)


def test_wrong_shape_says_what_was_expected(client: httpx.Client):
    message = _error(client.post("/v2/models/mlp/infer", json=_mlp_request(np.zeros((2, 8)))), 400)
    assert "shape [2, 8]" in message and "expected [-1, 16]" in message


def test_wrong_datatype(client: httpx.Client):
    request = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))}]}
    message = _error(client.post("/v2/models/mlp/infer", json=request), 400)
    assert "datatype INT32, expected FP32" in message


def test_missing_and_unknown_inputs(client: httpx.Client):
    request = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    assert "missing input(s) ['k']" in _error(client.post("/v2/models/scaled_sum/infer", json=request), 400)
    request = {"inputs": [{"name": "z", "shape": [1, 16], "datatype": "FP32", "data": [0] * 16}]}
    assert "unknown input(s) ['z']" in _error(client.post("/v2/models/mlp/infer", json=request), 400)
    assert "non-empty list" in _error(client.post("/v2/models/mlp/infer", json={"inputs": []}), 400)


def test_data_length_not_matching_shape(client: httpx.Client):
    request = {"inputs": [{"name": "x", "shape": [2, 16], "datatype": "FP32", "data": [0.5] * 20}]}
    message = _error(client.post("/v2/models/mlp/infer", json=request), 400)
    assert "20 values" in message and "expected 32" in message


def test_data_that_is_not_numbers(client: httpx.Client):
    request = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [{"a": 1}, None]}]}
    assert "not a valid FP32 tensor" in _error(client.post("/v2/models/mlp/infer", json=request), 400)
    request = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [[1, 2], [3]]}]}
    assert "not a valid FP32 tensor" in _error(client.post("/v2/models/mlp/infer", json=request), 400)
    request = {"inputs": [{"name": "x", "shape": [1, -16], "datatype": "FP32", "data": [0] * 16}]}
    assert "non-negative integers" in _error(client.post("/v2/models/mlp/infer", json=request), 400)


def test_bytes_and_unknown_datatypes(client: httpx.Client):
    request = {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["hello"]}]}
    assert "BYTES is not supported" in _error(client.post("/v2/models/mlp/infer", json=request), 400)
    request = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP8", "data": [1]}]}
    assert "unknown datatype 'FP8'" in _error(client.post("/v2/models/mlp/infer", json=request), 400)


def test_unknown_requested_output(client: httpx.Client):
    request = _mlp_request(np.zeros((1, 16)), outputs=[{"name": "logits"}])
    assert "unknown output 'logits'" in _error(client.post("/v2/models/mlp/infer", json=request), 400)


def test_malformed_json(client: httpx.Client):
    assert "malformed JSON" in _error(client.post("/v2/models/mlp/infer", content=b'{"inputs": ['), 400)
    assert "JSON object" in _error(client.post("/v2/models/mlp/infer", content=b"[1, 2]"), 400)


def test_backend_error_is_500_with_the_reason(client: httpx.Client):
    request = {"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": [0] * 12}]}
    message = _error(client.post("/v2/models/failing/infer", json=request), 500)
    assert message.startswith("ONNX Runtime inference failed")


def test_oversized_body_is_413_and_the_connection_survives(table: ModelTable):
    with InferenceServer(table, port=0, limits=Limits(max_body_bytes=1000)) as srv, httpx.Client(base_url=srv.url) as c:
        big = _mlp_request(np.zeros((100, 16)))
        assert "over the limit of 1000 bytes" in _error(c.post("/v2/models/mlp/infer", json=big), 413)
        assert c.post("/v2/models/mlp/infer", json=_mlp_request(np.zeros((1, 16)))).status_code == 200
        gzipped = gzip.compress(json.dumps(big).encode())
        assert len(gzipped) < 1000
        response = c.post("/v2/models/mlp/infer", content=gzipped, headers={"Content-Encoding": "gzip"})
        assert "decompressed request body is over the limit" in _error(response, 413)


def test_gzip_and_chunked_bodies(client: httpx.Client):
    body = json.dumps(_mlp_request(np.zeros((2, 16)))).encode()
    response = client.post("/v2/models/mlp/infer", content=gzip.compress(body), headers={"Content-Encoding": "gzip"})
    assert response.json()["outputs"][0]["shape"] == [2, 4]
    response = client.post("/v2/models/mlp/infer", content=iter([body[:10], body[10:]]))  # no length: chunked
    assert response.json()["outputs"][0]["shape"] == [2, 4]
    response = client.post("/v2/models/mlp/infer", content=body, headers={"Content-Encoding": "br"})
    assert "not supported" in _error(response, 415)


def test_unknown_path_and_wrong_method(client: httpx.Client):
    assert "no such endpoint" in _error(client.get("/v1/models"), 404)
    assert "no such endpoint" in _error(client.get("/v2/models/mlp/config"), 404)
    response = client.get("/v2/models/mlp/infer")
    assert "use POST" in _error(response, 405) and response.headers["allow"] == "POST"
    assert _error(client.post("/v2/health/live", content=b"x"), 405)
    assert _error(client.delete("/v2/models/mlp"), 405)
    assert client.get("/v2").status_code == 200  # the same connection is still usable


def test_garbage_does_not_break_the_server(server: InferenceServer, client: httpx.Client):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"\x00\xffnot http at all\r\n\r\n")
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400") and b'"error"' in reply
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:  # a client that hangs up
        sock.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{")
    assert client.get("/v2/health/live").status_code == 200


# -- the server itself ---------------------------------------------------------------------------------------------


def test_keep_alive_and_http_10(server: InferenceServer):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    body = json.dumps(_mlp_request(np.ones((1, 16)))).encode()
    for _ in range(20):
        conn.request("POST", "/v2/models/mlp/infer", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Connection") is None
        response.read()
    conn.close()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := sock.recv(4096):  # HTTP/1.0 without keep-alive: the server closes
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200") and b"Connection: close" in reply


def test_concurrent_requests(server: InferenceServer, table: ModelTable):
    x = np.random.default_rng(4).standard_normal((1, 16)).astype(np.float32)
    expected = table.get("mlp").backend.infer({"x": x})["probs"]
    failures: list[str] = []

    def worker() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            for _ in range(25):
                out = c.post("/v2/models/mlp/infer", json=_mlp_request(x)).json()["outputs"][0]
                if not np.array_equal(np.asarray(out["data"], dtype=np.float32).reshape(1, 4), expected):
                    failures.append(str(out))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_port_picking_and_port_in_use(table: ModelTable):
    with InferenceServer(table, port=0) as first:
        assert first.port > 0 and first.url == f"http://127.0.0.1:{first.port}"
        second = InferenceServer(table, port=first.port)
        with pytest.raises(OSError, match=f"inference API port 127.0.0.1:{first.port} is already in use"):
            second.start()


def test_stop_ends_idle_keep_alive_connections(table: ModelTable):
    srv = InferenceServer(table, port=0)
    srv.start()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        srv.stop()
        assert sock.recv(4096) == b""  # the server side closed the idle connection
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{srv.port}/v2/health/live")
    srv.stop()  # a second stop is harmless


def _raw(port: int, request: bytes) -> bytes:
    """Send raw bytes, return everything the server answers until it closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        sock.settimeout(0.5)
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except TimeoutError:
            pass
    return reply


def test_malformed_headers(server: InferenceServer):
    reply = _raw(server.port, b"GET /v2 HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400") and b"Bad header line" in reply
    reply = _raw(server.port, b"GET /v2 HTTP/1.1\r\n" + b"X-A: 1\r\n" * 101 + b"\r\n")
    assert reply.startswith(b"HTTP/1.1 431")
    reply = _raw(server.port, b"GET /v2 HTTP/2.0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 505")
    body = b'{"inputs": []}'
    twice = b"POST /v2/models/mlp/infer HTTP/1.1\r\nContent-Length: 14\r\nContent-Length: 15\r\n\r\n" + body
    assert b"invalid Content-Length" in _raw(server.port, twice)


def test_expect_100_continue(server: InferenceServer):
    body = json.dumps(_mlp_request(np.zeros((1, 16)))).encode()
    head = b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head % len(body))
        assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")


def test_requests_are_not_logged_to_stderr(client: httpx.Client, capfd: pytest.CaptureFixture[str]):
    capfd.readouterr()
    client.get("/v2/health/live")
    client.get("/nope")
    assert capfd.readouterr().err == ""
