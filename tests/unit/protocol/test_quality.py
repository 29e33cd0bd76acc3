"""The mergeable quality summaries of protocol/quality.py: moments merge exactly, sketches keep quantiles, and the
agent's summarizer turns real tensors into them (block means for long rows, NaN rows left out)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.telemetry.quality import InputSummary, rows_of
from agent.telemetry.stats import ModelStats
from protocol import Telemetry
from protocol.quality import (
    BLOCKS,
    SKETCH_SIZE,
    compress,
    merge_moments,
    merge_sketches,
    sketch_cdf,
    sketch_quantile,
    sketch_weight,
)


def test_moments_merge_as_if_computed_at_once():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 2.0, (300, 4)), rng.normal(-1.0, 0.5, (100, 4))
    rows, mean, std = merge_moments(
        300, a.mean(0).tolist(), a.std(0).tolist(), 100, b.mean(0).tolist(), b.std(0).tolist()
    )
    both = np.concatenate([a, b])
    assert rows == 400
    assert np.allclose(mean, both.mean(0)) and np.allclose(std, both.std(0))


def test_sketches_merged_from_windows_keep_the_quantiles():
    rng = np.random.default_rng(1)
    values = rng.lognormal(0.0, 1.0, 20_000)
    sketch = None
    for chunk in np.array_split(values, 40):  # 40 windows, each compressed on its own, then merged
        sketch = merge_sketches(sketch, compress([(float(v), 1.0) for v in chunk]))
    assert sketch is not None and len(sketch) <= SKETCH_SIZE and sketch_weight(sketch) == pytest.approx(20_000)
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        true = float(np.quantile(values, q))
        assert sketch_cdf(sketch, true) == pytest.approx(q, abs=0.02)
        assert sketch_cdf(sketch, sketch_quantile(sketch, q)) == pytest.approx(q, abs=1e-9)


def test_long_rows_become_block_means_and_non_finite_rows_are_left_out():
    image = np.arange(2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8)
    rows, blocks = rows_of(image, 4096)
    assert blocks and rows.shape == (2, BLOCKS)
    assert rows[0, 0] == pytest.approx(image[0].reshape(-1)[:12].mean())
    bad = np.ones((3, 4), np.float32)
    bad[1, 2] = np.nan
    rows, blocks = rows_of(bad, 4096)
    assert not blocks and rows.shape == (2, 4)
    assert rows_of(np.array(["a"]), 4096) is None


def test_an_image_input_summary_sees_brightness_and_contrast():
    rng = np.random.default_rng(2)
    summary = InputSummary()
    for _ in range(50):
        summary.add(rng.uniform(0.2, 0.6, (2, 3, 32, 32)).astype(np.float32), 4096)
    wire = summary.wire()
    assert wire.sampled == 50 and wire.elements is not None and wire.elements.rows == 100 and wire.elements.blocks
    assert sketch_quantile(wire.level, 0.5) == pytest.approx(0.4, abs=0.01)
    assert sketch_quantile(wire.spread, 0.5) == pytest.approx(0.4 / 12**0.5, abs=0.01)  # uniform's std


def test_a_window_carries_elements_class_mix_confidence_and_inputs_and_stays_valid():
    stats = ModelStats("m", "1", sample_every=1, budget_us=None)
    rng = np.random.default_rng(3)
    for _ in range(64):
        x = rng.standard_normal((1, 8)).astype(np.float32)
        stats.record(1.0, {"probs": rng.dirichlet(np.ones(4), 1).astype(np.float32)}, {"x": x})
    window = stats.take()
    probs = window.outputs["probs"]
    assert probs.elements is not None and probs.elements.rows == 64 and len(probs.elements.mean) == 4
    assert sum(probs.top1_hist or []) == 64 == sum((probs.classes or {}).values())
    assert window.inputs["x"].elements is not None and window.inputs["x"].elements.rows == 64
    again = Telemetry.model_validate_json(Telemetry(device_id="d", models=[window]).model_dump_json())
    assert again.models[0].inputs["x"].level == window.inputs["x"].level
