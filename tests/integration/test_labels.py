"""Labels with a real agent: its own (`--label`, `labels` in its config), the measured ones from its hardware, and
operator labels set with `edgectl label`; `edgectl devices --select` picks devices by them."""

from __future__ import annotations

import json

from conftest import wait_until
from typer.testing import CliRunner

from edgectl.cli import app
from protocol.labels import hardware_class, measured_labels


def edgectl(controller, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*args, "--controller", controller.url])
    return result.exit_code, result.output


def selected(controller, *selector: str) -> list[str]:
    code, out = edgectl(controller, "devices", "--json", *(x for s in selector for x in ("--select", s)))
    assert code == 0, out
    return sorted(d["id"] for d in json.loads(out))


def test_devices_are_selected_by_their_own_measured_and_operator_labels(controller, start_agent):
    start_agent("cam-a", config='labels = { site = "lab" }\n', extra=["--label", "row=1"], wait_online=controller)
    start_agent("cam-b", extra=["--label", "site=yard"], wait_online=controller)
    wait_until(lambda: len(selected(controller)) == 2, 10, "both devices listed")
    device = controller.client.device("cam-a")
    assert device["labels"]["site"] == "lab" and device["labels"]["row"] == "1"
    assert device["hardware_class"] == hardware_class(measured_labels(device["hardware"]))
    arch = device["labels"]["arch"]
    assert selected(controller, f"arch={arch}") == ["cam-a", "cam-b"]
    assert selected(controller, "site=lab", f"arch={arch}") == ["cam-a"]
    assert selected(controller, "site=lab", "row=2") == []

    code, out = edgectl(controller, "label", "cam-b", "tier=canary", "--json")
    assert code == 0 and json.loads(out)["label_sources"]["operator"] == {"tier": "canary"}
    assert selected(controller, "tier=canary") == ["cam-b"]
    code, out = edgectl(controller, "label", "cam-b", "tier-")
    assert code == 0 and selected(controller, "tier=canary") == []

    code, out = edgectl(controller, "label", "cam-b", "arch=riscv")  # measured: not the operator's to set
    assert code != 0 and "measured" in out
    code, out = edgectl(controller, "label", "nope", "tier=x")
    assert code != 0 and "unknown device" in out


def test_an_invalid_label_on_the_agent_is_one_line_naming_it(start_agent):
    agent = start_agent("cam-c", extra=["--label", "bad label"])
    assert agent.proc is not None and agent.proc.wait(20) == 78
    assert "invalid --label" in agent.logs() and "bad label" in agent.logs()
