"""The arm64 job's host side (.ci/arm64_job.sh): a broker and a controller here, an agent inside the arm64 userland
(qemu-user), an ONNX and a TFLite model pushed with edgectl, and the device's answers compared with this host's.

Why: the agent must serve on Arm boards as installed from the registry, not only on the x86 machines it is built on.
`--case crash` runs the same pushes where the runtimes read the host's /proc/cpuinfo and records what happens to the
agent (issue 14: ONNX Runtime dies with SIGSEGV under the emulator); `--assert-survives` fails unless the agent
stays up, the ONNX push fails naming the signal, and `edge-agent doctor` names the crash."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from edgectl import sample_models
from edgectl.client import ControllerClient

DEVICE = "arm64-ci"
AGENT_DIR = "/var/lib/edgefleet-ci"  # inside the userland


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float, what: str, poll: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def start_broker(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=(work / "mosquitto.log").open("wb"))
    wait_for(lambda: _port_open(port) or proc.poll() is not None, 10, "mosquitto to listen", 0.05)
    if proc.poll() is not None:
        raise RuntimeError(f"mosquitto exited: {(work / 'mosquitto.log').read_text()}")
    return proc, port


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Agent:
    """The agent as a process in the userland: chroot, a clean environment, the venv's `edge-agent`."""

    def __init__(self, root: Path, venv: str, broker_port: int, prefix: str, log: Path) -> None:
        self.root, self.log, self.api_port = root, log, free_port()
        data = root / AGENT_DIR.lstrip("/")
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        (data / "agent.toml").write_text(f'topic_prefix = "{prefix}"\n')
        self.prefix = [
            "chroot", str(root), "/usr/bin/env", "-i", "HOME=/root", "LANG=C.UTF-8", "PYTHONUNBUFFERED=1",
            "PATH=/usr/local/bin:/usr/bin:/bin", f"{venv}/bin/edge-agent",
        ]  # fmt: skip
        self.broker = f"mqtt://127.0.0.1:{broker_port}"
        self.cmd = [
            *self.prefix, "run", "--config", f"{AGENT_DIR}/agent.toml", "--broker", self.broker, "--device-id", DEVICE,
            "--data-dir", f"{AGENT_DIR}/data", "--api", f"127.0.0.1:{self.api_port}",
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Agent:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def exit_status(self) -> str | None:
        """None while running, else "exit N" or the signal's name."""
        if self.proc is None or self.proc.poll() is None:
            return None
        code = self.proc.returncode
        return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def infer(self, model: str, x: np.ndarray) -> np.ndarray:
        meta = httpx.get(f"http://127.0.0.1:{self.api_port}/v2/models/{model}", timeout=30).json()
        body = {"inputs": [{"name": meta["inputs"][0]["name"], "shape": list(x.shape), "datatype": "FP32",
                            "data": x.ravel().tolist()}]}  # fmt: skip
        r = httpx.post(f"http://127.0.0.1:{self.api_port}/v2/models/{model}/infer", json=body, timeout=60)
        r.raise_for_status()
        out = r.json()["outputs"][0]
        return np.asarray(out["data"], np.float32).reshape(out["shape"])

    def doctor(self) -> dict[str, Any]:
        """`edge-agent doctor --json` in the userland: the runtime checks (each imported in a child process)."""
        command = [*self.prefix[:-1], f"EDGE_AGENT_BROKER={self.broker}", self.prefix[-1], "doctor", "--json"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        try:
            checks = json.loads(done.stdout)["checks"]
        except (ValueError, KeyError):
            return {"exit": done.returncode, "output": (done.stdout + done.stderr)[-300:]}
        runtimes = {c["name"]: f"{c['outcome']}: {c['detail']}" for c in checks if c["name"].startswith("runtime ")}
        return {"exit": done.returncode, **runtimes}

    def tail(self, lines: int = 25) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def edgectl(url: str, *args: str, timeout: float) -> tuple[int, str, float]:
    t0 = time.monotonic()
    env = {**os.environ, "EDGECTL_CONTROLLER": url, "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "edgectl.cli", *args], capture_output=True, text=True, env=env, timeout=timeout + 60
    )
    return done.returncode, (done.stdout + done.stderr).strip(), time.monotonic() - t0


def host_answers(onnx_path: Path, tflite_path: Path, x_mlp: np.ndarray, x_conv: np.ndarray) -> dict[str, np.ndarray]:
    """The same models on this host's runtimes: the answers the device must give."""
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    want = {"mlp": ort.InferenceSession(str(onnx_path)).run(None, {"x": x_mlp})[0]}
    interp = Interpreter(model_path=str(tflite_path))
    (inp,) = interp.get_input_details()
    interp.resize_tensor_input(inp["index"], list(x_conv.shape))
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], x_conv)
    interp.invoke()
    want["conv-tflite"] = interp.get_tensor(interp.get_output_details()[0]["index"]).copy()
    return want


def device_entry(client: ControllerClient, model: str) -> dict[str, Any]:
    for entry in client.device(DEVICE).get("models", []):
        if entry["name"] == model:
            return dict(entry)
    return {}


def run_serve(args: argparse.Namespace, url: str, client: ControllerClient, agent: Agent, work: Path) -> dict:
    """Both models pushed and served; the device's answers against the host's."""
    report: dict[str, Any] = {}
    onnx_path = sample_models.mlp(work / "mlp.onnx")
    tflite_path = sample_models.tflite_conv_net(work / "conv.tflite")
    rng = np.random.default_rng(7)
    x = {"mlp": rng.standard_normal((2, 16)).astype(np.float32),
         "conv-tflite": rng.standard_normal((1, 32, 32, 3)).astype(np.float32)}  # fmt: skip
    want = host_answers(onnx_path, tflite_path, x["mlp"], x["conv-tflite"])
    hardware = client.device(DEVICE).get("hardware") or {}
    report["hardware"] = {k: hardware.get(k) for k in ("arch", "cpu_model", "board", "raspberry_pi", "runtimes")}
    failures = []
    for path, name in ((onnx_path, "mlp"), (tflite_path, "conv-tflite")):
        rc, out, took = edgectl(url, "push", str(path), "-n", name, "--to", DEVICE, "--wait", "--timeout",
                                str(args.push_timeout), timeout=args.push_timeout)  # fmt: skip
        entry = device_entry(client, name)
        item: dict[str, Any] = {"push_rc": rc, "push_s": round(took, 1), "state": entry.get("state"),
                                "backend": (entry.get("selection") or {}).get("backend")}  # fmt: skip
        if rc != 0:
            item["push_output"] = out[-600:]
            failures.append(f"push {name} exited {rc}: {out[-300:]}")
        else:
            t0 = time.monotonic()
            got = agent.infer(name, x[name])
            item["infer_s"] = round(time.monotonic() - t0, 2)
            item["max_abs_diff"] = float(np.max(np.abs(got - want[name])))
            item["bitwise_equal"] = bool(np.array_equal(got, want[name]))
            if got.shape != want[name].shape or not np.allclose(got, want[name], rtol=1e-4, atol=1e-5):
                diff = item["max_abs_diff"]
                failures.append(f"{name}: the device's answers differ from the host's (max |diff| {diff:.3g})")
        report[name] = item
    if hardware.get("arch") != "aarch64":
        failures.append(f"the device reports arch {hardware.get('arch')!r}, not aarch64")
    report["failures"] = failures
    return report


def run_crash(args: argparse.Namespace, url: str, client: ControllerClient, agent: Agent, work: Path) -> dict:
    """The runtimes read the host's cpuinfo: what happens to the agent, each push, and a restart (as systemd would)."""
    report: dict[str, Any] = {"doctor": agent.doctor()}
    failures = []
    paths = (sample_models.mlp(work / "mlp.onnx"), sample_models.tflite_conv_net(work / "conv.tflite"))
    for path, name in zip(paths, ("mlp", "conv-tflite"), strict=True):
        rc, out, took = edgectl(url, "push", str(path), "-n", name, "--to", DEVICE, "--wait", "--timeout",
                                str(args.push_timeout), timeout=args.push_timeout)  # fmt: skip
        entry = device_entry(client, name)
        item: dict[str, Any] = {
            "push_rc": rc, "push_s": round(took, 1), "state": entry.get("state"), "reason": entry.get("reason"),
            "agent_after_push": agent.exit_status() or "running",
        }  # fmt: skip
        if agent.exit_status() is not None:  # restarted as systemd would: does it crash again (a crash loop)?
            item["push_output"] = out[-400:]
            agent.start()
            time.sleep(args.restart_watch)
            item["agent_after_restart"] = agent.exit_status() or f"running after {args.restart_watch:.0f} s"
            item["state_after_restart"] = device_entry(client, name).get("state")
        report[name] = item
        if args.assert_survives:
            restarted = str(item.get("agent_after_restart", "running"))
            if item["agent_after_push"] != "running" or "running" not in restarted:
                failures.append(f"{name}: the agent did not survive the runtime's crash: {item['agent_after_push']}")
            if name == "mlp" and (rc == 0 or entry.get("state") != "failed" or "SIG" not in str(entry.get("reason"))):
                failures.append(f"{name}: the push should fail naming the signal, got rc {rc}, {entry.get('reason')}")
    if args.assert_survives and "crash" not in str(report["doctor"].get("runtime onnxruntime")):
        failures.append(f"edge-agent doctor does not name onnxruntime's crash: {report['doctor']}")
    report["agent_log_tail"] = agent.tail(15)
    report["failures"] = failures
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="the arm64 userland (entered with chroot)")
    parser.add_argument("--venv", default="/opt/edgefleet-venv", help="the agent's venv inside the userland")
    parser.add_argument("--case", choices=("serve", "crash"), default="serve")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--online-timeout", type=float, default=300)
    parser.add_argument("--push-timeout", type=float, default=600)
    parser.add_argument("--restart-watch", type=float, default=60)
    parser.add_argument("--assert-survives", action="store_true")
    args = parser.parse_args()
    from controller.service import BackgroundController, ControllerSettings

    shutil.rmtree(args.work, ignore_errors=True)  # a fresh controller: nothing registered by an earlier run
    args.work.mkdir(parents=True)
    broker, port = start_broker(args.work)
    prefix = f"ci{os.getpid()}"
    settings = ControllerSettings(
        data_dir=args.work / "controller", broker=f"mqtt://127.0.0.1:{port}", http=f"127.0.0.1:{free_port()}",
        topic_prefix=prefix,
    )  # fmt: skip
    bg = BackgroundController(settings)
    client = ControllerClient(bg.url)
    agent = Agent(args.root, args.venv, port, prefix, args.work / f"agent-{args.case}.log").start()
    report: dict[str, Any] = {"case": args.case}
    try:
        t0 = time.monotonic()

        def online() -> bool:
            if agent.exit_status() is not None:
                raise RuntimeError(f"the agent exited before coming online ({agent.exit_status()}):\n{agent.tail()}")
            try:
                return bool(client.device(DEVICE)["online"])
            except Exception:
                return False

        wait_for(online, args.online_timeout, f"{DEVICE} to come online")
        report["online_s"] = round(time.monotonic() - t0, 1)
        case = run_serve if args.case == "serve" else run_crash
        report.update(case(args, bg.url, client, agent, args.work))
    except Exception as exc:  # the report says what failed; the job fails on it
        report["failures"] = [*report.get("failures", []), f"{type(exc).__name__}: {exc}"]
        report["agent_log_tail"] = agent.tail()
    finally:
        agent.stop()
        bg.stop()
        broker.terminate()
    args.report.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
