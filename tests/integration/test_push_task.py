"""`edgectl push --task` against a real controller: the declared task is kept with the version, carried in the desired
state's model entry (what the controller publishes to devices), set back to auto by a later push, and a task that is
not one of the choices is refused by the CLI in one line."""

from __future__ import annotations

import json

from test_e2e import edgectl

from controller.fleet.link import _entry


def test_the_declared_task_is_kept_with_the_version_and_carried_to_devices(controller, mlp_model):
    pushed = edgectl(controller.url, "push", str(mlp_model), "-n", "amb", "--version", "1", "--task", "classifier",
                     "--json")  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["info"]["task"] == "classifier"
    assert controller.client.model("amb", "1")["info"]["task"] == "classifier"
    row = controller.bg.controller.db.get_model("amb", "1")  # the entry the controller publishes to devices
    assert row is not None and _entry(row, None).task == "classifier"
    again = edgectl(controller.url, "push", str(mlp_model), "-n", "amb", "--version", "1", "--json")
    assert again.returncode == 0, again.stderr
    assert controller.client.model("amb", "1")["info"].get("task") is None  # auto: detected on the device again
    bad = edgectl(controller.url, "push", str(mlp_model), "-n", "amb", "--task", "detector")
    assert bad.returncode != 0 and "detector" in bad.stderr, bad.stderr
