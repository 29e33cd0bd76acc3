"""Fast restart: the API opens before the models load, and a model whose cached backend choice was made on other
hardware or runtimes serves at once on that choice while its trial runs again in the background."""

from __future__ import annotations

import json

from conftest import model_state, wait_model_state, wait_until

from edgectl.sample_models import mlp
from targets.selection import CACHE_FILE, _inputs_file

OTHER_FINGERPRINT = "0" * 16


def pretend_other_hardware(cache_dir) -> int:
    """Re-key every cached choice as if made under another hardware/runtime fingerprint (a runtime added since)."""
    path = cache_dir / CACHE_FILE
    entries = json.loads(path.read_text())
    moved = {}
    for key, entry in entries.items():
        version, sha256, fmt, rest = key.split("/", 3)
        _, _, extra = rest.partition("/")
        other = f"{version}/{sha256}/{fmt}/{OTHER_FINGERPRINT}/{extra}"
        if _inputs_file(cache_dir, key).exists():
            _inputs_file(cache_dir, key).rename(_inputs_file(cache_dir, other))
        moved[other] = entry
    path.write_text(json.dumps(moved))
    return len(moved)


def test_a_restart_on_changed_runtimes_serves_at_once_and_tries_again_behind(controller, start_agent, model_dir):
    agent = start_agent("dev1", wait_online=controller)
    records = []
    for i in range(3):
        record = controller.client.upload_model(mlp(model_dir / f"fr{i}.onnx", seed=100 + i), f"m{i}", None)
        controller.client.deploy(f"m{i}", record["version"], ["dev1"])
        records.append(record)
    for i, record in enumerate(records):
        wait_model_state(controller, "dev1", f"m{i}", record["sha256"], {"serving"}, timeout=60)
    agent.stop()
    assert pretend_other_hardware(agent.data_dir / "selection") == 3

    agent.log.write_text("")
    agent.start()
    wait_until(lambda: all(agent.metadata(f"m{i}") for i in range(3)), 30, "every model served from disk")
    log = agent.log.read_text()
    assert log.index("inference API serving") < log.index("serving m0 1 from disk")  # the API did not wait
    assert "backend trial" not in log[: log.index("serving m2 1 from disk")]

    def retried(i: int):
        entry = model_state(controller, "dev1", f"m{i}")
        return entry and (entry.get("selection") or {}).get("retrial") and entry

    for i in range(3):
        entry = wait_until(lambda i=i: retried(i), 90, f"m{i} tried again on this hardware")
        assert "chosen before the hardware or runtimes changed" in entry["selection"]["reason"] or entry["selection"][
            "retrial"
        ].startswith("switched")
        assert entry["selection"]["retrial"].startswith(("kept", "switched to")), entry["selection"]
    cache = json.loads((agent.data_dir / "selection" / CACHE_FILE).read_text())
    assert sum(OTHER_FINGERPRINT not in key for key in cache) == 3  # the new trials are cached for the next start
