"""The agent's local inference API: the Open Inference Protocol v2 routes over the serving table.

It runs on the hand-written HTTP transport (agent.api.http_server) with the pure v2 codec (agent.api.v2_codec).

Endpoints (each model route also in its `/versions/{version}` form, as tritonclient sends it):

    GET  /v2                              server metadata
    GET  /v2/health/live                  200
    GET  /v2/health/ready                 200 when ready, else 503
    GET  /agent/status                    this agent: device id, broker, connected (read by `edge-agent doctor`)
    GET  /v2/models/{name}                model metadata
    GET  /v2/models/{name}/ready          200, or 404 for a model not served
    POST /v2/models/{name}/infer          JSON tensors, or the binary tensor extension

A JSON request may be as large as the model's fixed input sizes need (24 bytes a value), at least api_max_json_mb; a
binary one up to api_max_body_mb; a 413 names the setting that raises it.

Errors are `{"error": "..."}` with 400 (the request does not match the model), 404, 405, 411, 413, 415 or 500."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import agent
from agent.api import v2_codec as v2
from agent.api.bearer import admits, expected
from agent.api.http_server import BINARY, JSON, HTTPError, HttpServer, Limits, Request, Response, error_response
from agent.serving.eviction import ModelUnavailable
from agent.serving.table import LoadedModel, ModelTable
from protocol.errors import EdgeError
from protocol.tensors import InputError

logger = logging.getLogger(__name__)

SERVER_NAME = "edge-agent"
_EMPTY = Response(200, [], JSON)


def _allow(method: str, allowed: str) -> None:
    if method != allowed and not (method == "HEAD" and allowed == "GET"):
        allow = "GET, HEAD" if allowed == "GET" else allowed
        raise HTTPError(405, f"method {method} not allowed here; use {allowed}", [("Allow", allow)])


def _segment(text: str) -> str:
    return unquote(text) if "%" in text else text


class V2Routes:
    """The v2 endpoints as the transport's app: a request in, a Response out."""

    def __init__(
        self,
        table: ModelTable,
        ready: Callable[[], bool],
        token: str | None = None,
        status: Callable[[], dict[str, Any]] | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.table = table
        self.ready = ready
        self.limits = limits or Limits()
        self._plans: dict[bytes, v2.RequestPlan] = {}  # binary request headers seen (agent.api.v2_codec)
        self.status = status or (lambda: {})
        self._bearer = expected(token)  # required on every route but /v2/health/*
        self.metadata = v2.dumps(
            {"name": SERVER_NAME, "version": agent.__version__, "extensions": ["binary_tensor_data"]}
        )
        self._fixed: dict[str, Callable[[], Response]] = {
            "v2": lambda: Response(200, [self.metadata]),
            "v2/health/live": lambda: _EMPTY,
            "v2/health/ready": self._health_ready,
            "agent/status": lambda: Response(200, [v2.dumps(self.status())]),
        }
        self._model_routes: dict[str, tuple[str, Callable[[Request, LoadedModel], Response]]] = {
            "": ("GET", lambda request, model: Response(200, [v2.dumps(v2.model_metadata(model))])),
            "ready": ("GET", lambda request, model: _EMPTY),
            "infer": ("POST", self._infer),
        }

    def __call__(self, request: Request) -> Response:
        path = request.path
        query = path.find("?")
        if query >= 0:
            path = path[:query]
        parts = path.strip("/").split("/")
        guarded = self._bearer is not None and parts[:2] != ["v2", "health"]  # the open API skips the check's cost
        if guarded and not admits(request.headers.get("Authorization"), self._bearer):
            raise HTTPError(401, "this API needs its token: Authorization: Bearer <api_token_file's content>")
        fixed = self._fixed.get("/".join(parts))
        if fixed is not None:
            _allow(request.method, "GET")
            return fixed()
        if len(parts) >= 3 and parts[0] == "v2" and parts[1] == "models":
            return self._model_route(request, _segment(parts[2]), parts[3:], path)
        raise HTTPError(404, f"no such endpoint: {path}")

    def _model_route(self, request: Request, name: str, rest: list[str], path: str) -> Response:
        version = None
        if len(rest) >= 2 and rest[0] == "versions":
            version = _segment(rest[1])
            rest = rest[2:]
        route = self._model_routes.get("/".join(rest))
        if route is None:
            raise HTTPError(404, f"no such endpoint: {path}")
        method, handler = route
        _allow(request.method, method)
        return handler(request, self._model(name, version))

    def _model(self, name: str, version: str | None) -> LoadedModel:
        model = self.table.get(name)
        if model is None:
            names = self.table.names()
            served = f"serving: {', '.join(names)}" if names else "no models are being served"
            raise HTTPError(404, f"unknown model {name!r}; {served}")
        if version is not None and version != model.version:
            raise HTTPError(404, f"model {name!r} has no version {version!r}; serving version {model.version!r}")
        return model

    def _health_ready(self) -> Response:
        try:
            ready = bool(self.ready())
        except Exception as exc:
            logger.warning("inference API: readiness check failed: %s", exc)
            return error_response(503, f"not ready: readiness check failed: {exc}")
        return _EMPTY if ready else error_response(503, "not ready")

    def _infer(self, request: Request, model: LoadedModel) -> Response:
        """Decode, run, encode; a request that does not fit the model is a 400, a model that fails a 500."""
        header_length = request.headers.get("Inference-Header-Content-Length")
        backend = model.backend
        try:
            if header_length is not None:  # the binary tensor extension: a header seen before is not parsed again
                body = request.read_body()
                header, arrays, wanted, binary_default = v2.decode_binary_request(
                    body, header_length, backend.outputs, self._plans
                )
            else:
                body = request.read_body(v2.json_limit(backend.inputs, self.limits.max_json_bytes))
                header, binary = v2.split_body(body, None)
                arrays = v2.decode_inputs(header.get("inputs"), binary)
                wanted, binary_default = v2.requested_outputs(header, backend.outputs)
            results = model.infer(arrays)
            head, blobs = v2.encode_response(
                v2.result_head(model.name, model.version), header, results, wanted, binary_default
            )
        except InputError as exc:
            raise HTTPError(400, str(exc)) from None
        except ModelUnavailable as exc:  # unloaded to save memory, and it cannot come back now
            raise HTTPError(503, str(exc), [("Retry-After", str(exc.retry_after_s))]) from None
        except EdgeError as exc:  # BackendError, an output the protocol cannot carry
            raise HTTPError(500, str(exc)) from None
        except HTTPError as exc:
            if exc.status == 413:
                raise HTTPError(413, f"{exc.message}; {self._raise_hint(model, header_length is not None)}") from None
            raise
        if blobs:
            return Response(200, [head, *blobs], BINARY, [("Inference-Header-Content-Length", str(len(head)))])
        return Response(200, [head])

    def _raise_hint(self, model: LoadedModel, binary: bool) -> str:
        """What raises the limit a 413 hit: the setting's name (config file key and environment variable)."""
        body = "api_max_body_mb in the agent config (EDGE_AGENT_API_MAX_BODY_MB)"
        if binary:
            return f"raise {body}"
        limits = self.limits
        derived = v2.json_limit(model.backend.inputs, limits.max_json_bytes)
        if derived >= limits.max_body_bytes:
            return (
                f"a JSON request for {model.name!r}'s input sizes is capped by {body}; raise it, or send binary tensors"
            )
        sized = f" ({model.name!r}'s input sizes need up to {derived} bytes)" if derived > limits.max_json_bytes else ""
        return (
            f"raise api_max_json_mb in the agent config (EDGE_AGENT_API_MAX_JSON_MB){sized}, or send the tensors as "
            "binary (the binary tensor extension: Inference-Header-Content-Length)"
        )


class InferenceServer(HttpServer):
    """The v2 inference API over a ModelTable, served from a daemon thread (one thread per connection)."""

    def __init__(
        self,
        table: ModelTable,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        ready: Callable[[], bool] | None = None,
        limits: Limits | None = None,
        token: str | None = None,
        status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.table = table
        limits = limits or Limits()
        self.routes = V2Routes(table, ready if ready is not None else (lambda: len(table) > 0), token, status, limits)
        super().__init__(
            self.routes,
            host,
            port,
            limits=limits,
            server_header=f"{SERVER_NAME}/{agent.__version__}",
            name="inference API",
        )
