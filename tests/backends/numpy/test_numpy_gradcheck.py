"""Finite-difference checks of the hand-derived gradients (NumPy reference, float64).

Every element of every analytic gradient is compared with fourth-order central
differences::

    num = [8 (f(p+h) - f(p-h)) - (f(p+2h) - f(p-2h))] / (12 h),   h = 1e-3

whose truncation error is O(h^4) and whose rounding error is about
1e-16 |f| / h, both near 1e-12 at these sizes. The error measure is::

    rel = |num - ana| / max(|num| + |ana|, 1e-8)

and its maximum over all elements must stay below 1e-6. Weights are drawn from
[-1, 1] (not the paper's 0.08) and the carried-in state is random, so the
gates work away from their linear regime and no checked gradient is so small
that rounding noise dominates it.

Run with ``pytest --gradcheck``.
"""

import numpy as np
import pytest
from finite_differences import assert_gradients_match

from ltexec.backends.numpy.backend import NumpyBackend, cell_backward, cell_forward
from ltexec.model import LSTMModel

pytestmark = pytest.mark.gradcheck

V = 7


@pytest.mark.parametrize("window", [1, 2, 5])
@pytest.mark.parametrize("layers", [1, 2])
def test_model_gradients_of_every_parameter_and_carried_state(layers, window):
    rng = np.random.default_rng(10 * layers + window)
    hidden, batch = 3 + layers, 3 if window < 5 else 2
    model = LSTMModel(V, hidden=hidden, layers=layers, backend="numpy", dtype=np.float64, init_scale=1.0, seed=window)
    x = rng.integers(0, V, (window, batch))
    y = rng.integers(0, V, (window, batch))
    mask = (rng.random((window, batch)) < 0.7).astype(np.float64)
    mask[-1, 0], mask[0, -1] = 1.0, 0.0              # some positions count, some do not
    state = [(rng.uniform(-1, 1, (batch, hidden)), rng.uniform(-1, 1, (batch, hidden))) for _ in range(layers)]

    result = model.loss_and_grads(x, y, mask, state)
    checks = {name: (model.params[name], result.grads[name]) for name in model.params}
    for k in range(layers):
        checks[f"h0 of layer {k}"] = (state[k][0], result.dstate[k][0])
        checks[f"c0 of layer {k}"] = (state[k][1], result.dstate[k][1])
    assert_gradients_match(lambda: model.loss_and_grads(x, y, mask, state).loss, checks)


def test_cell_forward_backward_pair():
    rng = np.random.default_rng(0)
    batch, hidden = 3, 4
    xproj = rng.uniform(-1, 1, (batch, 4 * hidden))
    h_prev, c_prev = rng.uniform(-1, 1, (2, batch, hidden))
    Wh = rng.uniform(-1, 1, (hidden, 4 * hidden))
    b = rng.uniform(-1, 1, 4 * hidden)
    weight_h, weight_c = rng.normal(size=(2, batch, hidden))   # loss = sum(h * weight_h) + sum(c * weight_c)

    def loss():
        h, c, _ = cell_forward(xproj, h_prev, c_prev, Wh, b)
        return float((h * weight_h).sum() + (c * weight_c).sum())

    _, _, step_cache = cell_forward(xproj, h_prev, c_prev, Wh, b)
    da, dh_prev, dc_prev = cell_backward(weight_h, weight_c, step_cache)
    assert_gradients_match(loss, {
        "xproj_t": (xproj, da), "h_prev": (h_prev, dh_prev), "c_prev": (c_prev, dc_prev),
        "Wh": (Wh, h_prev.T @ da), "b": (b, da.sum(axis=0)),
    })


@pytest.mark.parametrize("window", [1, 5])
def test_layer_backward_with_gradient_arriving_at_the_final_state(window):
    rng = np.random.default_rng(window)
    backend = NumpyBackend(np.float64)
    batch, inputs, hidden = 2, 3, 4
    xs = rng.uniform(-1, 1, (window, batch, inputs))
    h0, c0 = rng.uniform(-1, 1, (2, batch, hidden))
    Wx = rng.uniform(-1, 1, (inputs, 4 * hidden))
    Wh = rng.uniform(-1, 1, (hidden, 4 * hidden))
    b = rng.uniform(-1, 1, 4 * hidden)
    weight_hs = rng.normal(size=(window, batch, hidden))
    weight_h, weight_c = rng.normal(size=(2, batch, hidden))

    def loss():
        hs, hT, cT, _ = backend.lstm_forward(xs, h0, c0, Wx, Wh, b, training=False)
        return float((hs * weight_hs).sum() + (hT * weight_h).sum() + (cT * weight_c).sum())

    _, _, _, cache = backend.lstm_forward(xs, h0, c0, Wx, Wh, b, training=True)
    dxs, dWx, dWh, db, dh0, dc0 = backend.lstm_backward(weight_hs.copy(), weight_h, weight_c, cache)
    assert_gradients_match(loss, {
        "xs": (xs, dxs), "h0": (h0, dh0), "c0": (c0, dc0), "Wx": (Wx, dWx), "Wh": (Wh, dWh), "b": (b, db),
    })


def test_tanh_concatenation_and_split_gradients():
    """The encoder's operations (the NPI's): tanh, then side by side with another input, then cut differently."""
    bk, rng = NumpyBackend(np.float64), np.random.default_rng(5)
    x, y = rng.uniform(-2, 2, (2, 3, 4)), rng.uniform(-1, 1, (2, 3, 2))
    weights = [rng.uniform(-1, 1, (2, 3, n)) for n in (1, 5)]

    def loss():
        parts = bk.split_last(bk.concat_last([bk.tanh_forward(x), y]), [1, 5])
        return sum(float((part * w).sum()) for part, w in zip(parts, weights))

    d_tanh, dy = bk.split_last(bk.concat_last(weights), [4, 2])
    dx = bk.tanh_backward(d_tanh, bk.tanh_forward(x))
    assert_gradients_match(loss, {"x": (x, dx), "y": (y, dy)})

