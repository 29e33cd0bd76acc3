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


X86 = {"arch": "x86_64", "memory_mb": 16000, "board": "generic", "runtimes": {"onnxruntime": "1.20"}}
FORM = "document.getElementById('rollout-form')"


def fill(page, **values) -> None:
    """Type into the start form's fields (a select's change event fires, as a click on an option would)."""
    for key, value in values.items():
        page.evaluate(f"(() => {{ const e = {FORM}.elements[{key!r}]; e.value = {str(value)!r};"
                         " e.dispatchEvent(new Event('change')); })()")  # fmt: skip


def test_the_dashboard_starts_a_rollout_with_a_dry_run_first(make_controller, mlp_model, browser):  # noqa: F811
    """The "Start a rollout" form, behind an API token (the page keeps it in localStorage) and the Origin guard: the
    gates' defaults shown are the API's, a dry run shows the waves and changes nothing, Start creates the rollout
    with the selector, waves and bake typed (read back through the API) and the page lists it; a bad value shows the
    API's code and reason in one line."""
    from controller.api.routes.rollouts import StartRequest

    assert CHROMIUM is not None
    controller = make_controller(token="s3cret-token")
    database = controller.bg.controller.db
    lab = ["x86-0", "x86-1", "x86-2"]
    for device_id in [*lab, "x86-other"]:
        labels = {"site": "lab"} if device_id in lab else {"site": "other"}
        database.record_presence(device_id, True, {**X86, "labels": labels}, "1.0", None)
    c = controller.client
    c.upload_model(mlp_model, "m", "1")
    c.upload_model(mlp_model, "m", "2")
    c.deploy("m", "1", [*lab, "x86-other"])

    browser.call("Page.enable")
    browser.call("Page.navigate", url=f"{controller.url}/#token=s3cret-token")
    browser.wait_for("document.getElementById('rollout-start') !== null", what="the start form")
    assert browser.evaluate("localStorage.getItem('edgeToken')") == "s3cret-token"
    help_line = browser.evaluate(f"{FORM}.querySelector('p').textContent")  # the form is closed
    assert "already in the registry" in help_line and "does not upload" in help_line
    browser.evaluate("document.getElementById('rollout-start').open = true")  # loads the registry's versions
    browser.wait_for(f"Array.from({FORM}.elements.version.options).some(o => o.value === '2')", what="versions")
    assert browser.evaluate(f"Array.from({FORM}.elements.model.options).map(o => o.value)") == ["m"]
    assert browser.evaluate(f"Array.from({FORM}.elements.version.options).map(o => o.value)") == ["2", "1"]
    shown = browser.evaluate(
        f"Object.fromEntries(['waves', 'bake_s', 'activate_timeout_s', 'max_p95_ratio', "
        f"'max_error_delta', 'min_requests', 'on_fail'].map(k => [k, {FORM}.elements[k].value]))"
    )
    defaults = {k: StartRequest.model_fields[k].default for k in shown}
    assert {k: v if k in ("waves", "on_fail") else float(v) for k, v in shown.items()} == defaults, shown

    fill(browser, version="2", select="site=lab", waves="1,100%", bake_s="45", min_requests="5")
    browser.evaluate("document.getElementById('rollout-dry-run').click()")
    browser.wait_for("document.getElementById('rollout-plan') !== null", what="the dry run's plan")
    plan = browser.evaluate("Array.from(document.querySelectorAll('tr.plan-wave')).map(r => r.innerText)")
    assert len(plan) == 2 and plan[0].startswith("1 (1)\t1\t") and plan[1].startswith("2 (100%)\t2\t"), plan
    planned = " ".join(plan)
    assert all(d in planned for d in lab) and "x86-other" not in planned
    assert "3 device(s)" in browser.evaluate("document.getElementById('rollout-plan').innerText")
    assert c.rollouts() == []  # a dry run changes nothing
    seed = int(browser.evaluate(f"{FORM}.elements.seed.value"))  # the plan's random seed, filled in for Start

    browser.evaluate("document.getElementById('rollout-submit').click()")
    browser.wait_for("document.getElementById('rollout-started') !== null", what="the rollout started")
    rid = browser.evaluate("document.getElementById('rollout-started').dataset.rollout")
    rollout = c.rollout(rid)
    assert (rollout["model"], rollout["version"], rollout["selector"]) == ("m", "2", {"site": "lab"})
    spec = rollout["spec"]
    assert (spec["waves"], spec["bake_s"], spec["seed"], spec["min_requests"]) == ("1,100%", 45.0, seed, 5)
    assert (spec["max_p95_ratio"], spec["on_fail"], spec["min_agreement"]) == (1.10, "revert-wave", None)
    assert sorted(rollout["devices"]) == lab and [len(w["devices"]) for w in rollout["waves"]] == [1, 2]
    assert [sorted(w["devices"]) for w in rollout["waves"]] == [sorted(r.split("\t")[3].split()) for r in plan]
    selector = f"h3.rollout[data-rollout=\\'{rid}\\']"
    browser.wait_for(f"document.querySelector('{selector}') !== null", what="the new rollout listed")
    assert "m@2" in browser.evaluate(f"document.querySelector('{selector}').innerText")

    # a bad value: the API's code and reason, one line; nothing started
    fill(browser, waves="abc")
    browser.evaluate("document.getElementById('rollout-dry-run').click()")
    browser.wait_for("document.getElementById('rollout-error').innerText !== ''", what="the API's error")
    error = browser.evaluate("document.getElementById('rollout-error').innerText")
    assert error.startswith("HTTP 400 bad_rollout: --waves 'abc'") and "\n" not in error, error
    fill(browser, waves="1,100%", bake_s="-5")
    browser.evaluate("document.getElementById('rollout-submit').click()")
    browser.wait_for("document.getElementById('rollout-error').innerText.includes('bake_s')", what="a 422")
    error = browser.evaluate("document.getElementById('rollout-error').innerText")
    assert error.startswith("HTTP 422 invalid_request: bake_s: ") and "\n" not in error, error
    assert [r["id"] for r in c.rollouts()] == [rid]
