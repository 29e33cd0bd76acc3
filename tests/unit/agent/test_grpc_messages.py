"""The KServe v2 gRPC messages the agent builds at run time carry the same fields, numbers and types as the ones
tritonclient generates from Triton's grpc_service.proto, so both sides read each other's bytes; and an agent without
--grpc never imports grpcio."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.api.grpc_messages import MESSAGES, Messages

service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
ROOT = Path(__file__).resolve().parents[3]


def _fields(descriptor) -> dict[str, tuple]:
    found = {}
    for field in descriptor.fields:
        message = field.message_type.full_name if field.message_type else ""
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value = field.message_type.fields_by_name["value"].message_type.full_name
            message = f"map<string, {value}>"
        found[field.name] = (field.number, field.type, field.is_repeated, message)
    return found


@pytest.mark.parametrize("path", sorted(MESSAGES))
def test_each_message_matches_tritonclients(path: str):
    ours = getattr(Messages(), path.rpartition(".")[2]).DESCRIPTOR
    theirs = service_pb2.DESCRIPTOR.message_types_by_name[path.partition(".")[0]]
    if "." in path:
        theirs = theirs.nested_types_by_name[path.partition(".")[2]]
    assert ours.full_name == theirs.full_name
    assert _fields(ours) == _fields(theirs)


def test_bytes_cross_both_ways():
    m = Messages()
    request = m.ModelInferRequest(model_name="mlp", id="7")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2]).parameters["binary_data_size"].int64_param = 8
    request.raw_input_contents.append(b"\0" * 8)
    theirs = service_pb2.ModelInferRequest.FromString(request.SerializeToString())
    assert theirs.inputs[0].parameters["binary_data_size"].int64_param == 8 and theirs.id == "7"
    response = service_pb2.ModelInferResponse(model_name="mlp", raw_output_contents=[b"abc"])
    response.outputs.add(name="y", datatype="UINT8", shape=[3])
    ours = m.ModelInferResponse.FromString(response.SerializeToString())
    assert list(ours.outputs[0].shape) == [3] and ours.raw_output_contents[0] == b"abc"


def test_the_agent_without_grpc_never_imports_grpcio():
    code = "import sys, agent.service, agent.cli; assert 'grpc' not in sys.modules, 'grpc imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
