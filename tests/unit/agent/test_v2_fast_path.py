"""The v2 API at wire speed (issue 29): binary requests whose header was seen before skip the JSON parse and answer
exactly as the full decode would, large outputs go out as views, and a JSON request's size limit follows the model's
input sizes, with a 413 that names the setting that raises it."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from agent.api import v2_codec as v2
from agent.api.http_server import Limits
from agent.api.routes import InferenceServer
from agent.serving.table import LoadedModel, ModelTable
from edgectl.sample_models import mlp, scaled_sum
from targets import registry

IMAGE = (1, 3, 800, 608)  # the layout detector of the issue: 28 MB of JSON


def _load(name: str, path: Path) -> LoadedModel:
    backend = registry.create("onnxruntime")
    backend.load(path, "onnx")
    return LoadedModel(name=name, version="1", sha256="0" * 64, backend=backend)


def _image_model(path: Path) -> Path:
    """x[1, 3, 800, 608] -> the per-channel mean [1, 3] (a fixed-size image input, a small output)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0)],
        "image",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(IMAGE))],
        [helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def table(folder: Path) -> ModelTable:
    table = ModelTable()
    table.swap(_load("mlp", mlp(folder / "mlp.onnx")))
    table.swap(_load("scaled_sum", scaled_sum(folder / "scaled_sum.onnx")))
    table.swap(_load("image", _image_model(folder / "image.onnx")))
    return table


def _binary(x: np.ndarray, **extra) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                        "parameters": {"binary_data_size": x.nbytes}}],
            "parameters": {"binary_data_output": True},
            **extra,
        }
    ).encode()  # fmt: skip
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    return header + x.tobytes(), headers


def _outputs(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    hlen = int(response.headers["Inference-Header-Content-Length"])
    head = json.loads(response.content[:hlen])
    out, offset = {}, hlen
    for entry in head["outputs"]:
        size = entry["parameters"]["binary_data_size"]
        out[entry["name"]] = np.frombuffer(response.content[offset : offset + size], np.float32).reshape(entry["shape"])
        offset += size
    return out


def test_a_repeated_binary_header_is_planned_once_and_answers_like_onnxruntime(table: ModelTable, folder: Path):
    session = ort.InferenceSession(str(folder / "mlp.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    with InferenceServer(table, port=0) as srv, httpx.Client(base_url=srv.url, timeout=10) as client:
        for _ in range(3):  # same header, new values each time: the plan is reused, the values are never stale
            x = rng.standard_normal((2, 16)).astype(np.float32)
            body, headers = _binary(x)
            got = _outputs(client.post("/v2/models/mlp/infer", content=body, headers=headers))
            np.testing.assert_allclose(got["probs"], session.run(None, {"x": x})[0], rtol=1e-6)
        assert len(srv.routes._plans) == 1
        # the same header with a short binary section: the full decode names what is wrong
        body, headers = _binary(np.ones((2, 16), np.float32))
        short = client.post("/v2/models/mlp/infer", content=body[:-4], headers=headers)
        assert short.status_code == 400 and "binary_data_size" in short.json()["error"]
        # a request with an id is answered with it (not served from a cached header)
        body, headers = _binary(np.ones((2, 16), np.float32), id="req-7")
        answer = client.post("/v2/models/mlp/infer", content=body, headers=headers)
        hlen = int(answer.headers["Inference-Header-Content-Length"])
        assert json.loads(answer.content[:hlen])["id"] == "req-7"


def test_a_plan_is_checked_against_the_model_it_serves(table: ModelTable):
    """A header planned for one model is not trusted for another with other outputs: its outputs are rechecked."""
    header = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}],
              "outputs": [{"name": "y"}]}  # fmt: skip
    head = json.dumps(header).encode()
    body = head + np.ones((1, 4), np.float32).tobytes()
    plans: dict[bytes, v2.RequestPlan] = {}
    scaled = table.current("scaled_sum")
    assert scaled is not None
    _, arrays, wanted, _ = v2.decode_binary_request(body, str(len(head)), scaled.backend.outputs, plans)
    assert wanted == [("y", False)] and arrays["x"].shape == (1, 4) and head in plans
    mlp_model = table.current("mlp")
    assert mlp_model is not None
    with pytest.raises(v2.InputError, match="unknown output 'y'"):
        v2.decode_binary_request(body, str(len(head)), mlp_model.backend.outputs, plans)


def test_large_outputs_go_out_as_views_with_the_same_bytes(table: ModelTable):
    x = np.random.default_rng(1).standard_normal((8192, 4)).astype(np.float32)
    k = np.array(3, np.int64)
    header = json.dumps(
        {"inputs": [{"name": "x", "shape": [8192, 4], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}},
                    {"name": "k", "shape": [], "datatype": "INT64", "parameters": {"binary_data_size": 8}}],
         "parameters": {"binary_data_output": True}}
    ).encode()  # fmt: skip
    array = np.arange(16384, dtype=np.float32)
    assert isinstance(v2.raw_bytes(array), memoryview) and bytes(v2.raw_bytes(array)) == array.tobytes()
    with InferenceServer(table, port=0) as srv:
        answer = httpx.post(
            f"{srv.url}/v2/models/scaled_sum/infer", content=header + x.tobytes() + k.tobytes(),
            headers={"Inference-Header-Content-Length": str(len(header))}, timeout=10,
        )  # fmt: skip
    out = _outputs(answer)
    np.testing.assert_allclose(out["y"], x * 3, rtol=1e-6)
    np.testing.assert_allclose(out["total"], (x * 3).sum(axis=1), atol=1e-5)


def test_an_800x608_rgb_json_request_is_served(table: ModelTable):
    """28 MB of JSON, over the 8 MiB default: the limit follows the model's fixed input size."""
    x = np.random.default_rng(2).random(IMAGE, dtype=np.float32)
    body = json.dumps({"inputs": [{"name": "x", "shape": list(IMAGE), "datatype": "FP32", "data": x.ravel().tolist()}]})
    assert len(body) > 8 << 20
    with InferenceServer(table, port=0) as srv:
        answer = httpx.post(f"{srv.url}/v2/models/image/infer", content=body, timeout=120)
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["outputs"][0]["data"], x.mean(axis=(2, 3)).ravel(), rtol=1e-4)
        # over what that input size can need in JSON: refused, naming the setting
        too_big = b'{"inputs": [' + b" " * (v2.json_limit(table.current("image").backend.inputs, 8 << 20)) + b"]}"  # type: ignore[union-attr]
        refused = httpx.post(f"{srv.url}/v2/models/image/infer", content=too_big, timeout=120)
        assert refused.status_code == 413
        assert "api_max_json_mb" in refused.json()["error"] and "EDGE_AGENT_API_MAX_JSON_MB" in refused.json()["error"]


def test_a_413_names_the_setting_that_raises_it(table: ModelTable):
    limits = Limits(max_body_bytes=1 << 20, max_json_bytes=64 << 10)
    with InferenceServer(table, port=0, limits=limits) as srv:
        big_json = b'{"inputs": [' + b" " * (128 << 10) + b"]}"  # mlp has a dynamic batch: the setting decides
        error = httpx.post(f"{srv.url}/v2/models/mlp/infer", content=big_json, timeout=10).json()["error"]
        assert "over the limit of 65536 bytes" in error
        assert "raise api_max_json_mb" in error and "Inference-Header-Content-Length" in error
        body, headers = _binary(np.ones((20000, 16), np.float32))  # 1.2 MiB of binary tensors
        error = httpx.post(f"{srv.url}/v2/models/mlp/infer", content=body, headers=headers, timeout=10).json()["error"]
        assert "raise api_max_body_mb" in error and "EDGE_AGENT_API_MAX_BODY_MB" in error
        image = httpx.post(f"{srv.url}/v2/models/image/infer", content=b"{" + b" " * (2 << 20) + b"}", timeout=10)
        assert image.status_code == 413 and "capped by api_max_body_mb" in image.json()["error"]


def test_json_limit_follows_fixed_input_sizes(table: ModelTable):
    image, mlp_model = table.current("image"), table.current("mlp")
    assert image is not None and mlp_model is not None
    assert v2.json_limit(image.backend.inputs, 8 << 20) == 3 * 800 * 608 * v2.JSON_BYTES_PER_VALUE + v2.JSON_SLACK_BYTES
    assert v2.json_limit(mlp_model.backend.inputs, 8 << 20) == 8 << 20  # a dynamic batch: the setting
