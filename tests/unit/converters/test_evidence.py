"""Issue 28 in-process: the held-out split, the confidence bounds and the `unproven` lines (converters.evidence), and
the mixed-precision search deciding out of sample (converters.mixed) against a scripted toolchain whose in-sample
figures flatter the candidates that fit the calibration data."""

from __future__ import annotations

import numpy as np
import pytest

from converters import Thresholds
from converters.calibration import Calibration
from converters.evidence import Z, holdout_count, samples_to_settle, split, unproven
from converters.mixed import MixedReport, Search, Setting, Trial, inner_split
from stats.proportion import wilson_lower


def test_wilson_lower_bound_is_the_textbook_value():
    # one-sided 95% (z = 1.6449): 20/20 is no proof of 99%, 300/300 is; one miss in 300 is not
    assert wilson_lower(20, 20, Z) == pytest.approx(20 / (20 + 1.6449**2), abs=1e-9)
    assert wilson_lower(20, 20, Z) < 0.90
    assert wilson_lower(300, 300, Z) > 0.99 > wilson_lower(299, 300, Z)
    assert wilson_lower(0, 0, Z) == 0.0 and wilson_lower(0, 10, Z) == 0.0


def test_samples_to_settle_is_where_the_bound_reaches_the_bar():
    need = samples_to_settle(1.0, 0.99)
    assert need == 268  # z^2 * 0.99 / 0.01 rounded up
    assert wilson_lower(need, need, Z) >= 0.99 > wilson_lower(need - 1, need - 1, Z)
    assert (samples_to_settle(0.995, 0.99) or 0) > 800
    assert samples_to_settle(0.99, 0.99) is None and samples_to_settle(0.95, 0.99) is None


@pytest.mark.parametrize(("total", "held"), [(2, 1), (40, 20), (64, 20), (256, 64), (512, 128), (1000, 616)])
def test_holdout_count(total, held):
    """25%, at least 20 (never over half), and what calibration cannot use past 384 samples."""
    assert holdout_count(total) == held


def test_split_is_disjoint_fixed_and_mixes_ordered_data():
    x = np.arange(64, dtype=np.float32)[:, None]
    data = Calibration({"x": x}, "cal.npz", ["a note"])
    kept, held = split(data)  # type: ignore[misc]
    again = split(data)
    assert again is not None and np.array_equal(again[1].arrays["x"], held.arrays["x"])  # the same split each run
    assert len(held) == 20 and len(kept) == 44
    assert set(held.arrays["x"][:, 0]).isdisjoint(kept.arrays["x"][:, 0])
    assert held.arrays["x"].min() < 16 and held.arrays["x"].max() >= 48  # drawn across the file, not its tail
    assert kept.source == held.source == "cal.npz" and held.notes == ["a note"]
    assert split(Calibration({"x": x[:1]}, "one.npz")) is None  # nothing to hold out


def test_split_keeps_whole_batches():
    data = Calibration({"x": np.zeros((64, 3), np.float32)}, "cal.npz")
    kept, held = split(data, batch=8)  # type: ignore[misc]
    assert len(held) % 8 == 0 and len(kept) % 8 == 0 and len(held) + len(kept) == 64


def test_unproven_names_the_count_the_bound_and_what_settles_it():
    bar = Thresholds()
    outputs = {
        "small": {"top1": 1.0, "top1_lower": wilson_lower(20, 20, Z), "rows": 20, "cosine": 1.0},
        "big": {"top1": 1.0, "top1_lower": wilson_lower(400, 400, Z), "rows": 400, "cosine": 1.0},
        "below": {"top1": 0.9, "top1_lower": 0.85, "rows": 400, "cosine": 0.9},  # below: a failure, not unproven
        "dense": {"cosine": 0.995, "cosine_lower": 0.98, "rows": 12},
    }
    small, dense = unproven(outputs, bar)
    assert small.startswith("small: top-1 100.00% on 20 held-out samples, 95% lower bound 88.")
    assert "~268 samples at this agreement would settle it" in small
    assert dense.startswith("dense: cosine 0.9950 on 12 held-out samples, 95% lower bound 0.9800")


def test_inner_split_interleaves():
    fit, judge = inner_split(list(range(12)))
    assert judge == [2, 5, 8, 11] and fit == [0, 1, 3, 4, 6, 7, 9, 10]


# --- the search, on a scripted toolchain ---------------------------------------------------------------------------


def _trial(step: str, setting: Setting, layers: list[str], out: float, error: float, inside: float) -> Trial:
    return Trial(step, str(setting), list(layers), out, 0.99, error, 100 + 10 * len(layers), out >= 0.995,
                 in_top1=inside, in_cosine=0.99, in_error=error / 2)  # fmt: skip


def _report(budget: float = 60.0) -> MixedReport:
    return MixedReport("top-1 99.50%", budget, 0.75, 200, judged_on=64, fitted_on=128)


def test_setting_that_only_fits_in_sample_loses_to_the_default():
    """Percentile looks perfect on the samples it was fitted on, the default is better on the others: the default
    stays; every step carries both figures."""
    figures = {"MinMax": (0.97, 0.010, 0.97), "Percentile": (0.96, 0.012, 1.0)}

    def attempt(setting: Setting, layers: list[str], step: str) -> Trial:
        out, error, inside = figures[setting.method]
        return _trial(step, setting, layers, out - 0.01 * (not layers), error, inside)

    report = _report(budget=0)  # no time for a mix: the settings alone
    chosen = Search(attempt, report).run([Setting("MinMax", True), Setting("Percentile", True)], ["a", "b"])
    assert chosen.setting == "MinMax, per-channel" and not chosen.float_layers
    assert [(s["in_top1"], s["top1"]) for s in report.steps] == [(0.97, 0.96)]  # budget 0: the first setting only


def test_a_mix_that_does_not_beat_full_int8_out_of_sample_is_not_kept():
    """Keeping layers in float helps in sample and not out of it: full INT8 stays, and the report says why."""

    def attempt(setting: Setting, layers: list[str], step: str) -> Trial:
        if not layers:
            return _trial(step, setting, layers, 0.97, 0.010, 0.97)
        return _trial(step, setting, layers, 0.96, 0.011 + 0.0001 * len(layers), 0.99)

    report = _report()
    chosen = Search(attempt, report).run([Setting("MinMax", True)], [f"n{i}" for i in range(16)])
    assert chosen.float_layers == [] and report.kept_full_int8 == "no mix beat it out of sample"
    assert "full INT8 kept" in report.summary() and "out of sample (64 calibration samples" in report.summary()
    assert all(s["in_top1"] is not None for s in report.steps)


def test_the_simplest_mix_that_holds_out_of_sample_is_chosen():
    """Only layer n3 matters: the search keeps its group, then shrinks it to n3 alone."""

    def attempt(setting: Setting, layers: list[str], step: str) -> Trial:
        good = "n3" in layers
        return _trial(step, setting, layers, 1.0 if good else 0.97, 0.002 if good else 0.010, 1.0)

    report = _report()
    chosen = Search(attempt, report).run([Setting("MinMax", True)], [f"n{i}" for i in range(16)])
    assert chosen.float_layers == ["n3"] and report.stopped == "passed"


def test_a_setting_that_reaches_the_aim_by_luck_does_not_replace_the_default():
    """Per-tensor shows 64/64 on the judge set but a higher output error: the default stays and the search goes on."""

    def attempt(setting: Setting, layers: list[str], step: str) -> Trial:
        if setting.per_channel:
            return _trial(step, setting, layers, 0.984 if not layers else 0.99, 0.010 - 0.0001 * len(layers), 0.98)
        return _trial(step, setting, layers, 1.0, 0.013, 0.97)

    report = _report()
    chosen = Search(attempt, report).run([Setting("MinMax", True), Setting("MinMax", False)], ["a", "b", "c"])
    assert chosen.setting == "MinMax, per-channel" and report.stopped != "full-int8-passed"


def test_without_a_pass_the_simplest_mix_that_beats_full_int8_is_kept():
    """No candidate reaches the aim; of the mixes within the size budget that beat full INT8 out of sample, the one
    with the fewest layers in float is kept (not the lowest-error one, which agrees worse)."""
    figures = {1: (0.992, 0.008), 2: (0.992, 0.007), 3: (0.984, 0.004)}  # groups kept: (top-1, error) out of sample

    def attempt(setting: Setting, layers: list[str], step: str) -> Trial:
        top1, error = figures.get(len(layers) // 2, (0.984, 0.010)) if layers else (0.984, 0.010)
        return _trial(step, setting, layers, top1, error, 1.0)

    report = _report()
    chosen = Search(attempt, report).run([Setting("MinMax", True)], [f"n{i}" for i in range(6)])
    assert len(chosen.float_layers) == 2 and chosen.top1 == 0.992 and not report.kept_full_int8
