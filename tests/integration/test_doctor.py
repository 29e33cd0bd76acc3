"""`edge-agent doctor` against the real broker fixture and a dead port."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import free_port


def doctor(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "doctor", *args], capture_output=True, text=True, env=env, timeout=60
    )


def config(tmp_path, broker_url: str, extra: str = "") -> str:
    path = tmp_path / "agent.toml"
    path.write_text(f'broker = "{broker_url}"\ndata_dir = "{tmp_path / "data"}"\n{extra}')
    return str(path)


def by_name(result: subprocess.CompletedProcess) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(result.stdout)["checks"]}


def test_healthy_device_passes_every_check(broker, tmp_path):
    result = doctor("--config", config(tmp_path, broker.url), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    checks = by_name(result)
    assert json.loads(result.stdout)["ok"] is True
    assert {checks[n]["outcome"] for n in ("config", "broker tcp", "broker mqtt", "data dir", "clock")} == {"ok"}
    assert "accepted MQTT" in checks["broker mqtt"]["detail"]
    assert checks["runtime onnxruntime"]["outcome"] == "ok" and checks["runtime onnxruntime"]["detail"][12:]

    text = doctor("--config", config(tmp_path, broker.url))
    assert text.returncode == 0 and "[ ok ] broker mqtt:" in text.stdout and "all checks passed" in text.stdout


def test_dead_broker_fails_with_a_fix(tmp_path):
    result = doctor("--config", config(tmp_path, f"mqtt://127.0.0.1:{free_port()}"))
    assert result.returncode == 1
    assert "[FAIL] broker tcp: cannot connect to 127.0.0.1:" in result.stdout
    assert "fix: check the broker URL" in result.stdout
    assert "[ -- ] broker mqtt: broker not reachable over TCP" in result.stdout
    assert "1 check(s) failed" in result.stdout


def test_invalid_config_fails(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text("keep_versions = 0\n")
    result = doctor("--config", str(path), "--json")
    assert result.returncode == 1
    checks = by_name(result)
    assert checks["config"]["outcome"] == "fail" and "keep_versions = 0" in checks["config"]["detail"]


def test_tls_to_a_plain_broker_fails(broker, tmp_path):
    result = doctor("--config", config(tmp_path, f"mqtts://127.0.0.1:{broker.port}"), "--json", "--timeout", "3")
    assert result.returncode == 1
    checks = by_name(result)
    assert checks["broker tcp"]["outcome"] == "ok" and checks["broker mqtt"]["outcome"] == "fail"


def test_a_runtime_that_crashes_on_import_is_named_with_its_signal(broker, tmp_path):
    """Each runtime is imported in a child process: one that dies natively (as ONNX Runtime 1.28 does under qemu
    without an Arm cpuinfo) fails its own check with the signal, and the doctor itself finishes."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import ctypes, importlib.abc, importlib.machinery, sys\n"
        "class NativeCrash(importlib.abc.Loader):\n"
        "    def create_module(self, spec):\n"
        "        return None\n"
        "    def exec_module(self, module):\n"
        "        ctypes.string_at(0)  # a native crash while the runtime's library loads\n"
        "class Finder(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        return importlib.machinery.ModuleSpec(name, NativeCrash()) if name == 'openvino' else None\n"
        "sys.meta_path.insert(0, Finder())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")} | {"PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "doctor", "--config", config(tmp_path, broker.url), "--json"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    checks = by_name(result)
    assert checks["runtime openvino"]["outcome"] == "fail"
    assert checks["runtime openvino"]["detail"] == "crashes this device's Python with SIGSEGV when imported"
    assert checks["runtime onnxruntime"]["outcome"] == "ok"
