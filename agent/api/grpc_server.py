"""The Open Inference Protocol v2 over gRPC (`inference.GRPCInferenceService`, as Triton and OpenVINO Model Server
speak it, and `tritonclient.grpc` calls it), beside the HTTP API: the same serving table, token, limits and
telemetry (every inference goes through LoadedModel.infer).

`edge-agent run --grpc HOST:PORT` (or `grpc` in the config file) turns it on; it needs grpcio and protobuf (the
`grpc` extra), imported only then: an agent without --grpc never loads them (grpcio alone is ~20 MiB resident).

Methods: ServerLive, ServerReady (no token needed, as /v2/health/*), ModelReady, ServerMetadata, ModelMetadata and
ModelInfer, with tensors in `raw_input_contents` / `raw_output_contents` (or typed `contents` in requests). Errors are
gRPC statuses: INVALID_ARGUMENT (the request does not match the model), NOT_FOUND, UNAUTHENTICATED, INTERNAL (the
model failed), RESOURCE_EXHAUSTED (over api_max_connections calls at once, or a message over api_max_body_mb)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc  # the `grpc` extra: this module is imported only when the agent's `grpc` is set

import agent
from agent.api import v2_codec as v2
from agent.api.bearer import admits, expected
from agent.api.grpc_messages import SERVICE, Messages
from agent.api.http_server import Limits
from agent.serving.table import LoadedModel, ModelTable
from protocol.errors import EdgeError
from protocol.tensors import InputError, v2_datatype

logger = logging.getLogger(__name__)

SERVER_NAME = "edge-agent"
OPEN_METHODS = frozenset({"ServerLive", "ServerReady"})  # like /v2/health/*: no token
MAX_WORKERS = 8  # threads running calls; more calls at once wait for one (up to api_max_connections, then refused)
# the typed `contents` field a request's values come in, by datatype (FP16 has none: raw_input_contents only)
CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
}  # fmt: skip


class Abort(Exception):
    """An error answer: the gRPC status code's name and the message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class GrpcServer:
    """The v2 gRPC service over a ModelTable, on its own thread pool; start() binds, stop() ends it."""

    def __init__(
        self,
        table: ModelTable,
        host: str = "127.0.0.1",
        port: int = 8001,
        *,
        ready: Callable[[], bool] | None = None,
        limits: Limits | None = None,
        token: str | None = None,
    ) -> None:
        self.table = table
        self.host = host
        self._port = port
        self.ready = ready if ready is not None else (lambda: len(table) > 0)
        self.limits = limits or Limits()
        self._bearer = expected(token)
        self.messages = Messages()
        self._server: Any = None
        self._bound = 0

    @property
    def port(self) -> int:
        return self._bound or self._port

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and serve; OSError names the address that could not be bound."""
        from concurrent import futures

        m = self.messages
        methods = {
            "ServerLive": (self.server_live, m.ServerLiveRequest, m.ServerLiveResponse),
            "ServerReady": (self.server_ready, m.ServerReadyRequest, m.ServerReadyResponse),
            "ModelReady": (self.model_ready, m.ModelReadyRequest, m.ModelReadyResponse),
            "ServerMetadata": (self.server_metadata, m.ServerMetadataRequest, m.ServerMetadataResponse),
            "ModelMetadata": (self.model_metadata, m.ModelMetadataRequest, m.ModelMetadataResponse),
            "ModelInfer": (self.model_infer, m.ModelInferRequest, m.ModelInferResponse),
        }
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._handler(name, method),
                request_deserializer=request.FromString,
                response_serializer=response.SerializeToString,
            )
            for name, (method, request, response) in methods.items()
        }
        limits = self.limits
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=min(MAX_WORKERS, limits.max_connections), thread_name_prefix="grpc"),
            handlers=[grpc.method_handlers_generic_handler(SERVICE, handlers)],
            options=[
                ("grpc.max_receive_message_length", limits.max_body_bytes),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),  # a port in use is an error, as for the HTTP API
            ],
            maximum_concurrent_rpcs=limits.max_connections,
        )
        try:
            bound = server.add_insecure_port(f"{'[' + self.host + ']' if ':' in self.host else self.host}:{self._port}")
        except RuntimeError as exc:  # grpcio >= 1.50 raises; older ones return 0
            raise OSError(f"gRPC API cannot listen on {self.host}:{self._port}: {exc}") from None
        if not bound:
            raise OSError(f"gRPC API cannot listen on {self.host}:{self._port} (in use, or not an address here)")
        server.start()
        self._server, self._bound = server, bound
        logger.info("gRPC v2 API serving on %s", self.address)

    def stop(self, grace: float = 5.0) -> None:
        """Refuse new calls, let running ones finish for up to `grace` seconds."""
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace).wait(grace + 1)
            logger.info("gRPC v2 API stopped")

    def _handler(self, name: str, method: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
        """The method with the token check and errors as gRPC statuses."""
        bearer = None if name in OPEN_METHODS else self._bearer

        def call(request: Any, context: Any) -> Any:
            if bearer is not None and not admits(self._authorization(context), bearer):  # open: no metadata read
                context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "this API needs its token: metadata authorization: Bearer <api_token_file's content>",
                )
            try:
                return method(request)
            except Abort as exc:
                context.abort(getattr(grpc.StatusCode, exc.code), exc.message)
            except Exception as exc:  # never a call without an answer
                logger.exception("gRPC: %s failed", name)
                context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")

        return call

    @staticmethod
    def _authorization(context: Any) -> str | bytes | None:
        """The call's first `authorization` metadata value; None when it has none."""
        for key, value in context.invocation_metadata():
            if key == "authorization":
                return value
        return None

    # -- methods -------------------------------------------------------------------------------------------------

    def server_live(self, request: Any) -> Any:
        return self.messages.ServerLiveResponse(live=True)

    def server_ready(self, request: Any) -> Any:
        try:
            ready = bool(self.ready())
        except Exception as exc:
            logger.warning("gRPC API: readiness check failed: %s", exc)
            ready = False
        return self.messages.ServerReadyResponse(ready=ready)

    def model_ready(self, request: Any) -> Any:
        model = self.table.get(request.name)
        ready = model is not None and request.version in ("", model.version)
        return self.messages.ModelReadyResponse(ready=ready)

    def server_metadata(self, request: Any) -> Any:
        return self.messages.ServerMetadataResponse(name=SERVER_NAME, version=agent.__version__, extensions=[])

    def model_metadata(self, request: Any) -> Any:
        model = self._model(request.name, request.version)
        meta = v2.model_metadata(model)
        tensor = self.messages.TensorMetadata
        return self.messages.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensor(**spec) for spec in meta["inputs"]], outputs=[tensor(**spec) for spec in meta["outputs"]],
        )  # fmt: skip

    def model_infer(self, request: Any) -> Any:
        model = self._model(request.model_name, request.model_version)
        try:
            arrays = decode_inputs(request)
            names = requested_outputs(request, model)
            results = model.infer(arrays)
            response = self.messages.ModelInferResponse(
                model_name=model.name, model_version=model.version, id=request.id
            )
            for name in names or list(results):
                array = results[name]
                try:
                    datatype = v2_datatype(array.dtype)
                except InputError:
                    raise v2.OutputError(
                        f"output {name!r} has dtype {array.dtype.name}, which the protocol cannot carry"
                    ) from None
                response.outputs.add(name=name, datatype=datatype, shape=array.shape)
                response.raw_output_contents.append(array.tobytes())
        except InputError as exc:
            raise Abort("INVALID_ARGUMENT", str(exc)) from None
        except EdgeError as exc:  # BackendError, an output the protocol cannot carry
            raise Abort("INTERNAL", str(exc)) from None
        return response

    def _model(self, name: str, version: str) -> LoadedModel:
        model = self.table.get(name)
        if model is None:
            names = self.table.names()
            served = f"serving: {', '.join(names)}" if names else "no models are being served"
            raise Abort("NOT_FOUND", f"unknown model {name!r}; {served}")
        if version and version != model.version:
            raise Abort("NOT_FOUND", f"model {name!r} has no version {version!r}; serving version {model.version!r}")
        return model


def decode_inputs(request: Any) -> dict[str, Any]:
    """The request's tensors as numpy arrays: views of `raw_input_contents` (no copy), or its typed `contents`;
    checked as the HTTP codec checks them (InputError says what is wrong)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InputError(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    arrays: dict[str, Any] = {}
    for index, tensor in enumerate(request.inputs):
        item: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if tensor.name in arrays:
            raise InputError(f"input {tensor.name!r} is given twice")
        if raw:
            data = raw[index]
            item["parameters"] = {"binary_data_size": len(data)}
            arrays.update(v2.decode_inputs([item], memoryview(data)))
            continue
        field = CONTENTS.get(tensor.datatype)
        if field is None and tensor.datatype in v2.ITEMSIZE:
            raise InputError(f"input {tensor.name!r}: {tensor.datatype} values come in raw_input_contents only")
        item["data"] = list(getattr(tensor.contents, field)) if field is not None else None
        arrays.update(v2.decode_inputs([item], None))
    if not arrays:
        raise InputError("the request needs 'inputs': a non-empty list of tensors")
    return arrays


def requested_outputs(request: Any, model: LoadedModel) -> list[str] | None:
    """The outputs asked for, by name (None: all of them); an unknown one or the classification extension refused."""
    if not request.outputs:
        return None
    known = [spec.name for spec in model.backend.outputs]
    names = []
    for output in request.outputs:
        if output.name not in known:
            raise InputError(f"unknown output {output.name!r}; the model produces {known}")
        if "classification" in output.parameters:
            raise InputError(f"output {output.name!r}: the classification extension is not supported")
        names.append(output.name)
    return names
