"""ONNX Runtime's CPU arena chosen per model in the trial (issue 27, point 5): the rule, and a real isolated trial on
a model with a large transient tensor (the arena keeps ~30 MiB of it that off gives back at every run's end): the
serving load runs with the setting chosen, its prediction is that setting's figure, and the status has both."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from agent.deploy.loader import arena_of
from protocol.status import Memory
from targets import trial_arena
from targets.candidates import candidates
from targets.footprint import MIB, Meter, rss_bytes
from targets.probe import probe
from targets.selection import _selection
from targets.trial_arena import SAVE_MIB, pick
from targets.trial_worker import run_isolated


def transient(path, rows=4096, width=1024):
    """x[1, width] tiled to [rows, width] (16 MiB), times a [width, width] weight, summed back to [1, width]."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array([rows, 1], np.int64), "reps"),
        numpy_helper.from_array(np.array([0], np.int64), "axes"),
        numpy_helper.from_array((rng.standard_normal((width, width)) / 32).astype(np.float32), "w"),
    ]
    nodes = [
        helper.make_node("Tile", ["x", "reps"], ["t"]), helper.make_node("MatMul", ["t", "w"], ["m"]),
        helper.make_node("Relu", ["m"], ["r"]), helper.make_node("ReduceSum", ["r", "axes"], ["y"], keepdims=1),
    ]  # fmt: skip
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])
    model = helper.make_model(
        helper.make_graph(nodes, "transient", [x], [y], inits), opset_imports=[helper.make_opsetid("", 13)]
    )
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_the_rule_turns_the_arena_off_only_for_a_real_saving_at_little_cost():
    on = {"rss_mb": 42.8, "peak_mb": 42.8, "p50_ms": 150.0}
    assert pick(on, {"rss_mb": 10.8, "peak_mb": 42.4, "p50_ms": 160.0})[0] is False  # 32 MiB saved, x1.07
    assert pick(on, {"rss_mb": 10.8, "peak_mb": 42.4, "p50_ms": 170.0})[0] is True  # x1.13: too slow
    assert pick(on, {"rss_mb": 10.8, "peak_mb": 42.4})[0] is True  # not timed
    cpu_on = on | {"cpu_ms": 100.0}
    assert pick(cpu_on, {"rss_mb": 10.8, "peak_mb": 42.4, "p50_ms": 150.0, "cpu_ms": 108.0})[0] is False
    assert pick(cpu_on, {"rss_mb": 10.8, "peak_mb": 42.4, "p50_ms": 150.0, "cpu_ms": 125.0})[0] is True  # CPU x1.25
    assert pick(on, {"rss_mb": 10.8, "peak_mb": 50.0, "p50_ms": 150.0})[0] is True  # a higher peak
    assert pick(on, {"rss_mb": on["rss_mb"] - SAVE_MIB + 0.1, "peak_mb": 40, "p50_ms": 150})[0] is True  # < 8 MiB
    big = {"rss_mb": 500.0, "peak_mb": 500.0, "p50_ms": 10.0}
    keep, why = pick(big, {"rss_mb": 480.0, "peak_mb": 480.0, "p50_ms": 10.0})  # 20 MiB but 4%
    assert keep and why == "on: off saves 20.0 MiB (4%) of 500.0, under 8 MiB or 10%"
    assert pick(on, {"rss_mb": None, "peak_mb": 1, "p50_ms": 1})[0] is True


def test_arena_off_chosen_in_the_trial_is_what_the_serving_load_runs(tmp_path, monkeypatch):
    """Off costs this model ~1.3x p50 here (each run faults its 32 MiB in again), over the rule's x1.10: the test
    accepts any slowdown so that the off path runs end to end on real figures."""
    monkeypatch.setattr(trial_arena, "MAX_SLOWER", 100.0)  # decided here, in the caller: the worker only measures
    path = transient(tmp_path / "transient.onnx")
    hardware = probe()
    cands = [c for c in candidates("onnx", hardware) if c.name == "onnxruntime:cpu"]
    meter = Meter()
    outcome = run_isolated(path, "onnx", hardware, cands, 1.0, None, None, admit=lambda _: meter.start())
    assert outcome.backend is not None and outcome.probe.sets
    for _ in range(3):  # the loader's warm-up
        outcome.backend.infer(outcome.probe.sets[0])
    grown = (rss_bytes() - meter.before) / MIB
    chosen = next(r for r in outcome.results if r.name == "onnxruntime:cpu")
    record = chosen.arena
    assert record is not None and record["chosen"] == "off", record
    on, off = record["on"], record["off"]
    assert on["rss_mb"] - off["rss_mb"] >= SAVE_MIB and off["runs"] >= 6 and on["p50_ms"] > 0, record
    assert outcome.options == {"cpu_mem_arena": False}  # what the serving load and the cached choice use
    assert outcome.backend.config.cpu_mem_arena is False
    # the prediction: off's steady figure; the admission's peak: the larger of the two (a heap may keep what off frees)
    assert (chosen.rss_mb, chosen.peak_mb) == (off["rss_mb"], max(off["peak_mb"], on["peak_mb"], on["rss_mb"]))
    # What the load added here is not asserted: in a process with a history (a full test run) the freed run buffers
    # can stay in the heap (73.7 MiB grown vs off's 4.5 predicted, once), as they may in a long-running agent
    print(f"grown here: {grown:.1f} MiB; on {on['rss_mb']}, off {off['rss_mb']}")
    memory = Memory.model_validate(arena_of(_selection(outcome)))
    assert memory.arena == "off" and memory.arena_trial is not None and memory.arena_trial.on is not None
    assert memory.arena_trial.on.rss_mb == on["rss_mb"] and memory.arena_trial.why == record["why"]


def test_a_model_smaller_than_the_least_saving_needs_no_arena_worker(tmp_path):
    cand = next(c for c in candidates("onnx", probe()) if c.name == "onnxruntime:cpu")
    missing = tmp_path / "absent.onnx"  # a worker started on it would fail and say so
    on = {"rss_mb": 3.9, "peak_mb": 3.9}
    record = trial_arena.measure_isolated(cand, missing, "onnx", {}, [], on, 1.0)
    assert record == {"chosen": "on", "why": "on: the model takes 3.9 MiB in all", "on": on}


def test_the_arena_is_measured_only_where_the_memory_budget_makes_it_matter(tmp_path):
    """A roomy box's deployment does not wait for the arena measurement: a winner under the budget's share is loaded
    with the default; a small box measures it (the model above: ~42 MiB on, in a 350 MiB budget)."""
    cand = next(c for c in candidates("onnx", probe()) if c.name == "onnxruntime:cpu")
    roomy, small = 24000 * trial_arena.BUDGET_SHARE, 350 * trial_arena.BUDGET_SHARE
    assert not trial_arena.applies(cand, {}, 42.8, roomy)
    assert trial_arena.applies(cand, {}, 42.8, small)
    assert trial_arena.applies(cand, {}, 42.8)  # no budget given: always (the targets-level default)
    assert not trial_arena.applies(cand, {"cpu_mem_arena": True}, 42.8, small)  # set by the operator: kept
    path = transient(tmp_path / "transient.onnx")
    hardware = probe()
    outcome = run_isolated(path, "onnx", hardware, [cand], 1.0, None, None, arena_from_mb=roomy)
    chosen = next(r for r in outcome.results if r.name == "onnxruntime:cpu")
    assert chosen.arena is None and outcome.options == {}  # not measured: served with the arena on
