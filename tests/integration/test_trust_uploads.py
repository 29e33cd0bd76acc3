"""Issue 26, finding 6: the model check of an upload ran inside the API process with no memory cap (a 146 MiB upload
took the controller from 52 to 352 MiB), and uploads up to 4 GiB were accepted. A real controller process, a real
146 MiB ONNX model over HTTP."""

from __future__ import annotations

import httpx
from hardening import ControllerProcess, raw_http

from edgectl.sample_models import mlp

MiB = 1 << 20


def test_a_large_upload_is_checked_outside_the_api_process(tmp_path, broker):
    path = mlp(tmp_path / "big.onnx", pad_mb=146, seed=61)
    size_mb = path.stat().st_size / MiB
    c = ControllerProcess(tmp_path, broker=broker.url).start()
    try:
        before = c.peak_rss_mb()
        with open(path, "rb") as f:
            r = httpx.post(f"{c.url}/api/v1/models/big", content=f, timeout=300,
                           headers={"Content-Type": "application/octet-stream"})  # fmt: skip
        assert r.status_code == 201, r.text
        assert r.json()["info"]["inputs"][0]["name"] == "x"  # described by the child's check
        grew = c.peak_rss_mb() - before
        print(f"a {size_mb:.0f} MiB ONNX upload: the controller's peak RSS {before:.0f} MiB, +{grew:.0f} MiB")
        assert grew < 40, grew
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(b"\x08\x07" + b"\xff" * 1000)
        refused = httpx.post(f"{c.url}/api/v1/models/bad", content=bad.read_bytes(), timeout=60,
                             headers={"Content-Type": "application/octet-stream"})  # fmt: skip
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_model", refused.text
        # more than protobuf's 2 GiB declared: refused before a byte is read
        head = f"POST /api/v1/models/huge HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {3 << 30}\r\n\r\n"
        status, _, _ = raw_http(c.port, head, read_timeout=5)
        assert status == 413
    finally:
        c.stop()
