"""Issue 26, finding 10: every agent kept 32 real request inputs per model by default, with no consent on the device,
and `edgectl capture` wrote them world-readable. Real agents and the real CLI."""

from __future__ import annotations

import json
import stat

from conftest import wait_model_state
from test_capture import send, sensor_frames
from test_e2e import edgectl

from edgectl.sample_models import mlp


def deploy(controller, model_dir, device: str, seed: int) -> None:
    record = controller.client.upload_model(mlp(model_dir / f"tc{seed}.onnx", seed=seed), "m", None)
    controller.client.deploy("m", record["version"], [device])
    wait_model_state(controller, device, "m", record["sha256"], {"serving"})


def test_capture_is_opt_in_on_the_device_and_its_file_is_private(controller, start_agent, model_dir, tmp_path):
    plain = start_agent("plain", wait_online=controller)  # its owner said nothing about capture
    deploy(controller, model_dir, "plain", 74)
    for x in sensor_frames(8):
        send(plain, x)
    out = tmp_path / "plain.npz"
    refused = edgectl(controller.url, "capture", "plain", "--model", "m", "--out", str(out))
    print(f"capture from an agent with the default configuration: {refused.returncode} {refused.stderr.strip()}")
    assert refused.returncode == 1 and "opt-in" in refused.stderr and "capture_inputs" in refused.stderr
    assert not out.exists()

    agreed = start_agent("agreed", config="capture_inputs = 4\n", wait_online=controller)
    deploy(controller, model_dir, "agreed", 75)
    for x in sensor_frames(8):
        send(agreed, x)
    out = tmp_path / "agreed.npz"
    out.write_bytes(b"old")
    out.chmod(0o644)  # a world-readable file in the way is made private too
    done = edgectl(controller.url, "capture", "agreed", "--model", "m", "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["count"] == 4
    mode = stat.S_IMODE(out.stat().st_mode)
    print(f"capture file mode {oct(mode)}")
    assert mode == 0o600
