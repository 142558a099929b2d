"""The one closeness measure of every check of a fast path against the NumPy reference.

The test suite, the torch parity tests and the GPU check all use it, so a
figure in any of them means the same: ``max|actual - expected|`` over
``max|expected|`` (or over ``floor`` where that is larger, for values that
may be small sums of larger terms), in float64; infinite where ``actual``
holds a NaN or an infinity.
"""

from __future__ import annotations

import math

import numpy as np


def relative_error(actual, expected, floor: float = 0.0) -> float:
    """The module's measure (see above); a ValueError where the shapes differ."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        raise ValueError(f"shape {actual.shape} differs from the reference's {expected.shape}")
    if not np.isfinite(actual).all():
        return math.inf
    scale = max(float(np.abs(expected).max(initial=0.0)), floor, np.finfo(np.float64).tiny)
    return float(np.abs(actual - expected).max(initial=0.0)) / scale


def assert_relative_error_below(name, actual, expected, tolerance, floor: float = 0.0) -> None:
    """:func:`relative_error` below ``tolerance``, same shape, and no NaN left by a missed write.

    ``floor`` is the smallest scale the error is measured against, for values
    that may be tiny sums of larger terms (a loss of one confident position).
    """
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert np.isfinite(actual).all(), f"{name}: not every element written (NaN left)"
    error = relative_error(actual, expected, floor)
    assert error < tolerance, f"{name}: relative error {error:.3g}"
