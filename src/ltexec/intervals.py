"""Confidence intervals for the difference of two means: Welch's t interval.

A curriculum comparison asks whether strategy B's mean accuracy over its
seeds differs from strategy A's. With n_A and n_B seeds, sample means m and
sample standard deviations s, Welch's interval for mean_B - mean_A is

    d  = m_B - m_A
    se = sqrt(s_A² / n_A + s_B² / n_B)
    df = se⁴ / ((s_A² / n_A)² / (n_A - 1) + (s_B² / n_B)² / (n_B - 1))   (Welch-Satterthwaite)
    d ± t(1 - (1 - confidence) / 2, df) · se

It does not assume equal variances (a curriculum can make the seeds of one
strategy spread far more than the other's). Student's t quantile is computed
here (regularized incomplete beta function, inverted by bisection), so no
statistics package is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ltexec.validation import check_float

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A difference of means with its confidence interval (``low``, ``high``) and Welch's degrees of freedom.

    ``df`` is NaN where the interval is not known (a side with fewer than two
    values); where neither side varies (every seed gave the same accuracy)
    the interval is the difference itself.
    """

    difference: float
    low: float
    high: float
    df: float
    n_a: int
    n_b: int
    confidence: float = CONFIDENCE

    @property
    def known(self) -> bool:
        return not math.isnan(self.low)

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly above or below zero (False where it is not known)."""
        return self.known and (self.low > 0.0 or self.high < 0.0)


def welch_interval(a: dict, b: dict, confidence: float = CONFIDENCE) -> Interval:
    """Welch's interval for mean(b) - mean(a), from each side's ``mean``, sample ``sd`` and ``n``.

    ``a`` and ``b`` are summaries such as :func:`ltexec.sweep.spread` gives.
    """
    confidence = check_probability("confidence", confidence)
    n_a, n_b = int(a["n"]), int(b["n"])
    difference = b["mean"] - a["mean"]
    if n_a < 2 or n_b < 2:
        return Interval(difference, math.nan, math.nan, math.nan, n_a, n_b, confidence)
    var_a, var_b = a["sd"] ** 2 / n_a, b["sd"] ** 2 / n_b
    se = math.sqrt(var_a + var_b)
    if se == 0.0:
        return Interval(difference, difference, difference, math.inf, n_a, n_b, confidence)
    df = (var_a + var_b) ** 2 / (var_a ** 2 / (n_a - 1) + var_b ** 2 / (n_b - 1))
    half = student_t_quantile(1.0 - (1.0 - confidence) / 2.0, df) * se
    return Interval(difference, difference - half, difference + half, df, n_a, n_b, confidence)


def student_t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t distribution with ``df`` (> 0, not necessarily whole) degrees of freedom."""
    p = check_probability("p", p)
    df = check_float("df", df, 0.0, inclusive_min=False)
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:          # bracket the quantile, then halve the bracket
        low, high = high, 2.0 * high
    for _ in range(200):
        middle = (low + high) / 2.0
        if middle in (low, high):
            break
        low, high = (middle, high) if student_t_cdf(middle, df) < p else (low, middle)
    return (low + high) / 2.0


def check_probability(name: str, value) -> float:
    """``value`` as a float strictly between 0 and 1, or a ValueError naming it."""
    number = check_float(name, value, 0.0, 1.0, inclusive_min=False)
    if number == 1.0:
        raise ValueError(f"{name} must be a finite number > 0.0 and < 1.0, got 1")
    return number


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom: 1 - I_x(df/2, 1/2) / 2 for t >= 0, x = df/(df+t²)."""
    tail = 0.5 * regularized_incomplete_beta(df / (df + t * t), df / 2.0, 0.5)
    return 1.0 - tail if t >= 0 else tail


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) by its continued fraction (modified Lentz), using the symmetry I_x(a,b) = 1 - I_{1-x}(b,a)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - front * _beta_fraction(1.0 - x, b, a) / b
    return front * _beta_fraction(x, a, b) / a


def _beta_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of the incomplete beta function, converging for x < (a + 1) / (a + b + 2)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 1000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return fraction
