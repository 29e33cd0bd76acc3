"""The one Wilson score interval (stats.proportion) against published values and its defining equation, so the
rollout error gate and the conversion figures stand on a bound that is checked once."""

from __future__ import annotations

import math

import pytest

from stats.proportion import wilson_interval, wilson_lower

Z_TWO_SIDED_95 = 1.959963984540054
Z_ONE_SIDED_95 = 1.6448536269514722


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_the_interval_is_newcombes_published_one(k, n, low, high):
    # Newcombe (1998), Stat Med 17:857, Table II, method 3 (score, no continuity correction), 95% two-sided; the
    # same figures as statsmodels' proportion_confint(k, n, alpha=0.05, method="wilson") to 4 places
    assert wilson_interval(k, n, Z_TWO_SIDED_95) == pytest.approx((low, high), abs=5e-5)


@pytest.mark.parametrize(("k", "n"), [(0, 1), (1, 3), (7, 10), (50, 1000), (999, 1000), (20, 20)])
def test_each_bound_solves_the_score_equation(k, n):
    # a bound p is where the observed rate sits exactly z standard errors (taken at p itself) from p
    for p in wilson_interval(k, n, Z_ONE_SIDED_95):
        if 0.0 < p < 1.0:
            assert abs(k / n - p) == pytest.approx(Z_ONE_SIDED_95 * math.sqrt(p * (1 - p) / n), rel=1e-9)


def test_the_bounds_hold_the_rate_tighten_with_samples_and_stay_in_zero_one():
    assert wilson_interval(0, 0, Z_ONE_SIDED_95) == (0.0, 1.0)
    assert wilson_interval(0, 10, Z_ONE_SIDED_95)[0] == 0.0 and wilson_interval(10, 10, Z_ONE_SIDED_95)[1] == 1.0
    small, large = wilson_interval(5, 100, Z_ONE_SIDED_95), wilson_interval(50, 1000, Z_ONE_SIDED_95)
    assert small[0] < 0.05 < small[1] and large[0] < 0.05 < large[1]
    assert large[1] - large[0] < small[1] - small[0]
    assert wilson_interval(5, 100, Z_TWO_SIDED_95)[1] > small[1]  # more confidence, wider


def test_the_lower_bound_is_the_intervals_low_end():
    for k, n in [(0, 0), (0, 10), (20, 20), (299, 300), (81, 263)]:
        assert wilson_lower(k, n, Z_ONE_SIDED_95) == wilson_interval(k, n, Z_ONE_SIDED_95)[0]
    # n of n is no proof of 100%: the textbook n / (n + z^2)
    assert wilson_lower(20, 20, Z_ONE_SIDED_95) == pytest.approx(20 / (20 + Z_ONE_SIDED_95**2), abs=1e-12)
