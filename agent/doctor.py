"""`edge-agent doctor`: the checks a field technician runs first, each with the fix for what fails."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from agent.config import AgentConfig, ConfigError, load_config
from protocol.link import BrokerAddress

Outcome = Literal["ok", "warn", "fail", "skip"]

RUNTIMES = {  # module: (distribution names to read the version from, extra that installs it)
    "onnxruntime": (("onnxruntime", "onnxruntime-gpu"), "agent"),
    "openvino": (("openvino",), "openvino"),
    "ai_edge_litert": (("ai-edge-litert",), "tflite"),
    "tflite_runtime": (("tflite-runtime",), "tflite"),
}
MIN_FREE_BYTES = 256 << 20
WARN_FREE_BYTES = 1 << 30
MIN_YEAR = 2024


@dataclass
class Check:
    name: str
    outcome: Outcome
    detail: str
    fix: str | None = None


def check_config(
    path: Path | None, environ: Mapping[str, str] | None, overrides: dict[str, Any] | None = None
) -> tuple[Check, AgentConfig | None]:
    """The configuration as `edge-agent run` reads it: the file, EDGE_AGENT_* variables, then the same flags."""
    where = str(path) if path else "defaults and EDGE_AGENT_* variables"
    try:
        cfg = load_config(path, overrides or {}, environ=environ)
        address = cfg.broker_address()  # reads password_file
    except ConfigError as exc:
        fix = f"edit {path}" if path else "fix the EDGE_AGENT_* variable"
        return Check("config", "fail", str(exc), f"{fix}; systemd/agent.toml.example documents every key"), None
    return Check("config", "ok", f"{where} is valid (device {cfg.device_id}, broker {address})"), cfg


def check_tcp(address: BrokerAddress, timeout: float) -> Check:
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        return Check(
            "broker tcp",
            "fail",
            f"cannot connect to {address.host}:{address.port}: {reason}",
            "check the broker URL in the config, that the broker runs and listens there, and firewalls/DNS between",
        )
    return Check("broker tcp", "ok", f"{address.host}:{address.port} accepts connections")


def check_mqtt(cfg: AgentConfig, address: BrokerAddress, timeout: float) -> Check:
    """CONNECT with the configured credentials and TLS; report the CONNACK."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    username, password = address.username, address.password  # as `run` connects: username, password(_file)
    versions = {"5": [mqtt.MQTTv5], "3.1.1": [mqtt.MQTTv311]}.get(cfg.mqtt_protocol, [mqtt.MQTTv5, mqtt.MQTTv311])
    last = "no CONNACK"
    for version in versions:
        result: dict[str, Any] = {}
        done = threading.Event()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"edge-agent-doctor-{cfg.device_id}-{os.getpid()}", protocol=version
        )
        if username:
            client.username_pw_set(username, password)
        if address.tls or cfg.ca_file or cfg.cert_file:
            try:
                client.tls_set(ca_certs=cfg.ca_file, certfile=cfg.cert_file, keyfile=cfg.key_file)
            except (ssl.SSLError, OSError, ValueError) as exc:
                return Check("broker mqtt", "fail", f"TLS setup failed: {exc}", "check ca_file, cert_file, key_file")

        def on_connect(client, userdata, flags, reason_code, properties, result=result, done=done):
            result["code"] = reason_code
            done.set()

        client.on_connect = on_connect
        try:
            client.connect(address.host, address.port, keepalive=10)
        except ssl.SSLError as exc:
            return Check(
                "broker mqtt",
                "fail",
                f"TLS handshake with {address} failed: {exc.reason or exc}",
                "check ca_file (the broker's CA), the broker's certificate name, and the device clock",
            )
        except OSError as exc:
            return Check("broker mqtt", "fail", f"connect to {address} failed: {exc}", "check the broker URL")
        client.loop_start()
        try:
            answered = done.wait(timeout)
        finally:
            with contextlib.suppress(Exception):
                client.disconnect()
            client.loop_stop()
        label = "5" if version == mqtt.MQTTv5 else "3.1.1"
        if not answered:
            last = f"no CONNACK to MQTT {label} within {timeout:.0f}s"
            continue
        code = result["code"]
        if not code.is_failure:
            who = f" as {username}" if username else " anonymously"
            return Check("broker mqtt", "ok", f"{address} accepted MQTT {label}{who}")
        last = f"{address} refused MQTT {label}: {code}"
        text = str(code).lower()
        if "protocol" in text and version != versions[-1]:
            continue
        if "authori" in text or "password" in text or "user name" in text:
            return Check("broker mqtt", "fail", last, "check username and password (or the broker's ACL for this id)")
        break
    return Check("broker mqtt", "fail", last, "check the broker's logs; set mqtt_protocol if it speaks only one")


def running_agent(cfg: AgentConfig, timeout: float) -> dict[str, Any] | None:
    """What the agent answering on this config's API says about itself ({} for one that does not say), or None when
    no agent answers there."""
    import urllib.error
    import urllib.request

    host = "127.0.0.1" if cfg.api_host in ("0.0.0.0", "::", "[::]") else cfg.api_host
    request = urllib.request.Request(f"http://{host}:{cfg.api_port}/agent/status")
    with contextlib.suppress(ConfigError):
        token = cfg.api_token()
        if token:
            request.add_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    try:
        with opener.open(request, timeout=timeout) as response:
            status = json.loads(response.read())
    except urllib.error.HTTPError as exc:  # an agent that does not say (an older one, or the token refused)
        return {} if (exc.headers.get("Server") or "").startswith("edge-agent") else None
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def check_running_agent(cfg: AgentConfig, status: dict[str, Any] | None) -> Check | None:
    """The broker check of a live device, from its running agent's `status` (running_agent): connecting as the
    device beside it would take its session (Mosquitto's use_username_as_clientid gives every client of the device's
    user the device's id). None when no agent of this device runs (the doctor then connects itself)."""
    if status is None or (status and status.get("device_id") != cfg.device_id):
        return None
    beside = f"not connecting as {cfg.device_id} beside it, which would take its broker session"
    if not status:
        return Check(
            "broker mqtt", "skip", f"an agent runs with API {cfg.api}; {beside}",
            "journalctl -u edge-agent shows its broker connection",
        )  # fmt: skip
    who = f"the running agent (pid {status.get('pid')})"
    if status.get("connected"):
        return Check("broker mqtt", "ok", f"{who} is connected to {status.get('broker')} as {cfg.device_id}; {beside}")
    error = status.get("last_error") or "not connected yet"
    refused = "refused the connection" in error
    fix = (
        "check username and password_file in the config (or --broker-password-file), then restart the agent"
        if refused
        else "check the broker URL, that the broker runs, and the network between; journalctl -u edge-agent"
    )
    return Check("broker mqtt", "fail", f"{who} cannot use the broker: {error}", fix)


def check_spare(status: dict[str, Any] | None) -> Check | None:
    """Whether the running agent keeps a spare trial worker and why (its memory budget decides, or the config)."""
    spare = (status or {}).get("trial_spare")
    if not isinstance(spare, dict):
        return None
    reason = str(spare.get("reason"))
    if spare.get("kept") and not spare.get("enabled"):
        return Check("trial spare", "warn", f"{reason}; stopped since: it grew over its cap "
                     f"({spare.get('last_mib')} MiB)", "raise trial_spare_max_mb, or set it to 0")  # fmt: skip
    return Check("trial spare", "ok", reason)


def check_data_dir(data_dir: Path) -> list[Check]:
    existing = data_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if data_dir.exists():
            with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".doctor-"):
                pass
            writable = Check("data dir", "ok", f"{data_dir} is writable")
        elif os.access(existing, os.W_OK | os.X_OK):
            writable = Check("data dir", "ok", f"{data_dir} does not exist yet; {existing} lets the agent create it")
        else:
            raise PermissionError(f"{data_dir} does not exist and {existing} is not writable")
    except OSError as exc:
        writable = Check(
            "data dir",
            "fail",
            f"{data_dir} is not writable: {exc}",
            "run as the service user; the unit's StateDirectory= creates it (or: chown edge-agent DIR)",
        )
    free = shutil.disk_usage(existing).free
    shown = f"{free / (1 << 30):.1f} GiB free on {existing}"
    if free < MIN_FREE_BYTES:
        space = Check("free space", "fail", shown, "free disk space, or lower keep_versions to keep fewer versions")
    elif free < WARN_FREE_BYTES:
        space = Check("free space", "warn", shown, "models need room for two versions each; consider freeing space")
    else:
        space = Check("free space", "ok", shown)
    return [writable, space]


# Imports the runtime and asks it what it sees, in a child process: a runtime that dies natively (a wheel built for
# another CPU, a broken driver, qemu without an Arm cpuinfo) kills only the child, and the doctor names the signal.
CHILD = """
import contextlib, importlib, importlib.metadata, json, sys
name, dists = sys.argv[1], sys.argv[2:]
module = importlib.import_module(name)
version = getattr(module, "__version__", "unknown version")
for dist in dists:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        version = importlib.metadata.version(dist)
        break
seen = ""
if name == "onnxruntime":
    seen = ", ".join(module.get_available_providers())
elif name == "openvino":
    seen = ", ".join(module.Core().available_devices)
elif name in ("ai_edge_litert", "tflite_runtime"):
    importlib.import_module(name + ".interpreter").Interpreter
print(json.dumps({"version": version, "seen": seen}))
"""
CHILD_TIMEOUT_S = 120.0


def check_runtime(name: str, dists: tuple[str, ...], extra: str) -> Check:
    """Import one runtime in a child process: ok with its version, skip when absent, fail naming a crash's signal."""
    if importlib.util.find_spec(name) is None:
        return Check(
            f"runtime {name}", "skip", "not installed", f"pip install 'edgefleet[{extra}]' if this device should use it"
        )
    try:
        child = subprocess.run(
            [sys.executable, "-c", CHILD, name, *dists], capture_output=True, text=True, timeout=CHILD_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return Check(
            f"runtime {name}", "fail", f"import hung for {CHILD_TIMEOUT_S:.0f}s", f"reinstall edgefleet[{extra}]"
        )
    if child.returncode < 0:
        sig = signal.Signals(-child.returncode).name
        return Check(
            f"runtime {name}", "fail", f"crashes this device's Python with {sig} when imported",
            f"the agent will not use it; reinstall a wheel built for this CPU/OS, or uninstall it (edgefleet[{extra}])",
        )  # fmt: skip
    if child.returncode != 0:
        last = (child.stderr.strip().splitlines() or ["no output"])[-1]
        return Check(
            f"runtime {name}", "fail", f"installed but does not import: {last}", f"reinstall edgefleet[{extra}]"
        )
    found = json.loads(child.stdout.strip().splitlines()[-1])
    seen = f" ({found['seen']})" if found["seen"] else ""
    return Check(f"runtime {name}", "ok", f"{name} {found['version']}{seen}")


def check_runtimes() -> list[Check]:
    checks = [check_runtime(name, dists, extra) for name, (dists, extra) in RUNTIMES.items()]
    if not any(c.outcome == "ok" for c in checks):
        checks.append(
            Check("runtimes", "fail", "no inference runtime imports", "pip install 'edgefleet[agent]' (ONNX Runtime)")
        )
    return checks


def check_clock(now: dt.datetime | None = None) -> Check:
    now = now or dt.datetime.now(dt.timezone.utc)
    if now.year < MIN_YEAR:
        return Check(
            "clock",
            "fail",
            f"the clock says {now:%Y-%m-%d %H:%M} UTC",
            "enable time sync (timedatectl set-ntp true); TLS certificates fail with a wrong clock",
        )
    return Check("clock", "ok", f"{now:%Y-%m-%d %H:%M} UTC")


def run_checks(
    path: Path | None,
    environ: Mapping[str, str] | None = None,
    timeout: float = 5.0,
    overrides: dict[str, Any] | None = None,
) -> list[Check]:
    config_check, cfg = check_config(path, environ, overrides)
    checks = [config_check]
    if cfg is None:
        checks.append(Check("broker", "skip", "config invalid"))
    else:
        address = cfg.broker_address()
        tcp = check_tcp(address, timeout)
        checks.append(tcp)
        status = running_agent(cfg, timeout)
        running = check_running_agent(cfg, status)
        if running is not None:
            checks.append(running)
            checks.extend(c for c in [check_spare(status)] if c is not None)
        elif tcp.outcome == "ok":
            checks.append(check_mqtt(cfg, address, timeout))
        else:
            checks.append(Check("broker mqtt", "skip", "broker not reachable over TCP"))
        checks.extend(check_data_dir(Path(cfg.data_dir)))
    checks.extend(check_runtimes())
    checks.append(check_clock())
    return checks


def failed(checks: list[Check]) -> bool:
    return any(c.outcome == "fail" for c in checks)


MARKS = {"ok": "[ ok ]", "warn": "[warn]", "fail": "[FAIL]", "skip": "[ -- ]"}


def render(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        lines.append(f"{MARKS[c.outcome]} {c.name}: {c.detail}")
        if c.fix and c.outcome in ("fail", "warn"):
            lines.append(f"       fix: {c.fix}")
    bad = sum(c.outcome == "fail" for c in checks)
    lines.append(f"{bad} check(s) failed" if bad else "all checks passed")
    return "\n".join(lines)


def as_dicts(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]
