"""Finite-difference gradient checks in float64, shared by the reference's and the NPI's gradient tests.

Every element of every analytic gradient is compared with fourth-order central differences::

    num = [8 (f(p+h) - f(p-h)) - (f(p+2h) - f(p-2h))] / (12 h),   h = 1e-3

with the error measure ``|num - ana| / max(|num| + |ana|, 1e-8)``, whose largest value must stay below 1e-6.
"""

import numpy as np

H_STEP = 1e-3
FLOOR = 1e-8
TOLERANCE = 1e-6


def _shifted(f, array, index, delta):
    """f() with ``array[index]`` moved by ``delta``, the element restored afterwards."""
    old = array[index]
    array[index] = old + delta
    value = f()
    array[index] = old
    return value


def numeric_gradient(f, array):
    """Fourth-order central differences of the scalar f() for every element of ``array`` (perturbed in place)."""
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        near = _shifted(f, array, index, H_STEP) - _shifted(f, array, index, -H_STEP)
        far = _shifted(f, array, index, 2 * H_STEP) - _shifted(f, array, index, -2 * H_STEP)
        grad[index] = (8 * near - far) / (12 * H_STEP)
    return grad


def max_relative_error(numeric, analytic):
    return float((np.abs(numeric - analytic) / np.maximum(np.abs(numeric) + np.abs(analytic), FLOOR)).max())


def assert_gradients_match(f, checks):
    """``checks`` maps a name to (array f reads, its analytic gradient); every element is checked."""
    errors = {name: max_relative_error(numeric_gradient(f, array), analytic)
              for name, (array, analytic) in checks.items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] < TOLERANCE, f"largest relative error {errors[worst]:.3g} in {worst}; all: {errors}"
