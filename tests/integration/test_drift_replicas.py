"""Drift baselines shared by controller replicas: two ingests on one database stand for two replicas that each see
some of a device's windows. The table keeps the first baseline stored; every replica judges drift against it, and a
reset through one reaches the other (before, each replica judged against the first window it happened to see)."""

from __future__ import annotations

import time

from conftest import wait_until
from test_telemetry import db, sample  # noqa: F401  (db: the SQLite and PostgreSQL fixture)

from controller.telemetry.ingest import TelemetryIngest

KEY = ("dev1", "mlp", "1", "probs")


def test_replicas_judge_drift_against_the_stored_baseline_and_share_resets(db):  # noqa: F811
    first, second = (TelemetryIngest(db, baselines_refresh_s=0.3) for _ in range(2))
    first.start()
    second.start()
    try:
        now = time.time()
        first.submit("dev1", sample(ts=now - 30, mean=0.5, std=0.1))
        assert first.flush()
        second.submit("dev1", sample(ts=now - 20, mean=0.9, std=0.1))  # its first window of dev1, 4 sigma away
        assert second.flush()
        wait_until(
            lambda: second._baselines.get(KEY) == (0.5, 0.1), 10, "the second replica to adopt the stored baseline"
        )
        second.submit("dev1", sample(ts=now - 10, mean=0.9, std=0.1))
        assert second.flush()
        latest = second.device_summary("dev1")
        assert latest is not None and latest["drifting"], latest
        assert latest["models"][0]["drift"]["probs"]["baseline_mean"] == 0.5

        first.reset_baseline("dev1")
        wait_until(lambda: KEY not in second._baselines, 10, "the reset to reach the second replica")
        second.submit("dev1", sample(ts=now, mean=0.9, std=0.1))  # becomes the baseline: no drift against itself
        assert second.flush()
        latest = second.device_summary("dev1")
        assert latest is not None and not latest["drifting"], latest
    finally:
        first.stop()
        second.stop()
