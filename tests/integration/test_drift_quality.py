"""Quality drift end to end: a real agent serves the 4-class MLP classifier, its telemetry carries the class mix and
the input summaries over a real broker, the controller judges them, and the operator sees what moved in `edgectl
drift`, `edgectl status`, `edgectl top` and /metrics; `edgectl drift baseline` starts a new baseline."""

from __future__ import annotations

import json
import re

import httpx
import numpy as np
from conftest import wait_model_state, wait_until
from test_e2e import edgectl, v2_infer

# every request summarised (no time budget), so a verdict needs few requests on a loaded test machine
FAST = "telemetry_interval_s = 0.5\ntelemetry_sample_every = 1\ntelemetry_budget_us = 0\n"


def _quality(controller) -> dict:
    data = json.loads(edgectl(controller.url, "drift", "show", "dev1", "--json").stdout)
    return data["models"].get("mlp") or {}


def test_an_input_shift_on_a_served_classifier_reaches_every_place_operators_look(controller, start_agent, mlp_model):
    agent = start_agent("dev1", config=FAST, wait_online=controller)
    c = controller.client
    record = c.upload_model(mlp_model, "mlp", None)
    c.deploy("mlp", record["version"], ["dev1"])
    wait_model_state(controller, "dev1", "mlp", record["sha256"], {"serving"})
    rng = np.random.default_rng(0)

    def serve(shift: float) -> None:
        for _ in range(5):  # 5 requests of 64 rows
            v2_infer(agent, "mlp", (rng.standard_normal((64, 16)) + shift).astype(np.float32))

    def judged() -> bool:
        serve(0.0)
        return bool(_quality(controller).get("judged"))

    wait_until(judged, 60, "a baseline and a first verdict on the baseline's distribution")
    assert not _quality(controller)["flagged"], _quality(controller)

    def flagged() -> bool:
        serve(3.0)
        return bool(_quality(controller).get("flagged"))

    wait_until(flagged, 60, "the +3 std input shift to be flagged")
    quality = _quality(controller)
    moved = " | ".join(quality["moved"])
    assert "class mix of probs" in moved and "input x" in moved, moved

    shown = edgectl(controller.url, "drift", "show", "dev1")
    assert shown.returncode == 0 and "drift (PSI" in shown.stdout and "input x" in shown.stdout, shown.stdout
    status = edgectl(controller.url, "status", "dev1")
    assert status.returncode == 0 and "DRIFT" in status.stdout, status.stdout
    top = edgectl(controller.url, "top", "--once")
    assert top.returncode == 0 and "drift PSI" in top.stdout, top.stdout
    metrics = httpx.get(f"{controller.url}/metrics").text
    assert 'edge_model_drift{device="dev1",model="mlp"} 1' in metrics
    psi = re.search(r'edge_model_drift_psi\{device="dev1",model="mlp"\} ([0-9.e+]+)', metrics)
    assert psi and float(psi.group(1)) > 1.0

    reset = edgectl(controller.url, "drift", "baseline", "dev1", "--model", "mlp")
    assert reset.returncode == 0 and "new drift baseline for mlp on dev1" in reset.stdout
    assert _quality(controller).get("state", "").startswith("building baseline")
    bad = edgectl(controller.url, "drift", "show", "nope")
    assert bad.returncode == 1 and "unknown device" in bad.stderr
