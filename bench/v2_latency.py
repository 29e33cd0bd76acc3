"""Part 3 of bench/e2e.py: the v2 API's overhead over a bare `InferenceSession.run` of the same small model, for JSON
and binary tensors over HTTP keep-alive, and for gRPC with the stock `tritonclient.grpc` client.

The HTTP client is a lean keep-alive one (a socket, the request bytes built once, the answer's Content-Length read):
http.client parses every response's headers with the `email` package, ~0.1 ms of client time the agent does not
spend. Every path's answer is checked against the runtime's before timing. The paths are timed in interleaved rounds
(JSON, binary, gRPC, bare, then again), so load from other processes on a shared machine falls on all of them; the
p50 of each path is over all its rounds."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROUNDS = 5


class LeanHttp:
    """One keep-alive HTTP/1.1 connection that POSTs a prepared request and reads the whole answer."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")

    @staticmethod
    def request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
        head = f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        return head.encode() + b"\r\n" + body

    def send(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        self.sock.sendall(request)
        status = int(self.file.readline().split(b" ", 2)[1])
        headers = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.lower()] = value.strip()
        return status, headers, self.file.read(int(headers["content-length"]))

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _timed(fn: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def bench_latency(
    api_url: str, grpc_address: str | None, name: str, model_path: Path, requests: int, warmup: int, percentile: Any
) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort

    x = np.random.default_rng(7).standard_normal((1, 16)).astype(np.float32)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    expected = session.run(None, feed)[0]
    path = f"/v2/models/{name}/infer"
    json_body = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": x.ravel().tolist()}]}
    )
    header = json.dumps(
        {
            "inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": 64}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    json_request = LeanHttp.request(path, json_body.encode(), {"Content-Type": "application/json"})
    binary_request = LeanHttp.request(
        path, header + x.tobytes(),
        {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
    )  # fmt: skip
    conn = LeanHttp(api_url)

    def check(got: Any, what: str) -> None:
        if not np.allclose(np.asarray(got, np.float32).reshape(expected.shape), expected, atol=1e-5):
            raise RuntimeError(f"the agent's {what} answer {got} differs from onnxruntime's {expected}")

    status, _, body = conn.send(json_request)
    if status != 200:
        raise RuntimeError(f"POST {path} answered {status}: {body[:300]!r}")
    check(json.loads(body)["outputs"][0]["data"], "JSON")
    status, headers, body = conn.send(binary_request)
    hlen = int(headers["inference-header-content-length"])
    check(np.frombuffer(body[hlen:], np.float32), "binary")

    paths: dict[str, Any] = {
        "json": lambda: conn.send(json_request),
        "binary": lambda: conn.send(binary_request),
        "bare": lambda: session.run(None, feed),
    }
    client = None
    if grpc_address is not None:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(grpc_address)
        tensor = grpcclient.InferInput("x", [1, 16], "FP32")
        tensor.set_data_from_numpy(x)
        check(client.infer(name, [tensor]).as_numpy("probs"), "gRPC")
        paths["grpc"] = lambda: client.infer(name, [tensor])
    times: dict[str, list[float]] = {key: [] for key in paths}
    try:
        for fn in paths.values():
            _timed(fn, warmup)
        for _ in range(ROUNDS):
            for key, fn in paths.items():
                times[key] += _timed(fn, max(1, requests // ROUNDS))
    finally:
        conn.close()
        if client is not None:
            client.close()
    result: dict[str, Any] = {"requests": requests, "warmup": warmup, "rounds": ROUNDS, "client": "lean keep-alive"}
    for key, values in times.items():
        result[f"{key}_p50_ms"] = percentile(values, 50)
        result[f"{key}_p95_ms"] = percentile(values, 95)
    for key in ("json", "binary", "grpc"):
        if key in times:
            result[f"{key}_overhead_p50_ms"] = result[f"{key}_p50_ms"] - result["bare_p50_ms"]
    # the names the report and older JSON readers used (JSON over HTTP)
    result["api_p50_ms"], result["api_p95_ms"] = result["json_p50_ms"], result["json_p95_ms"]
    result["ort_p50_ms"], result["ort_p95_ms"] = result["bare_p50_ms"], result["bare_p95_ms"]
    result["overhead_p50_ms"] = result["json_overhead_p50_ms"]
    return result
