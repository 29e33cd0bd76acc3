"""The v2 API over gRPC (issue 29, item 3): a real agent started with --grpc, spoken to by the stock
`tritonclient.grpc` client: live, ready, metadata and inference answers equal ONNX Runtime's, the API token is
enforced as over HTTP, bad requests come back as gRPC statuses, and the inferences reach the telemetry."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from conftest import free_port, wait_model_state, wait_until

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

TOKEN = "grpc-t0ken-0123456789"
FAST = "telemetry_interval_s = 0.5\n"


def _infer(client, x: np.ndarray, headers: dict[str, str] | None = None, **kwargs):
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer("mlp", [tensor], headers=headers, **kwargs)


def _status(exc: InferenceServerException) -> str:
    return str(exc.status())


def test_tritonclient_grpc_against_a_real_agent(controller, start_agent, mlp_model, tmp_path):
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    agent = start_agent(
        "dev1", config=f'{FAST}api_token_file = "{token_file}"\n', extra=["--grpc", f"127.0.0.1:{port}"],
        wait_online=controller,
    )  # fmt: skip
    c = controller.client
    record = c.upload_model(mlp_model, "mlp", None)
    c.deploy("mlp", record["version"], ["dev1"])
    wait_model_state(controller, "dev1", "mlp", record["sha256"], {"serving"})
    auth = {"authorization": f"Bearer {TOKEN}"}
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        # health needs no token (as /v2/health/*); the rest does
        assert client.is_server_live() and client.is_server_ready()
        with pytest.raises(InferenceServerException) as denied:
            client.get_server_metadata()
        assert "UNAUTHENTICATED" in _status(denied.value) and "Bearer" in denied.value.message()
        with pytest.raises(InferenceServerException) as wrong:
            client.get_model_metadata("mlp", headers={"authorization": "Bearer nope"})
        assert "UNAUTHENTICATED" in _status(wrong.value)

        server = client.get_server_metadata(headers=auth)
        assert server.name == "edge-agent"
        assert client.is_model_ready("mlp", headers=auth) and not client.is_model_ready("nope", headers=auth)
        meta = client.get_model_metadata("mlp", headers=auth, as_json=True)
        assert meta["name"] == "mlp" and meta["versions"] == [record["version"]]
        assert meta["platform"].startswith("onnxruntime")
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "16"]}]  # int64 as JSON strings
        assert meta["outputs"] == [{"name": "probs", "datatype": "FP32", "shape": ["-1", "4"]}]

        session = ort.InferenceSession(str(mlp_model), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(5)
        for batch in (1, 3, 1, 7):
            x = rng.standard_normal((batch, 16)).astype(np.float32)
            result = _infer(client, x, auth, request_id=f"r{batch}")
            np.testing.assert_allclose(result.as_numpy("probs"), session.run(None, {"x": x})[0], rtol=1e-6)
            assert result.get_response().id == f"r{batch}"
        requested = _infer(client, x, auth, outputs=[grpcclient.InferRequestedOutput("probs")])
        assert requested.as_numpy("probs").shape == (7, 4)

        # bad requests: gRPC statuses with the HTTP API's messages
        with pytest.raises(InferenceServerException) as bad_shape:
            _infer(client, np.ones((1, 5), np.float32), auth)
        assert "INVALID_ARGUMENT" in _status(bad_shape.value) and "shape" in bad_shape.value.message()
        wrong_type = grpcclient.InferInput("x", [1, 16], "FP64")
        wrong_type.set_data_from_numpy(np.ones((1, 16), np.float64))
        with pytest.raises(InferenceServerException) as bad_type:
            client.infer("mlp", [wrong_type], headers=auth)
        assert "INVALID_ARGUMENT" in _status(bad_type.value) and "FP64" in bad_type.value.message()
        with pytest.raises(InferenceServerException) as missing:
            client.infer("nope", [wrong_type], headers=auth)
        assert "NOT_FOUND" in _status(missing.value) and "serving: mlp" in missing.value.message()
        with pytest.raises(InferenceServerException) as unknown_output:
            _infer(client, x, auth, outputs=[grpcclient.InferRequestedOutput("logits")])
        assert "INVALID_ARGUMENT" in _status(unknown_output.value) and "probs" in unknown_output.value.message()
    finally:
        client.close()

    # the gRPC inferences are counted as the HTTP ones are: 6 answered, 2 refused by the model's signature
    def served() -> int:
        data = c._request("GET", "/api/v1/devices/dev1/telemetry", params={"since": "5m"})
        return sum(m["requests"] for s in data["samples"] for m in s["models"])

    wait_until(lambda: served() >= 5, 20, "the gRPC inferences in the stored telemetry")
    assert agent.proc is not None and agent.proc.poll() is None


def test_grpc_port_in_use_is_one_line(start_agent, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        agent = start_agent("dev2", extra=["--grpc", f"127.0.0.1:{port}"])
        assert agent.proc is not None
        assert agent.proc.wait(30) != 0
    assert "gRPC API cannot listen on 127.0.0.1" in agent.logs() and "Traceback" not in agent.logs()
