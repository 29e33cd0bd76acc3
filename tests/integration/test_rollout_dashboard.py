"""Rollouts where an operator watches them: the dashboard (real headless Chromium) shows a rollout with its waves and
the gates' figures per class, and /metrics exports its state and gate results."""

from __future__ import annotations

import httpx
import pytest
from conftest import wait_until
from test_dashboard import CHROMIUM, browser  # noqa: F401  (the fixture)
from test_rollouts import fleet, same_answers, wait_state

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install -y chromium) for the rollout dashboard test"
)


def test_a_rollout_shows_on_the_dashboard_and_in_metrics(controller, start_agent, mlp_model, tmp_path, browser):  # noqa: F811
    assert CHROMIUM is not None
    fleet(controller, start_agent, mlp_model, n=2)
    controller.client.upload_model(same_answers(mlp_model, tmp_path / "m2.onnx"), "m", "2")
    rollout = controller.client.start_rollout({"model": "m", "version": "2", "waves": "1,100%", "bake_s": 1,
                                               "min_requests": 5, "activate_timeout_s": 60, "seed": 3})  # fmt: skip
    paused = wait_state(controller, rollout["id"], {"paused", "halted", "completed"}, timeout=60)
    assert paused["state"] == "paused"  # no traffic: inconclusive twice, never a pass

    metrics = httpx.get(f"{controller.url}/metrics").text
    rid = rollout["id"]
    assert f'edge_rollout_state{{rollout="{rid}",model="m",version="2",state="paused"}} 1' in metrics
    assert f'edge_rollout_wave{{rollout="{rid}",model="m",version="2"}} 1' in metrics
    assert 'gate="evidence",result="inconclusive"} 1' in metrics

    browser.call("Page.enable")
    browser.call("Page.navigate", url=f"{controller.url}/")
    selector = f"h3.rollout[data-rollout=\\'{rid}\\']"
    browser.wait_for(f"document.querySelector('{selector}') !== null", what="the rollout on the dashboard")
    heading = browser.evaluate(f"document.querySelector('{selector}').innerText")
    assert "m@2" in heading and "paused" in heading and "inconclusive" in heading
    table = browser.evaluate(f"document.querySelector('{selector}').nextElementSibling.innerText")
    assert "inconclusive" in table and "evidence" in table
    wait_until(lambda: True, 1)
