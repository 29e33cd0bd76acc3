"""The controller's dashboard in a real headless Chromium (Debian's `chromium`), driven over the Chrome DevTools
protocol: the page loads, lists a device that a real agent registered, and draws that device's latency chart."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import time

import httpx
import numpy as np
import pytest
from conftest import wait_model_state, wait_until
from test_e2e import v2_infer

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install -y chromium) for the dashboard test"
)


class Browser:
    """One headless Chromium with one page, spoken to over the DevTools websocket."""

    def __init__(self, profile) -> None:
        from websockets.sync.client import connect

        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        wait_until(lambda: port_file.exists() and port_file.read_text().strip(), 30, "chromium's DevTools port")
        port = int(port_file.read_text().split()[0])
        pages = wait_until(
            lambda: [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"],
            10,
            "a page target",
        )
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self._ids = itertools.count(1)

    def call(self, method: str, **params):
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=30))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(reply["error"])
                return reply["result"]

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0, what: str = "the page"):
        return wait_until(lambda: self.evaluate(expression), timeout, what, poll=0.2)

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path / "chromium-profile")
    yield b
    b.close()


def test_dashboard_lists_the_device_and_draws_its_latency_chart(controller, start_agent, mlp_model, browser):
    agent = start_agent("cam-01", config="telemetry_interval_s = 0.5\n", wait_online=controller)
    c = controller.client
    record = c.upload_model(mlp_model, "mlp", None)
    c.deploy("mlp", record["version"], ["cam-01"])
    wait_model_state(controller, "cam-01", "mlp", record["sha256"], {"serving"})
    x = np.zeros((1, 16), dtype=np.float32)
    deadline = time.monotonic() + 20

    def windows_with_requests() -> int:
        v2_infer(agent, "mlp", x)
        samples = c._request("GET", "/api/v1/devices/cam-01/telemetry", params={"since": "5m"})["samples"]
        return sum(1 for s in samples if any(m["requests"] for m in s["models"]))

    while windows_with_requests() < 2 and time.monotonic() < deadline:
        time.sleep(0.1)

    browser.call("Page.enable")
    browser.call("Page.navigate", url=f"{controller.url}/")
    browser.wait_for("document.querySelector('tr.device-row[data-device=\"cam-01\"]') !== null", what="the fleet list")
    row = browser.evaluate("document.querySelector('tr.device-row[data-device=\"cam-01\"]').innerText")
    assert "online" in row and "mlp@1" in row

    browser.evaluate("document.querySelector('tr.device-row a').click()")
    browser.wait_for("document.querySelector('#latency-chart polyline.series') !== null", what="the latency chart")
    points = browser.evaluate(
        "Array.from(document.querySelectorAll('#latency-chart polyline.series'))"
        ".map(p => [p.dataset.series, p.getAttribute('points').trim().split(' ').length])"
    )
    assert [name for name, _ in points] == ["mlp p50", "mlp p95"]
    assert all(n >= 2 for _, n in points), points
    title = browser.evaluate("document.getElementById('device-title').innerText")
    assert "cam-01" in title
    models = browser.evaluate("document.getElementById('models').innerText")
    assert "mlp" in models and "onnxruntime" in models


def test_dashboard_shows_a_failed_model_with_its_reason_and_colour(controller, start_agent, tmp_path, browser):
    """A model no backend can run: the fleet row and the device page show `failed` in red with its reason (one
    line), and the page renders fully in headless Chromium (screenshot taken after the data loaded)."""
    import base64

    from zoo.sklearn_models import custom_op_model

    start_agent("cam-02", wait_online=controller)
    custom_op_model(tmp_path / "custom.onnx")  # one FancyNorm node of a domain no runtime here has
    c = controller.client
    record = c.upload_model(tmp_path / "custom.onnx", "custom", None)
    c.deploy("custom", record["version"], ["cam-02"])
    wait_model_state(controller, "cam-02", "custom", record["sha256"], {"failed"})

    browser.call("Page.enable")
    browser.call("Page.navigate", url=f"{controller.url}/")
    row = "document.querySelector('tr.device-row[data-device=\"cam-02\"]')"
    browser.wait_for(f"{row} !== null && {row}.querySelector('.state-failed') !== null", what="the failed model")
    text = browser.evaluate(f"{row}.innerText")
    assert "failed" in text and "FancyNorm" in text, text
    colour = browser.evaluate(f"getComputedStyle({row}.querySelector('.state-failed')).backgroundColor")
    assert colour == "rgb(179, 38, 30)", colour

    browser.call("Page.navigate", url=f"{controller.url}/#/device/cam-02")
    browser.wait_for("document.querySelector('tr.model-row[data-model=\"custom\"] .reason') !== null", what="reason")
    reason = browser.evaluate("document.querySelector('tr.model-row[data-model=\"custom\"] .reason').innerText")
    assert "FancyNorm" in reason and "\n" not in reason and len(reason) <= 200, reason
    shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    (tmp_path / "dashboard-failed.png").write_bytes(shot)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10_000  # a drawn page, not a blank one
