"""The one comparison every test of a fast path makes against the NumPy reference."""

import numpy as np


def relative_error(actual, expected, floor: float = 0.0) -> float:
    """``max|actual - expected| / max(max|expected|, floor)`` (in float64)."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    scale = max(np.abs(expected).max(initial=0.0), floor, np.finfo(np.float64).tiny)
    return float(np.abs(actual - expected).max(initial=0.0) / scale)


def assert_relative_error_below(name, actual, expected, tolerance, floor: float = 0.0):
    """:func:`relative_error` below ``tolerance``, same shape, and no NaN left by a missed write.

    ``floor`` is the smallest scale the error is measured against, for values
    that may be tiny sums of larger terms (a loss of one confident position).
    """
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert np.isfinite(actual).all(), f"{name}: not every element written (NaN left)"
    error = relative_error(actual, expected, floor)
    assert error < tolerance, f"{name}: relative error {error:.3g}"
