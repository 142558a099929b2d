"""The reference backend: the LSTM layer and its backpropagation through time in NumPy.

This is the derivation every faster backend is tested against, written to be
read next to the equations. One cell step (gate blocks i, f, g, o along 4H)::

    a   = xproj_t + h_prev Wh + b          xproj_t = x_t Wx, computed for the whole window at once
    i   = sigmoid(a_i)    f = sigmoid(a_f)    g = tanh(a_g)    o = sigmoid(a_o)
    c   = f * c_prev + i * g
    h   = o * tanh(c)

Backward, given dh (everything the loss sends into h: from the output at this
step and from the next step) and dc (what the next step sends into c)::

    dc     = dc + dh * o * (1 - tanh(c)^2)     total gradient of c
    do     = dh * tanh(c)
    di     = dc * g       df = dc * c_prev     dg = dc * i
    da     = [di * i(1-i), df * f(1-f), dg * (1-g^2), do * o(1-o)]
    dc_prev = dc * f
    dh_prev = da Wh^T

The weight gradients are sums over time of per-step outer products, so the
layer computes them once for the window: dWx = X^T dA, dWh = H_prev^T dA,
db = sum of dA, with X, H_prev and dA the (T*B, .) stacks of every step.
"""

from __future__ import annotations

import numpy as np

from ltexec.backends.base import Backend


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow: exp is only ever taken of -|x|."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def cell_forward(xproj_t, h_prev, c_prev, Wh, b):
    """One LSTM step: ``(h, c, step_cache)``.

    xproj_t (B,4H) is x_t Wx; h_prev, c_prev (B,H); Wh (H,4H); b (4H,).
    """
    H = h_prev.shape[1]
    a = xproj_t + h_prev @ Wh + b            # (B,4H) gate pre-activations
    i = sigmoid(a[:, :H])                    # (B,H) input gate
    f = sigmoid(a[:, H:2 * H])               # (B,H) forget gate
    g = np.tanh(a[:, 2 * H:3 * H])           # (B,H) candidate cell
    o = sigmoid(a[:, 3 * H:])                # (B,H) output gate
    c = f * c_prev + i * g                   # (B,H)
    tanh_c = np.tanh(c)                      # (B,H)
    h = o * tanh_c                           # (B,H)
    return h, c, (i, f, g, o, c_prev, tanh_c, Wh)


def cell_backward(dh, dc, step_cache):
    """Backward through one step: ``(da, dh_prev, dc_prev)``.

    dh (B,H) is the total gradient of h at this step, dc (B,H) the gradient
    of c arriving from the next step; da (B,4H) is the gradient of the gate
    pre-activations.
    """
    i, f, g, o, c_prev, tanh_c, Wh = step_cache
    dc = dc + dh * o * (1.0 - tanh_c * tanh_c)   # (B,H)
    do = dh * tanh_c                             # (B,H)
    di = dc * g                                  # (B,H)
    df = dc * c_prev                             # (B,H)
    dg = dc * i                                  # (B,H)
    da = np.concatenate([di * i * (1.0 - i),
                         df * f * (1.0 - f),
                         dg * (1.0 - g * g),
                         do * o * (1.0 - o)], axis=1)   # (B,4H)
    dc_prev = dc * f                             # (B,H)
    dh_prev = da @ Wh.T                          # (B,H)
    return da, dh_prev, dc_prev


class NumpyBackend(Backend):
    """The NumPy reference: readable, exact in float64, the yardstick for other backends."""

    name = "numpy"
    xp = np

    def lstm_forward(self, xs, h0, c0, Wx, Wh, b, training: bool):
        """Run :func:`cell_forward` over the window; ``cache`` keeps what the backward pass needs."""
        T, B, D, H = self._check_lstm_forward(xs, h0, c0, Wx, Wh, b)
        xproj = (xs.reshape(T * B, D) @ Wx).reshape(T, B, 4 * H)   # x_t Wx for every step
        hs = np.empty((T, B, H), dtype=h0.dtype)
        h, c = h0, c0
        step_caches = []
        for t in range(T):
            h, c, step_cache = cell_forward(xproj[t], h, c, Wh, b)
            hs[t] = h
            if training:
                step_caches.append(step_cache)
        cache = (xs, h0, hs, Wx, step_caches) if training else None
        return hs, h, c, cache

    def lstm_backward(self, dhs, dhT, dcT, cache):
        """Run :func:`cell_backward` from the last step to the first, then the weight gradients."""
        xs, h0, hs, Wx, step_caches = cache
        T, B, D = xs.shape
        H = h0.shape[1]
        self._check_lstm_backward(dhs, dhT, dcT, T, B, H)
        das = np.empty((T, B, 4 * H), dtype=dhs.dtype)
        dh, dc = dhT, dcT                    # gradients arriving from after the window
        for t in reversed(range(T)):
            das[t], dh, dc = cell_backward(dhs[t] + dh, dc, step_caches[t])
        h_prevs = np.concatenate([h0[None], hs[:-1]])                 # (T,B,H): h_{t-1} for every t
        das2 = das.reshape(T * B, 4 * H)
        dWx = xs.reshape(T * B, D).T @ das2                           # (D,4H)
        dWh = h_prevs.reshape(T * B, H).T @ das2                      # (H,4H)
        db = das2.sum(axis=0)                                         # (4H,)
        dxs = (das2 @ Wx.T).reshape(T, B, D)
        return dxs, dWx, dWh, db, dh, dc
