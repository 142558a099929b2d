"""Welch's interval and Student's t: against published table values, another implementation's figures,
and the coverage the interval promises."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from ltexec.intervals import student_t_cdf, student_t_quantile, welch_interval
from ltexec.sweep import spread

# Two-sided 95% critical values t(0.975, df) from printed tables of Student's t distribution.
T_TABLE_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228, 18: 2.101, 30: 2.042,
               60: 2.000, 120: 1.980}


@pytest.mark.parametrize("df, value", sorted(T_TABLE_975.items()))
def test_t_quantile_matches_the_printed_table(df, value):
    assert student_t_quantile(0.975, df) == pytest.approx(value, abs=5e-4)
    assert student_t_quantile(0.025, df) == pytest.approx(-value, abs=5e-4)


def test_t_quantile_inverts_the_cdf_for_fractional_degrees_of_freedom():
    rng = random.Random(5)
    for _ in range(200):
        p, df = rng.uniform(0.001, 0.999), rng.uniform(0.3, 500.0)
        assert student_t_cdf(student_t_quantile(p, df), df) == pytest.approx(p, abs=1e-10)
    assert student_t_quantile(0.5, 7.0) == pytest.approx(0.0, abs=1e-12)
    assert student_t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)      # the normal's


def test_welch_interval_matches_scipy_on_fixed_data():
    """Reference figures: scipy.stats.ttest_ind(b, a, equal_var=False).confidence_interval() on these lists."""
    a = [0.481, 0.544, 0.515, 0.519, 0.514, 0.545, 0.502, 0.530, 0.497, 0.526]
    b = [0.412, 0.394, 0.429, 0.487, 0.424, 0.569, 0.455, 0.401]
    interval = welch_interval(spread(a), spread(b))
    assert interval.difference == pytest.approx(statistics.fmean(b) - statistics.fmean(a), abs=1e-15)
    assert (interval.low, interval.high) == pytest.approx((-0.12008776201295598, -0.021762237987044047), abs=1e-12)
    assert interval.df == pytest.approx(8.373443506146684, rel=1e-12)
    assert (interval.n_a, interval.n_b) == (10, 8) and interval.excludes_zero
    wide = welch_interval(spread(a), spread(b), confidence=0.99)
    assert (wide.low, wide.high) == pytest.approx((-0.14209133559746104, 0.00024133559746100652), abs=1e-12)
    assert not wide.excludes_zero


def test_welch_interval_covers_the_true_difference_95_percent_of_the_time():
    """Normal samples of unequal spread and size: the interval holds the true difference in ~95% of draws."""
    rng = random.Random(11)
    trials, covered = 4000, 0
    for _ in range(trials):
        a = [rng.gauss(0.50, 0.02) for _ in range(10)]
        b = [rng.gauss(0.45, 0.08) for _ in range(5)]
        interval = welch_interval(spread(a), spread(b))
        covered += interval.low <= -0.05 <= interval.high
    assert 0.935 <= covered / trials <= 0.965


def test_intervals_without_a_spread():
    one_seed = welch_interval(spread([0.5]), spread([0.4, 0.45]))
    assert not one_seed.known and not one_seed.excludes_zero and math.isnan(one_seed.df)
    assert one_seed.difference == pytest.approx(-0.075)
    constant = welch_interval(spread([0.0, 0.0, 0.0]), spread([0.0, 0.0]))       # every seed 0% exact
    assert (constant.low, constant.high) == (0.0, 0.0) and not constant.excludes_zero
    shifted = welch_interval(spread([0.1, 0.1]), spread([0.3, 0.3]))
    assert shifted.excludes_zero and shifted.low == pytest.approx(0.2)


@pytest.mark.parametrize("call, message", [
    (lambda: student_t_quantile(1.0, 3), "p must be a finite number > 0.0 and < 1.0, got 1"),
    (lambda: student_t_quantile(0.0, 3), "p must be a finite number > 0.0 and <= 1.0, got 0"),
    (lambda: student_t_quantile(0.9, 0), "df must be a finite number > 0.0, got 0"),
    (lambda: welch_interval(spread([1, 2]), spread([1, 2]), confidence=95), "confidence must be a finite number"),
])
def test_bad_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        call()
