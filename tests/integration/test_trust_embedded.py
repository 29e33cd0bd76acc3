"""Issue 26, finding 13 (the embedded broker): with a password file it checked who logged in but not which topics
they used, so one device read another's desired state and telemetry and wrote on its topics; without one it had no
topic ACL at all. A real controller with `--broker embedded:PORT`, with a users file (devices logged in with their
own passwords) and without one (anonymous clients, each confined by its client id; a real agent with no
credentials)."""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import pytest
from conftest import AgentProcess, free_port, wait_until
from hardening import ControllerProcess, Device

from edgectl.client import ControllerClient
from protocol import Desired, DeviceState, ModelStatus, Presence, Telemetry, Topics

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


def test_an_anonymous_client_on_the_embedded_broker_reaches_only_its_client_ids_topics(tmp_path, mlp_model):
    """Without a users file: a rogue local client (its own client id, no credentials) listens on every wildcard,
    another device's topics and a shared group, and writes on dev-b's topics; a real agent with no credentials still
    gets its push through the same broker."""
    port = free_port()
    c = ControllerProcess(tmp_path, broker=f"embedded:{port}").start()
    data = tmp_path / "agent-dev-b"
    data.mkdir()
    args = ["--broker", f"mqtt://127.0.0.1:{port}", "--device-id", "dev-b", "--data-dir", str(data),
            "--api", f"127.0.0.1:{free_port()}"]  # fmt: skip
    agent = AgentProcess("dev-b", data, 0, args, tmp_path / "agent-dev-b.log").start()
    rogue = None
    try:
        assert "anonymous per client id" in c.logs() and "--broker-users-file" in c.logs()
        theirs = [TOPICS.device("dev-b", k) for k in ("desired", "telemetry", "state", "presence", "artifact/chunk")]
        shares = ("$share/edge-controller-edge_v1/edge/v1/devices/+/state", "$share/g/edge/v1/devices/#", "$share/#")
        rogue = Device(port, None, None, client_id="rogue", subscribe=("edge/v1/devices/#", "#", *theirs, *shares))
        posing = Device(port, "edge-controller-internal", "a-guess", client_id="posing")  # the controller's name
        posing.close()
        assert posing.refused, "the controller's user name without its secret"
        client = ControllerClient(c.url)
        wait_until(lambda: any(d["id"] == "dev-b" and d["online"] for d in client.devices()), 30, "dev-b online")
        version = client.upload_model(mlp_model, "mlp", None)
        client.deploy("mlp", version["version"], ["dev-b"])

        def serving() -> bool:
            return any(m["name"] == "mlp" and m["state"] == "serving" for m in client.device("dev-b")["models"])

        wait_until(serving, 60, f"the push to dev-b ({agent.logs()[-1500:]})")
        forged = ModelStatus(name="forged", version="1", sha256="0" * 64, state="serving")
        rogue.publish(TOPICS.device("dev-b", "state"), DeviceState(device_id="dev-b", models=[forged]).encode())
        rogue.publish(TOPICS.device("dev-b", "desired"), Desired(device_id="dev-b", generation=10**6).encode())
        time.sleep(3)
        seen = sorted({t for t, _ in rogue.received})
        print(f"the rogue saw {seen}; dev-b reports {[m['name'] for m in client.device('dev-b')['models']]}")
        assert [t for t in seen if "/dev-b/" in t or t.startswith("$")] == []
        assert [m["name"] for m in client.device("dev-b")["models"]] == ["mlp"] and serving()
    finally:
        if rogue is not None:
            rogue.close()
        agent.kill()
        c.stop()
