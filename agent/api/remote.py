"""Answers the RPC calls that reach the agent over MQTT (infer, status, capture), on the request's own reply topic."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agent.api import v2_codec as v2
from agent.serving.table import ModelTable
from protocol import QOS, DeviceState, Problem, RpcRequest, RpcResponse, Topics, decode
from protocol.errors import EdgeError, error_code
from protocol.tensors import InputError

SINGLE_INPUT = ""  # the name of a lone unnamed input tensor in an infer call
log = logging.getLogger(__name__)

Publish = Callable[..., object]  # MqttLink.publish


class NotFound(EdgeError, LookupError):
    """An unknown method, or a model that is not serving here."""

    code = "not_found"


class RemoteCalls:
    """RPC requests decoded on the MQTT thread, answered on a small pool; none once `stopping` is set."""

    def __init__(
        self,
        topics: Topics,
        table: ModelTable,
        state: Callable[[], DeviceState],
        publish: Publish,
        stopping: threading.Event,
        capture: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.topics = topics
        self.table = table
        self.state = state  # the device status now (agent.status_board)
        self.publish = publish
        self.stopping = stopping
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rpc")
        self._methods: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "infer": self.infer,
            "status": lambda params: self.state().model_dump(),
        }
        if capture is not None:
            self._methods["capture"] = capture

    def submit(self, payload: bytes) -> None:
        """MQTT thread: decode (ProtocolError for a bad request) and queue the call."""
        if self.stopping.is_set():
            return
        self._pool.submit(self.answer, decode(RpcRequest, payload))

    def close(self) -> None:
        """Wait for the calls running now; drop the queued ones."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def answer(self, request: RpcRequest) -> None:
        if request.deadline and time.time() > request.deadline:
            return
        if not request.reply_to.startswith(self.topics.root + "/"):
            log.warning("dropped rpc %s: reply topic %r is outside %s", request.id, request.reply_to, self.topics.root)
            return
        try:
            response = RpcResponse(id=request.id, ok=True, result=self.call(request.method, request.params))
        except (EdgeError, LookupError) as exc:
            problem = Problem(code=error_code(exc, NotFound.code), message=str(exc))
            response = RpcResponse(id=request.id, ok=False, error=problem)
        except Exception as exc:  # never leave the caller waiting
            log.exception("rpc %s failed", request.method)
            response = RpcResponse(id=request.id, ok=False, error=Problem(code="internal", message=repr(exc)))
        self.publish(request.reply_to, response.encode(), QOS["rpc/response"], correlation_id=request.id)

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        handler = self._methods.get(method)
        if handler is None:
            raise NotFound(f"unknown method {method!r}; known: {', '.join(self._methods)}")
        return handler(params)

    def infer(self, params: dict[str, Any]) -> dict[str, Any]:
        """`{model, inputs: {name: tensor}}` -> the v2 result header, backend, latency and the output tensors. A lone
        tensor named "" goes to a one-input model's input, whatever its format or version (the device knows)."""
        name = params.get("model")
        model = self.table.get(name) if isinstance(name, str) else None
        if model is None:
            raise NotFound(f"model {name!r} is not serving here; serving: {self.table.names()}")
        arrays = v2.decode_tensor_map(params.get("inputs"))
        specs = model.backend.inputs
        if set(arrays) == {SINGLE_INPUT}:  # one unnamed array (edgectl infer --input x.npy)
            if len(specs) != 1:
                names = [s.name for s in specs]
                raise InputError(f"the model takes {len(specs)} inputs {names}: pass an .npz keyed by input name")
            arrays = {specs[0].name: arrays[SINGLE_INPUT]}
        started = time.perf_counter()
        outputs = model.infer(arrays)
        latency_ms = (time.perf_counter() - started) * 1000
        result = v2.result_head(model.name, model.version)
        result.update(backend=model.backend.label, latency_ms=latency_ms, outputs=v2.encode_tensor_map(outputs))
        return result
