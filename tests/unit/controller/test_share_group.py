"""The replicas' shared-subscription group (controller.replicas.replication.share_group): a secret derived from the
broker password, so a device cannot name it (a device in every group it can name: tests/integration)."""

from __future__ import annotations

from controller.replicas.replication import share_group


def test_the_group_is_a_secret_of_the_password():
    name = "edge-controller-edge_v1"
    assert share_group(name, "a") == share_group(name, "a") != share_group(name, "b")
    assert share_group(name, None) == name  # no password: no secret (the controller warns)
