"""Part 2 of bench/converters.py: push each model with its variants to a real agent (controller in this process,
embedded broker, `edge-agent run` as a child process) and check that the variant it ends up serving is the fastest
of the variants that pass, by timing every one of them again here, on the backend the agent picked for it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from e2e import free_port  # bench/e2e.py, beside this file
from rich.table import Table

TOLERANCE = 0.10  # the served variant's p50 may be this much above the fastest passing one (timing noise)
ROUNDS, ROUND_S = 10, 0.2  # the independent check: rounds of timing per variant, seconds each
SERVED_COLUMNS = (
    "model", "variant", "backend", "agent p50 ms", "agent x orig", "re-timed p50 ms", "re-timed x orig", "served",
    "result",
)  # fmt: skip


@contextmanager
def fleet(work: Path) -> Iterator[tuple[Any, Any, str]]:
    """(controller client, in-process controller, device id) with one real agent online."""
    from controller.service import BackgroundController, ControllerSettings
    from edgectl.client import ControllerClient

    port = free_port()
    settings = ControllerSettings(
        data_dir=work / "controller", broker=f"embedded:{port}", http=f"127.0.0.1:{free_port()}"
    )
    bg = BackgroundController(settings)
    log = open(work / "agent.log", "wb")  # noqa: SIM115 - closed below
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--broker", f"mqtt://127.0.0.1:{port}", "--device-id", "bench",
         "--data-dir", str(work / "agent"), "--api", f"127.0.0.1:{free_port()}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    client = ControllerClient(bg.url)
    try:
        deadline = time.monotonic() + 30
        while not _online(client, "bench"):
            if time.monotonic() > deadline or agent.poll() is not None:
                raise RuntimeError(f"the agent did not come online; see {work / 'agent.log'}")
            time.sleep(0.1)
        yield client, bg.controller, "bench"
    finally:
        os.killpg(agent.pid, signal.SIGTERM)
        agent.wait(20)
        log.close()
        bg.stop()


def _online(client, device_id: str) -> bool:
    try:
        return bool(client.device(device_id).get("online"))
    except Exception:
        return False


def retime(files: dict[str, tuple[Path, str, str]], hardware: dict[str, Any]) -> dict[str, float | None]:
    """p50 of each artifact {variant: (path, format, backend label)} on the candidate the agent picked for it, all
    loaded at once and timed round-robin (ROUNDS rounds of ROUND_S each, best round kept): drifting load on the box
    then hits every variant alike, as it does in the agent's own turn-about comparison."""
    from targets.inputs import synthesize
    from targets.selection import candidates, load_candidate
    from targets.timing import best_block_ms, turn_about

    loaded = {}
    for variant, (path, model_format, label) in files.items():
        found = {c.name: c for c in candidates(model_format, hardware)}
        if label in found:
            backend = load_candidate(found[label], path, model_format)
            loaded[variant] = (backend, synthesize(backend.inputs, 1, batch=1))
    best: dict[str, float | None] = {variant: None for variant in files}
    try:
        calls = [lambda b=backend, x=inputs: b.infer(x) for backend, inputs in loaded.values()]
        for call in calls:  # warm-up: lazy first-run costs are not the model's speed
            for _ in range(5):
                call()
        rounds = turn_about(calls, rounds=ROUNDS, block_s=ROUND_S, min_runs=5)
        best |= {variant: best_block_ms(times, 50) for variant, times in zip(loaded, rounds, strict=True)}
    finally:
        for backend, _ in loaded.values():
            backend.close()
    return best


def serve_one(client, controller, device: str, name: str, model: Path, calib: Path, variants: list[str]) -> dict:
    """Upload, build the variants on the controller, deploy the passing ones, and read what the agent chose."""
    from edgectl.watch import model_entry

    record = client.upload_model(model, name, None)
    client.upload_calibration(name, record["version"], calib)
    built = client.optimize(name, record["version"], variants, [device])["variants"]
    passing = [v for v in built if v["passed"]]
    client.deploy(name, record["version"], [device], variants=[v["variant"] for v in passing])
    deadline = time.monotonic() + 300
    while True:
        entry = model_entry(client.device(device), name, record["sha256"])
        if entry and entry["state"] in ("serving", "failed"):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not serve within 300 s")
        time.sleep(0.2)
    if entry["state"] == "failed":
        raise RuntimeError(f"{name} failed on the agent: {entry['reason']}")
    files = {"original": (record["sha256"], record["format"])} | {
        v["variant"]: (v["sha256"], v["format"]) for v in passing
    }
    return {"entry": entry, "files": files, "built": built}


def check_served(models: list[tuple[str, Path, Path, Path]], variants: dict[str, list[str]], work: Path) -> list[dict]:
    """Per model (with the variants to build for it): what the agent measured, what it served, and the independent
    timing of each passing variant."""
    from targets.probe import probe

    hardware = probe()
    rows = []
    with fleet(work) as (client, controller, device):
        for name, model, calib, _valid in models:
            got = serve_one(client, controller, device, name, model, calib, variants[name])
            entry = got["entry"]
            served = (entry.get("serving") or {}).get("variant") or "original"
            measured = (entry.get("selection") or {}).get("variants") or []
            usable = [m for m in measured if not m.get("error") and m["variant"] in got["files"]]
            files = {}
            for m in usable:
                sha, fmt = got["files"][m["variant"]]
                files[m["variant"]] = (controller.artifacts.path(sha), fmt, m["backend"])
            retimed_all = retime(files, hardware)
            timings = {
                m["variant"]: {
                    "backend": m["backend"],
                    "agent_p50_ms": m["p50_ms"],
                    "retimed_p50_ms": retimed_all.get(m["variant"]),
                }
                for m in usable
            }
            retimed = {k: v["retimed_p50_ms"] for k, v in timings.items() if v["retimed_p50_ms"] is not None}
            fastest = min(retimed, key=retimed.get) if retimed else None
            ok = bool(retimed) and served in retimed and retimed[served] <= (1 + TOLERANCE) * retimed[fastest]
            rows.append({"model": name, "served": served, "fastest": fastest, "ok": ok, "variants": timings,
                         "passed_over": [m for m in measured if m.get("error")], "agent_choice": measured,
                         "reason": (entry.get("selection") or {}).get("reason"),
                         "trial_s": (entry.get("selection") or {}).get("variants_trial_s")})  # fmt: skip
    return rows


def served_table(rows: list[dict]) -> Table:
    table = Table(
        title=f"What the device serves: fastest passing variant, re-timed here (within {TOLERANCE:.0%})",
        caption="x orig: p50 over the original's, timed in the same rounds. This box's speed drifts by up to "
        "1.6x from one second to the next, so only ratios from one run compare, not the two p50 columns.",
    )
    for col in SERVED_COLUMNS:
        table.add_column(col, justify="left" if col in ("model", "variant", "backend") else "right")
    for row in rows:
        agent_ratio, retimed_ratio = _vs_original(row, "agent_p50_ms"), _vs_original(row, "retimed_p50_ms")
        for i, (variant, t) in enumerate(
            sorted(row["variants"].items(), key=lambda kv: kv[1]["retimed_p50_ms"] or 1e9)
        ):
            mark = "served" if variant == row["served"] else ("fastest" if variant == row["fastest"] else "")
            result = ("PASS" if row["ok"] else "FAIL") if i == 0 else ""
            retimed = t["retimed_p50_ms"]
            table.add_row(
                _model_cell(row) if i == 0 else "", variant, t["backend"], f"{t['agent_p50_ms']:.3f}",
                _ratio(agent_ratio.get(variant)), "-" if retimed is None else f"{retimed:.3f}",
                _ratio(retimed_ratio.get(variant)), mark, result,
            )  # fmt: skip
        for m in row["passed_over"]:
            table.add_row("", m["variant"], "", "", "", "", "", f"passed over: {m['error'][:60]}", "")
        table.add_section()
    return table


def _vs_original(row: dict, key: str) -> dict[str, float]:
    """Each variant's p50 over the original's, both from the same measurement (the agent's, or the re-timing)."""
    base = row["variants"].get("original", {}).get(key)
    return {v: t[key] / base for v, t in row["variants"].items() if base and t.get(key) is not None}


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _model_cell(row: dict) -> str:
    return row["model"] if row.get("trial_s") is None else f"{row['model']}\n(agent trial {row['trial_s']} s)"
