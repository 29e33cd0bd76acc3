"""Quality-drift baselines in the database, on SQLite and PostgreSQL: two trackers on one database stand for two
controller replicas that each see some of a device's windows. The first stored baseline is the one both judge
against (before, each judged against the windows it happened to see first), a reset through one reaches the other,
and a controller started anew judges against the stored baseline instead of building one from the next windows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_telemetry import db  # noqa: F401  (db: the SQLite and PostgreSQL fixture)

from agent.telemetry.stats import ModelStats
from controller.telemetry.drift import DriftSettings
from controller.telemetry.ingest import TelemetryIngest
from controller.telemetry.tracker import QualityTracker
from edgectl import sample_models
from protocol import Telemetry
from protocol.telemetry_fast import decode_telemetry

SETTINGS = DriftSettings(min_rows=200, baseline_rows=400)


@pytest.fixture(scope="module")
def window(tmp_path_factory):
    """One telemetry window (200 rows) of the 4-class MLP on ONNX Runtime, as the controller decodes it."""
    from targets import registry

    backend = registry.create("onnxruntime")
    backend.load(Path(sample_models.mlp(tmp_path_factory.mktemp("m") / "mlp.onnx")), "onnx")
    rng = np.random.default_rng(0)

    def make(shift: float = 0.0, ts: float = 1000.0):
        stats = ModelStats("mlp", "1", sample_every=1, budget_us=None)
        for _ in range(20):
            x = (rng.standard_normal((10, 16)) + shift).astype(np.float32)
            stats.record(1.0, backend.infer({"x": x}), {"x": x})
        taken = stats.take()
        assert taken is not None
        return decode_telemetry(Telemetry(device_id="dev1", ts=ts, models=[taken]).encode()).models[0]

    return make


def _baseline(tracker: QualityTracker) -> dict:
    track = tracker.track("dev1", "mlp")
    assert track is not None and track.baseline is not None
    return json.loads(json.dumps(track.baseline.to_json()))  # as stored: centroids as lists


def test_replicas_share_the_first_stored_baseline_resets_and_a_restart_keeps_it(db, window):  # noqa: F811
    first, second = QualityTracker(SETTINGS, store=db), QualityTracker(SETTINGS, store=db)
    for i in range(2):  # the first replica's windows: the baseline's distribution
        first.observe("dev1", window(), float(i))
    first.save()
    (row,) = db.quality_baselines()
    assert row["rows"] == 400 and row["generation"] == 0 and json.loads(row["summary"]) == _baseline(first)

    for i in range(2):  # the second replica saw other windows first: shifted ones, its own baseline would be them
        second.observe("dev1", window(shift=3.0), 10.0 + i)
    second.save()
    assert _baseline(second) == _baseline(first)  # the first stored won
    track = second.observe("dev1", window(shift=3.0), 20.0)
    assert track is not None and track.verdict is not None and track.verdict.flagged, "judged against the stored one"

    assert first.reset("dev1", "mlp") == 1  # the operator's `edgectl drift baseline dev1 --model mlp`
    second.refresh()  # what the second replica's housekeeping does every minute
    track = second.track("dev1", "mlp")
    assert track is not None and not track.frozen and track.baseline is None and track.generation == 1
    for i in range(2):  # the new baseline: a new camera that sees the shifted scene
        second.observe("dev1", window(shift=3.0), 30.0 + i)
    second.save()
    first.refresh()
    assert _baseline(first) == _baseline(second)
    (row,) = db.quality_baselines()
    assert row["generation"] == 1 and row["rows"] == 400

    restarted = QualityTracker(SETTINGS, store=db)  # a controller started anew on the same database
    restarted.refresh()
    assert _baseline(restarted) == _baseline(second)
    track = restarted.observe("dev1", window(shift=3.0), 40.0)
    assert track is not None and track.verdict is not None and not track.verdict.flagged, track.verdict.moved
    track = restarted.observe("dev1", window(), 41.0)
    assert track is not None and track.verdict is not None and track.verdict.flagged


def test_an_ingest_stores_a_frozen_baseline_and_one_started_anew_judges_against_it(db, window):  # noqa: F811
    ingest = TelemetryIngest(db, quality=SETTINGS)
    ingest.start()
    try:
        for i in range(2):
            model = window(ts=1000.0 + i)
            ingest.quality.observe("dev1", model, 1000.0 + i)
        ingest.submit("dev1", Telemetry(device_id="dev1", ts=999.0).encode())  # a batch: the ingest saves after it
        assert ingest.flush()
        assert [r["rows"] for r in db.quality_baselines()] == [400]
    finally:
        ingest.stop()
    again = TelemetryIngest(db, quality=SETTINGS)
    again.start()  # reads the stored baselines
    try:
        status = again.quality.status("dev1", "mlp")
        assert status is not None and status["baseline_rows"] == 400 and status["state"].startswith("gathering")
    finally:
        again.stop()
