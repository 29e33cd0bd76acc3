"""The class mix the agent sends (agent/telemetry/classes.py, issue 30 audit G1-G3): what the classifier rows were
(`scores`: probabilities, logits, declared), every class counted by its index past the 31 `classes` names (the
older controllers' form stays within its 33 keys), and a large classifier at batch 8 counted on a stride of rows."""

from __future__ import annotations

import numpy as np

from agent.telemetry.stats import ModelStats
from protocol import OutputStats, Telemetry
from protocol.telemetry import MAX_CLASS_BINS
from protocol.telemetry_fast import decode_telemetry


def _softmax(logits: np.ndarray) -> np.ndarray:
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def _window(outputs: list[dict[str, np.ndarray]], task: str | None = None) -> dict[str, OutputStats]:
    stats = ModelStats("m", "1", sample_every=1, budget_us=None, task=task)
    for out in outputs:
        stats.record(1.0, out)
    taken = stats.take()
    assert taken is not None
    message = Telemetry(device_id="d", models=[taken])
    assert decode_telemetry(message.encode()).models[0].outputs.keys() == taken.outputs.keys()  # the wire reads it
    return taken.outputs


def test_the_agent_says_whether_classifier_rows_were_probabilities_logits_or_declared():
    rng = np.random.default_rng(0)
    small = [rng.standard_normal((4, 10)).astype(np.float32) for _ in range(8)]  # 40 values: the Python path
    large = [rng.standard_normal((64, 10)).astype(np.float32) for _ in range(4)]  # 640 values: the numpy path
    for batches in (small, large):
        outputs = _window([{"probs": _softmax(x), "logits": x, "box": x[:, :4]} for x in batches])
        assert outputs["probs"].scores == "probabilities"
        assert outputs["logits"].scores == "logits"
        assert outputs["box"].scores == "logits"  # a regression [N, 4] read as class scores: ambiguous, said so
    declared = _window([{"logits": x} for x in small], task="classifier")
    assert declared["logits"].scores == "declared"
    regression = _window([{"y": x[:, :4]} for x in small], task="regression")
    assert regression["y"].scores is None and regression["y"].classes is None  # no class counted: no field


def test_every_class_is_counted_by_index_past_the_31_named():
    rng = np.random.default_rng(1)
    prior = rng.dirichlet(np.ones(100) * 0.5)
    batches = []
    for _ in range(40):
        cls = rng.choice(100, size=8, p=prior)
        logits = rng.standard_normal((8, 100)).astype(np.float32)
        logits[np.arange(8), cls] += 6.0
        batches.append({"probs": _softmax(logits)})
    probs = _window(batches)["probs"]
    counts = dict(probs.class_counts or [])
    top = np.stack([b["probs"].argmax(axis=1) for b in batches]).reshape(-1)
    expected = {int(c): int(n) for c, n in zip(*np.unique(top, return_counts=True), strict=True)}
    assert counts == expected and len(counts) > MAX_CLASS_BINS  # every class seen, keyed by its index
    assert probs.classes is not None and len(probs.classes) == MAX_CLASS_BINS  # 31 named + other: the old form
    assert sum(probs.classes.values()) == 320 == sum(counts.values())
    named = sorted((n for k, n in probs.classes.items() if k != "other"), reverse=True)
    assert named == sorted(counts.values(), reverse=True)[: MAX_CLASS_BINS - 1]  # the most frequent are named


def test_a_few_classes_keep_the_named_form_alone():
    rng = np.random.default_rng(2)
    probs = _window([{"probs": _softmax(rng.standard_normal((4, 10)))} for _ in range(20)])["probs"]
    assert probs.class_counts is None and probs.classes is not None and "other" not in probs.classes
    assert sum(probs.classes.values()) == 80


def test_a_1000_class_classifier_at_batch_8_is_counted_on_the_rows_its_elements_are():
    rng = np.random.default_rng(3)
    outputs = _window([{"probs": _softmax(rng.standard_normal((8, 1000)) * 3)} for _ in range(50)])
    probs = outputs["probs"]
    assert sum(dict(probs.class_counts or []).values()) == 400 == sum(probs.top1_hist or [])  # every row
    assert probs.elements is not None and probs.elements.rows == 400 and probs.scores == "probabilities"
    outputs = _window([{"probs": _softmax(rng.standard_normal((256, 1000)) * 3)} for _ in range(4)])
    probs = outputs["probs"]  # a large batch: a stride of 4, 64 rows a request, as the per-element summary
    assert sum(dict(probs.class_counts or []).values()) == 256 == (probs.elements.rows if probs.elements else 0)
