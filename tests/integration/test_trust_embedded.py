"""Issue 26, finding 13 (the embedded broker): with a password file it checked who logged in but not which topics
they used, so one device read another's desired state and telemetry and wrote on its topics. A real controller with
`--broker embedded:PORT --broker-users-file`, devices logged in with their own passwords."""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import pytest
from conftest import free_port, wait_until
from hardening import ControllerProcess, Device

from edgectl.client import ControllerClient
from protocol import DeviceState, ModelStatus, Presence, Telemetry, Topics

TOPICS = Topics("edge")


def test_a_device_on_the_embedded_broker_reaches_only_its_own_topics(tmp_path, mlp_model):
    passwd = shutil.which("mosquitto_passwd")
    if not passwd:
        pytest.skip("needs mosquitto_passwd")
    users = tmp_path / "users"
    users.touch()
    for user in ("dev-a", "dev-b"):
        subprocess.run([passwd, "-b", str(users), user, f"{user}-secret"], check=True)
    port = free_port()
    c = ControllerProcess(tmp_path, "--broker-users-file", str(users), broker=f"embedded:{port}").start()
    spy = mine = None
    try:
        wait_until(lambda: httpx.get(f"{c.url}/api/v1/health").json()["broker_connected"], 20, "its own link")
        theirs = ("desired", "telemetry", "state", "artifact/chunk", "rpc/request")
        spy = Device(port, "dev-a", "dev-a-secret", client_id="dev-a",
                     subscribe=("#", *(TOPICS.device("dev-b", k) for k in theirs)))  # fmt: skip
        mine = Device(port, "dev-b", "dev-b-secret", client_id="dev-b", subscribe=(TOPICS.device("dev-b", "desired"),))
        mine.publish(TOPICS.device("dev-b", "presence"), Presence(device_id="dev-b", online=True).encode(), True)
        client = ControllerClient(c.url)
        wait_until(lambda: client.devices(), 10, "dev-b's presence")
        client.deploy(client.upload_model(mlp_model, "mlp", None)["name"], None, ["dev-b"])
        now = time.time()
        mine.publish(TOPICS.device("dev-b", "telemetry"), Telemetry(device_id="dev-b", ts=now, start=now - 1).encode())
        wait_until(lambda: mine.received, 10, "dev-b's own desired state")  # its own topics still work
        forged = ModelStatus(name="forged", version="1", sha256="0" * 64, state="serving")
        spy.publish(TOPICS.device("dev-b", "state"), DeviceState(device_id="dev-b", models=[forged]).encode())
        time.sleep(1.5)
        seen = sorted({t for t, _ in spy.received})
        print(f"dev-a saw {seen}; dev-b got {len(mine.received)} message(s) of its own")
        assert [t for t in seen if "/dev-b/" in t] == []
        assert "forged" not in [m["name"] for m in client.device("dev-b")["models"]]
    finally:
        for d in (spy, mine):
            if d is not None:
                d.close()
        c.stop()
