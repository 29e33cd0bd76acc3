"""`edgectl push --pin` against a real controller: the pin is kept with the version, carried in the desired state's
model entry (what the controller publishes to devices, which the agent's eviction reads), and a later push without
--pin takes it off."""

from __future__ import annotations

import json

from test_e2e import edgectl

from controller.fleet.link import _entry
from protocol import DesiredModel


def test_the_pin_is_kept_with_the_version_and_carried_to_devices(controller, mlp_model):
    pushed = edgectl(controller.url, "push", str(mlp_model), "-n", "pinme", "--version", "1", "--pin", "--json")
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["info"]["pinned"] is True
    assert controller.client.model("pinme", "1")["info"]["pinned"] is True
    row = controller.bg.controller.db.get_model("pinme", "1")  # the entry the controller publishes to devices
    assert row is not None
    entry = _entry(row, None)
    assert entry.pinned is True
    assert DesiredModel.model_validate_json(entry.model_dump_json()).pinned is True  # as the agent reads it
    again = edgectl(controller.url, "push", str(mlp_model), "-n", "pinme", "--version", "1", "--json")
    assert again.returncode == 0, again.stderr
    assert controller.client.model("pinme", "1")["info"]["pinned"] is False
    row = controller.bg.controller.db.get_model("pinme", "1")
    assert row is not None and _entry(row, None).pinned is False
