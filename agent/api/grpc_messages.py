"""The KServe v2 gRPC messages (package `inference`, as Triton's grpc_service.proto and KServe's grpc_predict_v2.proto
spell them), built at run time from a descriptor: no generated *_pb2 module, so any protobuf runtime from 3.20 on
reads them, and no tritonclient on the device.

Only what the agent serves: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer.
Field names and numbers are the protocol's (tests/unit/agent/test_grpc_messages.py compares them with tritonclient's).
"""

from __future__ import annotations

from typing import Any

PACKAGE = "inference"
SERVICE = "inference.GRPCInferenceService"

# protobuf field types and labels (google/protobuf/descriptor.proto)
_DOUBLE, _FLOAT, _INT64, _UINT64, _INT32, _BOOL, _STRING, _MESSAGE, _BYTES, _UINT32 = 1, 2, 3, 4, 5, 8, 9, 11, 12, 13
_OPTIONAL, _REPEATED = 1, 3

Field = tuple[str, int, int, bool, str]  # name, number, type, repeated, message type (relative to the package)

_PARAMETERS: Field = ("parameters", 0, _MESSAGE, True, "<map>")  # map<string, InferParameter>, number set per use
_TENSOR = [("name", 1, _STRING, False, ""), ("datatype", 2, _STRING, False, ""), ("shape", 3, _INT64, True, "")]

MESSAGES: dict[str, list[Field]] = {
    "ServerLiveRequest": [],
    "ServerLiveResponse": [("live", 1, _BOOL, False, "")],
    "ServerReadyRequest": [],
    "ServerReadyResponse": [("ready", 1, _BOOL, False, "")],
    "ModelReadyRequest": [("name", 1, _STRING, False, ""), ("version", 2, _STRING, False, "")],
    "ModelReadyResponse": [("ready", 1, _BOOL, False, "")],
    "ServerMetadataRequest": [],
    "ServerMetadataResponse": [
        ("name", 1, _STRING, False, ""), ("version", 2, _STRING, False, ""), ("extensions", 3, _STRING, True, ""),
    ],
    "ModelMetadataRequest": [("name", 1, _STRING, False, ""), ("version", 2, _STRING, False, "")],
    "ModelMetadataResponse": [
        ("name", 1, _STRING, False, ""), ("versions", 2, _STRING, True, ""), ("platform", 3, _STRING, False, ""),
        ("inputs", 4, _MESSAGE, True, "ModelMetadataResponse.TensorMetadata"),
        ("outputs", 5, _MESSAGE, True, "ModelMetadataResponse.TensorMetadata"),
    ],
    "ModelMetadataResponse.TensorMetadata": list(_TENSOR),
    "InferParameter": [  # oneof parameter_choice
        ("bool_param", 1, _BOOL, False, ""), ("int64_param", 2, _INT64, False, ""),
        ("string_param", 3, _STRING, False, ""), ("double_param", 4, _DOUBLE, False, ""),
        ("uint64_param", 5, _UINT64, False, ""),
    ],
    "InferTensorContents": [
        ("bool_contents", 1, _BOOL, True, ""), ("int_contents", 2, _INT32, True, ""),
        ("int64_contents", 3, _INT64, True, ""), ("uint_contents", 4, _UINT32, True, ""),
        ("uint64_contents", 5, _UINT64, True, ""), ("fp32_contents", 6, _FLOAT, True, ""),
        ("fp64_contents", 7, _DOUBLE, True, ""), ("bytes_contents", 8, _BYTES, True, ""),
    ],
    "ModelInferRequest": [
        ("model_name", 1, _STRING, False, ""), ("model_version", 2, _STRING, False, ""), ("id", 3, _STRING, False, ""),
        ("parameters", 4, _MESSAGE, True, "<map>"),
        ("inputs", 5, _MESSAGE, True, "ModelInferRequest.InferInputTensor"),
        ("outputs", 6, _MESSAGE, True, "ModelInferRequest.InferRequestedOutputTensor"),
        ("raw_input_contents", 7, _BYTES, True, ""),
    ],
    "ModelInferRequest.InferInputTensor": [
        *_TENSOR, ("parameters", 4, _MESSAGE, True, "<map>"), ("contents", 5, _MESSAGE, False, "InferTensorContents"),
    ],
    "ModelInferRequest.InferRequestedOutputTensor": [
        ("name", 1, _STRING, False, ""), ("parameters", 2, _MESSAGE, True, "<map>"),
    ],
    "ModelInferResponse": [
        ("model_name", 1, _STRING, False, ""), ("model_version", 2, _STRING, False, ""), ("id", 3, _STRING, False, ""),
        ("parameters", 4, _MESSAGE, True, "<map>"),
        ("outputs", 5, _MESSAGE, True, "ModelInferResponse.InferOutputTensor"),
        ("raw_output_contents", 6, _BYTES, True, ""),
    ],
    "ModelInferResponse.InferOutputTensor": [
        *_TENSOR, ("parameters", 4, _MESSAGE, True, "<map>"), ("contents", 5, _MESSAGE, False, "InferTensorContents"),
    ],
}  # fmt: skip


def file_descriptor() -> Any:
    """The messages above as a FileDescriptorProto (proto3): `parameters` fields are map<string, InferParameter>."""
    from google.protobuf import descriptor_pb2

    proto = descriptor_pb2.FileDescriptorProto(name="edge_agent/kserve_v2.proto", package=PACKAGE, syntax="proto3")
    built: dict[str, Any] = {}
    for path in sorted(MESSAGES, key=lambda p: p.count(".")):  # parents before the types nested in them
        parent, _, name = path.rpartition(".")
        message = (built[parent].nested_type if parent else proto.message_type).add(name=name)
        built[path] = message
        for field_name, number, kind, repeated, type_name in MESSAGES[path]:
            field = message.field.add(name=field_name, number=number, type=kind)
            field.label = _REPEATED if repeated else _OPTIONAL
            if type_name == "<map>":
                entry = message.nested_type.add(name="ParametersEntry")
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, type=_STRING, label=_OPTIONAL)
                entry.field.add(
                    name="value", number=2, type=_MESSAGE, label=_OPTIONAL,
                    type_name=f".{PACKAGE}.InferParameter",
                )  # fmt: skip
                field.type_name = f".{PACKAGE}.{path}.ParametersEntry"
            elif type_name:
                field.type_name = f".{PACKAGE}.{type_name}"
            if path == "InferParameter":
                field.oneof_index = 0
    built["InferParameter"].oneof_decl.add(name="parameter_choice")
    return proto


class Messages:
    """The message classes by name (`messages.ModelInferRequest`), from a pool of their own (a process that also
    imports tritonclient's generated module keeps both)."""

    def __init__(self) -> None:
        from google.protobuf import descriptor_pool

        pool = descriptor_pool.DescriptorPool()
        pool.Add(file_descriptor())
        self._classes: dict[str, Any] = {}
        for path in MESSAGES:
            self._classes[path.rpartition(".")[2] if "." in path else path] = _message_class(
                pool.FindMessageTypeByName(f"{PACKAGE}.{path}")
            )

    def __getattr__(self, name: str) -> Any:
        try:
            return self._classes[name]
        except KeyError:
            raise AttributeError(name) from None


def _message_class(descriptor: Any) -> Any:
    from google.protobuf import message_factory

    get = getattr(message_factory, "GetMessageClass", None)  # protobuf >= 4.22
    if get is not None:
        return get(descriptor)
    return message_factory.MessageFactory(descriptor.file.pool).GetPrototype(descriptor)  # pragma: no cover
