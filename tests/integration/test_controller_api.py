"""The controller's HTTP API: OpenAPI schema, input validation and error shapes."""

from __future__ import annotations

import httpx


def test_openapi_lists_the_api(controller):
    schema = httpx.get(f"{controller.url}/openapi.json").json()
    paths = set(schema["paths"])
    for path in (
        "/api/v1/models/{name}",
        "/api/v1/models",
        "/api/v1/devices",
        "/api/v1/devices/{device_id}",
        "/api/v1/deployments",
        "/api/v1/devices/{device_id}/infer",
    ):
        assert path in paths


def test_bad_requests_get_clear_errors(controller, mlp_model):
    url = controller.url
    r = httpx.post(f"{url}/api/v1/models/bad%20name", content=b"x")
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_name"
    r = httpx.post(f"{url}/api/v1/models/m", params={"version": "../x"}, content=b"x")
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_version"
    r = httpx.post(f"{url}/api/v1/models/m", content=b"")
    assert r.status_code == 400 and "empty" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/api/v1/models/m", params={"filename": "m.tflite"}, content=b"0123456789")
    assert r.status_code == 400 and "TFLite" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/api/v1/deployments", json={"model": "m", "devices": []})
    assert r.status_code == 422
    r = httpx.post(f"{url}/api/v1/deployments", json={"model": "m", "devices": ["a/b"]})
    assert r.status_code == 404 and "unknown device" in r.json()["error"]["message"]
    r = httpx.get(f"{url}/api/v1/models/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_model"

    ok = httpx.post(f"{url}/api/v1/models/m", params={"version": "v1"}, content=mlp_model.read_bytes())
    assert ok.status_code == 201 and ok.json()["info"]["inputs"][0]["name"] == "x"
    again = httpx.post(f"{url}/api/v1/models/m", params={"version": "v1"}, content=mlp_model.read_bytes())
    assert again.status_code == 201 and again.json()["created"] is False
    clash = httpx.post(f"{url}/api/v1/models/m", params={"version": "v1"}, content=mlp_model.read_bytes() + b"\0")
    assert clash.status_code in (400, 409)


def test_docs_work_offline(controller):
    """/docs loads Swagger UI from the controller itself (controller/static/swagger), never from a CDN."""
    import re

    page = httpx.get(f"{controller.url}/docs")
    assert page.status_code == 200
    sources = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text) + re.findall(r"url: '([^']+)'", page.text)
    assert sources and all(s.startswith("/") for s in sources), sources  # nothing off this host
    assert "/static/swagger/swagger-ui-bundle.js" in sources
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        r = httpx.get(f"{controller.url}/static/swagger/{asset}")
        assert r.status_code == 200 and len(r.content) > 10_000, asset
    assert httpx.get(f"{controller.url}/static/swagger/..%2Fsecrets").status_code == 404
