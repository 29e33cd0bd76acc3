"""Transport security against a real Mosquitto: TLS with a CA made here, passwords, and the generated ACL confining
each device to its own topics."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from conftest import AgentProcess, _port_open, find_mosquitto, free_port, wait_until
from paho.mqtt.enums import CallbackAPIVersion

from controller.broker.acl import mosquitto_acl
from protocol import Presence, Topics, decode

PASSWORDS = {"edge-controller": "ctl-secret", "dev-a": "a-secret", "dev-b": "b-secret"}


def make_pki(directory: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1, written as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key, issuer_name, issuer_key, ca: bool):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            san = x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            )
            builder = builder.add_extension(san, critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge test CA")])
    ca_cert = cert("edge test CA", ca_key, ca_name, ca_key, ca=True)
    server_cert = cert("localhost", server_key, ca_name, ca_key, ca=False)
    files = {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server.key"}
    files["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return files


@pytest.fixture
def secure_broker(tmp_path):
    binary = find_mosquitto()
    passwd = shutil.which("mosquitto_passwd")
    if not binary or not passwd:
        pytest.skip("needs the mosquitto and mosquitto_passwd binaries (Debian package mosquitto)")
    pki = make_pki(tmp_path)
    password_file = tmp_path / "passwords"
    password_file.touch()
    for user, password in PASSWORDS.items():
        subprocess.run([passwd, "-b", str(password_file), user, password], check=True)
    acl_file = tmp_path / "acl"
    acl_file.write_text(mosquitto_acl("edge"))
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\ncafile {pki['ca']}\ncertfile {pki['cert']}\nkeyfile {pki['key']}\n"
        f"allow_anonymous false\npassword_file {password_file}\nacl_file {acl_file}\n"
        "persistence false\nset_tcp_nodelay true\n" + ("user root\n" if os.geteuid() == 0 else "")
        # as root, mosquitto drops to user `mosquitto`, which cannot read pytest's private temp dir
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=(tmp_path / "mosquitto.log").open("wb"))
    wait_until(lambda: _port_open(port) or proc.poll() is not None, 10, "TLS mosquitto")
    assert proc.poll() is None, (tmp_path / "mosquitto.log").read_text()
    yield port, pki
    proc.kill()
    proc.wait(5)


class Client:
    """A TLS paho client that records what it receives and whether its connection was accepted."""

    def __init__(self, port: int, ca: Path, user: str, password: str | None, subscribe: list[str] = ()) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.connack = threading.Event()
        self.refused: str | None = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{user}", protocol=mqtt.MQTTv311)
        self.client.tls_set(ca_certs=str(ca), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.username_pw_set(user, password)
        self.client.on_message = lambda c, u, m: self.received.append((m.topic, m.payload))

        def on_connect(client, userdata, flags, reason_code, properties):
            if reason_code.is_failure:
                self.refused = str(reason_code)
            else:
                for topic in subscribe:
                    client.subscribe(topic, 1)
            self.connack.set()

        self.client.on_connect = on_connect
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.connack.wait(10)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_tls_passwords_and_acl_confine_each_device(secure_broker):
    port, pki = secure_broker
    topics = Topics("edge")
    assert Client(port, pki["ca"], "dev-a", "wrong").refused  # bad password
    assert Client(port, pki["ca"], "dev-a", None).refused  # anonymous

    controller = Client(port, pki["ca"], "edge-controller", PASSWORDS["edge-controller"], ["edge/v1/#"])
    dev_a = Client(
        port, pki["ca"], "dev-a", PASSWORDS["dev-a"],
        [topics.device("dev-a", "desired"), topics.device("dev-b", "desired"), topics.device("dev-b", "rpc/request")],
    )  # fmt: skip
    time.sleep(0.5)
    controller.publish(topics.device("dev-a", "desired"), b"for a")
    controller.publish(topics.device("dev-b", "desired"), b"for b")
    controller.publish(topics.device("dev-b", "rpc/request"), b"call b")
    dev_a.publish(topics.device("dev-a", "state"), b"a state")  # allowed
    dev_a.publish(topics.device("dev-b", "state"), b"forged b state")  # denied: not its topic
    dev_a.publish(topics.device("dev-a", "desired"), b"self-assigned desired")  # denied: devices only read desired
    time.sleep(1.0)

    assert dev_a.received == [(topics.device("dev-a", "desired"), b"for a")]
    seen = [(t, p) for t, p in controller.received]
    assert (topics.device("dev-a", "state"), b"a state") in seen
    assert not any(p in (b"forged b state", b"self-assigned desired") for _, p in seen)
    for c in (controller, dev_a):
        c.close()


def test_agent_connects_over_tls_with_credentials(secure_broker, tmp_path):
    port, pki = secure_broker
    controller = Client(
        port, pki["ca"], "edge-controller", PASSWORDS["edge-controller"], ["edge/v1/devices/+/presence"]
    )
    config = tmp_path / "agent.toml"
    config.write_text(f'username = "dev-a"\npassword = "{PASSWORDS["dev-a"]}"\nca_file = "{pki["ca"]}"\n')
    api_port = free_port()
    args = ["--config", str(config), "--broker", f"mqtts://127.0.0.1:{port}", "--device-id", "dev-a",
            "--data-dir", str(tmp_path / "agent"), "--api", f"127.0.0.1:{api_port}"]  # fmt: skip
    agent = AgentProcess("dev-a", tmp_path / "agent", api_port, args, tmp_path / "agent.log").start()
    try:
        wait_until(lambda: controller.received, 20, "the agent's presence over TLS")
        topic, payload = controller.received[-1]
        assert topic == "edge/v1/devices/dev-a/presence"
        assert decode(Presence, payload).online is True
    finally:
        agent.kill()
        controller.close()
