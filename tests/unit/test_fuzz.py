"""Property-based hostile input (hypothesis) for every MQTT message handler and the v2 request parser: nothing
raises out of a handler, nothing hangs, and every bad request gets one 4xx answer."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.api.http_server import Limits
from agent.api.routes import InferenceServer
from agent.api.v2_codec import decode_inputs
from agent.config import AgentConfig
from agent.serving.table import LoadedModel, ModelTable
from controller.db.database import Database
from controller.fleet.link import Fleet
from controller.registry.artifacts import ArtifactStore
from edgectl.sample_models import scaled_sum
from protocol import DEVICE_TOPIC_KINDS, ChunkHeader, Topics, encode_frame
from protocol.tensors import InputError
from targets import registry

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # huge ints cast to FP32
CASES = {"count": 0}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)
message_keys = st.sampled_from(
    ["v", "kind", "device_id", "online", "models", "name", "version", "sha256", "size", "id", "reply_to", "method",
     "params", "request_id", "offset", "length", "inputs", "model", "generation", "state", "hardware"]
)  # fmt: skip
messages = st.dictionaries(message_keys, json_values, max_size=8).map(lambda d: json.dumps(d).encode())
payloads = st.one_of(st.binary(max_size=2048), messages)
HEADER_CHARS = st.characters(min_codepoint=33, max_codepoint=126)  # what an HTTP client can send at all
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    from agent.service import Agent

    data = tmp_path_factory.mktemp("fuzz-agent")
    return Agent(AgentConfig(device_id="dev1", data_dir=data, broker="mqtt://127.0.0.1:9", api="127.0.0.1:0"))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    data = tmp_path_factory.mktemp("fuzz-fleet")
    db = Database(f"sqlite:///{data / 'c.db'}")
    return Fleet(db, ArtifactStore(data / "artifacts"), "mqtt://127.0.0.1:9")


@FUZZ
@given(kind=st.sampled_from(DEVICE_TOPIC_KINDS), device=st.sampled_from(["dev1", "dev2"]), payload=payloads)
def test_agent_handlers_never_raise(agent, kind, device, payload):
    CASES["count"] += 1
    agent._on_message(Topics().device(device, kind), payload)


@FUZZ
@given(kind=st.sampled_from(DEVICE_TOPIC_KINDS), device=st.sampled_from(["dev1", "dev2"]), payload=payloads)
def test_controller_handlers_never_raise(fleet, kind, device, payload):
    CASES["count"] += 1
    fleet._on_message(Topics().device(device, kind), payload)


@FUZZ
@given(
    header=st.builds(
        ChunkHeader,
        request_id=st.text(max_size=20),
        sha256=st.text(max_size=70),
        offset=st.integers(0, 2**40),
        length=st.integers(0, 2**20),
        total=st.integers(0, 2**40),
    ),
    data=st.binary(max_size=512),
    cut=st.integers(0, 64),
)
def test_agent_chunk_frames_never_raise(agent, header, data, cut):
    CASES["count"] += 1
    frame = encode_frame(header, data)
    agent._on_message(Topics().device("dev1", "artifact/chunk"), frame[: len(frame) - cut])


tensor = st.fixed_dictionaries(
    {"name": st.sampled_from(["x", "k", "y", ""]), "datatype": st.sampled_from(["FP32", "INT64", "BYTES", "FP99", 3]),
     "shape": st.lists(st.integers(-2, 5), max_size=3) | json_values, "data": json_values},
    optional={"parameters": st.dictionaries(st.sampled_from(["binary_data_size"]), st.integers(-5, 100))},
)  # fmt: skip


@FUZZ
@given(inputs=st.lists(tensor, max_size=3) | json_values, binary=st.none() | st.binary(max_size=64))
def test_v2_input_decoder_answers_400_or_arrays(inputs, binary):
    CASES["count"] += 1
    try:
        arrays = decode_inputs(inputs, memoryview(binary) if binary is not None else None)
    except InputError:
        pass  # what the route answers with 400 (the server's fuzz below checks the answers)
    else:
        assert isinstance(arrays, dict) and arrays


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = scaled_sum(Path(tmp_path_factory.mktemp("fuzz-model")) / "s.onnx")
    backend = registry.create("onnxruntime")
    backend.load(path, "onnx")
    table = ModelTable()
    table.swap(LoadedModel("s", "1", "0" * 64, backend))
    limits = Limits(max_body_bytes=1 << 16, max_json_bytes=1 << 16)
    with InferenceServer(table, port=0, limits=limits) as srv, httpx.Client(base_url=srv.url) as client:
        yield client


@FUZZ
@given(
    path=st.sampled_from(["/v2/models/s/infer", "/v2/models/s/versions/1/infer", "/v2/models/nope/infer", "/v2/x"]),
    body=st.binary(max_size=4096) | st.lists(tensor, max_size=3).map(lambda d: json.dumps({"inputs": d}).encode()),
    header_len=st.none() | st.integers(-10, 5000) | st.text(HEADER_CHARS, max_size=8),
)
def test_v2_http_answers_every_request(server, path, body, header_len):
    CASES["count"] += 1
    headers = {"Content-Type": "application/json"}
    if header_len is not None:
        headers["Inference-Header-Content-Length"] = str(header_len)
    response = server.post(path, content=body, headers=headers)
    assert response.status_code in (200, 400, 404, 405, 413), response.text
    assert "error" in response.json() or response.status_code == 200
    assert server.get("/v2/health/live").status_code == 200


def test_zz_report_fuzz_cases():
    print(f"\nfuzz cases run: {CASES['count']}")
    assert CASES["count"] >= 1000
