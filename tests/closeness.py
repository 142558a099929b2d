"""The comparison every fast path's test makes against the NumPy reference."""

import numpy as np


def assert_relative_error_below(name, actual, expected, tolerance):
    """``max|actual - expected| / max|expected|`` below ``tolerance``, same shape, and no NaN left by a missed write."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert np.isfinite(actual).all(), f"{name}: not every element written (NaN left)"
    scale = max(np.abs(expected).max(initial=0.0), np.finfo(np.float64).tiny)
    error = np.abs(actual - expected).max(initial=0.0) / scale
    assert error < tolerance, f"{name}: relative error {error:.3g}"
