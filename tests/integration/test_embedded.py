"""The zero-install path: embedded broker (MQTT 3.1.1 only), agents falling back to 3.1.1, and `edgectl demo`."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys

import pytest
from conftest import free_port, wait_until

from controller.broker.embedded import BrokerStartError, EmbeddedBroker
from protocol.link import BrokerAddress, MqttLink, Will


def test_link_falls_back_to_mqtt_311_on_the_embedded_broker(caplog):
    caplog.set_level(logging.INFO, logger="amqtt")
    broker = EmbeddedBroker("127.0.0.1", free_port())
    broker.start()
    try:
        received = []
        link = MqttLink(
            BrokerAddress.parse(broker.url),
            "t1",
            subscriptions=[("a/#", 1)],
            on_message=lambda t, p: received.append((t, p)),
            will=Will("a/will", b"gone"),  # amqtt never answers a v5 CONNECT that carries a will
        )
        link.start()
        assert link.wait_connected(15)
        assert not link.is_v5
        link.publish("a/b", b"hello", 1)
        wait_until(lambda: received, 5, "own message back")
        assert received == [("a/b", b"hello")]
        link.stop()
        amqtt = [r for r in caplog.records if r.name == "amqtt.broker"]
        assert not [r for r in amqtt if r.levelno >= logging.WARNING], [r.getMessage() for r in amqtt]
        assert any("MQTT 5 client falls back" in r.getMessage() for r in amqtt)
    finally:
        broker.stop()


def test_embedded_broker_port_in_use_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(BrokerStartError, match="already in use"):
            EmbeddedBroker("127.0.0.1", port).start()


def test_controller_cli_reports_port_in_use(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "controller.cli",
                "serve",
                "--broker",
                f"embedded:{port}",
                "--data-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert "already in use" in result.stderr and "Traceback" not in result.stderr


def test_demo_runs_the_whole_path_and_cleans_up(tmp_path):
    scratch = tmp_path / "tmp"  # the demo's scratch directory is made here (TMPDIR), and must be gone after
    scratch.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "edgectl.cli", "demo", "--requests", "50"],
        capture_output=True,
        text=True,
        timeout=180,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "TMPDIR": str(scratch)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "serving" in result.stdout and "demo finished cleanly" in result.stdout
    assert "edgefleet-demo-" not in result.stdout  # no directory named that is then deleted (issue 24.16)
    assert [p.name for p in scratch.iterdir() if p.name.startswith("edgefleet-demo-")] == []
