"""The KS test on quantile sketches beside PSI: its tail matches the tables, draws of one distribution never fire it
(also at 50,000 rows, where the sketch's resolution would otherwise read as a gap), and a row-mean shift too small
for PSI's size fires KS alone, the finding saying so."""

from __future__ import annotations

import numpy as np
import pytest

from controller.telemetry.drift import DEFAULT_SETTINGS, drift_verdict, kolmogorov_sf, ks_sketches
from controller.telemetry.summary import Part, Summary
from protocol.quality import compress


def sketch(values: np.ndarray) -> list[tuple[float, float]]:
    return compress([(float(v), 1.0) for v in values])


def inputs(level: np.ndarray) -> Summary:
    return Summary(windows=1, inputs={"image": Part(level=sketch(level))})


def test_kolmogorov_tail_matches_the_tables():
    assert kolmogorov_sf(1.358) == pytest.approx(0.05, abs=1e-3)
    assert kolmogorov_sf(1.628) == pytest.approx(0.01, abs=1e-3)
    assert kolmogorov_sf(1.949) == pytest.approx(0.001, abs=1e-4)
    assert kolmogorov_sf(0.1) == 1.0


@pytest.mark.parametrize("rows", [200, 3000, 50_000])
def test_draws_of_one_distribution_never_fire(rows):
    rng = np.random.default_rng(rows)
    limit = DEFAULT_SETTINGS.alpha / 2
    p_values = [ks_sketches(sketch(rng.standard_normal(rows)), sketch(rng.standard_normal(rows)))[1] for _ in range(40)]
    assert min(p_values) > limit, min(p_values)


def test_a_shift_too_small_for_psi_fires_ks_and_the_finding_names_it():
    rng = np.random.default_rng(1)
    base, window = inputs(rng.standard_normal(3000)), inputs(rng.standard_normal(3000) + 0.5)
    verdict = drift_verdict(base, window)
    (finding,) = verdict.findings
    assert finding.psi < DEFAULT_SETTINGS.psi_min and finding.ks is not None and finding.ks[0] >= 0.15
    assert verdict.flagged and finding.fired == ["ks"], finding.to_json()
    assert finding.text.endswith("(KS fired)") and finding.to_json()["ks_d"] >= 0.15
    dark = drift_verdict(base, inputs(rng.standard_normal(3000) * 0.4 - 1.0))
    assert dark.findings[0].fired == ["psi", "ks"] and "PSI and KS fired" in dark.moved[0], dark.moved
    same = drift_verdict(base, inputs(rng.standard_normal(3000)))
    assert same.judged and not same.flagged and same.tests == 2
