"""Numba kernels of the fast CPU backend: the pointwise work between the matrix products.

Every kernel is one pass over its data, compiled once per dtype and cached on
disk (``cache=True``), single-threaded and free of the GIL: the backend runs
several at once on disjoint rows or columns (its lanes). Numba's own
``parallel=True`` would start a second thread pool next to the BLAS's.

The LSTM gates need five transcendentals per hidden unit and step. Numba turns
``math.tanh``/``math.exp`` into scalar libm calls, which stops LLVM from
vectorizing the loop, so in float32 :func:`tanh_` is a rational function of
plain arithmetic (Eigen's float32 tanh: accurate to a few ulp, exact +-1 once
clamped) and the sigmoid is ``0.5 + 0.5 tanh(x/2)``. float64 keeps libm,
since its results are compared tightly with the NumPy reference.

Loops run over whole rows with the hidden unit ``j`` innermost, each gate
block a view indexed from 0, so every access is a contiguous stream. Sums
(bias gradient, loss, norm) accumulate in float64.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

# Reassociation and contraction let LLVM vectorize reductions and use FMA; no
# "nnan"/"ninf", so a NaN or infinity still reaches the caller's finiteness checks.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

jit = njit(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")

# Eigen's float32 tanh: odd numerator of degree 13, even denominator of degree 6,
# on inputs clamped to where tanh rounds to +-1 in float32.
_TANH_CLAMP = np.float32(7.90531110763549805)
_TANH_P = tuple(np.float32(c) for c in (
    -2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
    1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03))
_TANH_Q = tuple(np.float32(c) for c in (
    1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03))
_P13, _P11, _P9, _P7, _P5, _P3, _P1 = _TANH_P
_Q6, _Q4, _Q2, _Q0 = _TANH_Q


def tanh_(x):
    """tanh of a scalar: rational and vectorizable for float32, libm for float64 (jitted code only)."""
    return math.tanh(x)


def sigmoid_(x):
    """Logistic function of a scalar, built on :func:`tanh_` (jitted code only)."""
    return 0.5 + 0.5 * math.tanh(0.5 * x)


@overload(tanh_, jit_options={"fastmath": FASTMATH})
def _tanh_impl(x):
    if x == types.float32:
        def rational_tanh(x):
            x = _TANH_CLAMP if x > _TANH_CLAMP else (-_TANH_CLAMP if x < -_TANH_CLAMP else x)
            x2 = x * x
            p = x2 * _P13 + _P11
            p = x2 * p + _P9
            p = x2 * p + _P7
            p = x2 * p + _P5
            p = x2 * p + _P3
            p = x2 * p + _P1
            q = x2 * _Q6 + _Q4
            q = x2 * q + _Q2
            q = x2 * q + _Q0
            return x * p / q
        return rational_tanh
    return lambda x: math.tanh(x)


@overload(sigmoid_, jit_options={"fastmath": FASTMATH})
def _sigmoid_impl(x):
    if x == types.float32:
        half = np.float32(0.5)
        return lambda x: half + half * tanh_(half * x)
    return lambda x: 1.0 / (1.0 + math.exp(-x))


# ------------------------------------------------------------------ LSTM cell


@jit
def gate_blocks(a, H):
    """The i, f, g, o blocks of a (4H,) row as views.

    Indexing the views with a loop index from 0 keeps every access provably
    in range; ``a[2*H + j]`` would make Numba handle negative indices on
    each access, and the loop would not vectorize.
    """
    return a[:H], a[H:2 * H], a[2 * H:3 * H], a[3 * H:]


@jit
def cell_forward(gates, rec, b, cs, tanh_c, hs, t, r0, r1, table, ids):
    """One LSTM step for columns r0..r1-1, in place.

    gates (T,B,4H): on entry gates[t] holds x_t Wx, on exit the activations
    i, f, g, o; if ids (T,B) is not empty, x_t Wx is instead the row
    table[ids[t, r]] of table (V,4H) (an embedded input: the rows of E Wx).
    rec (B,4H) is h_{t-1} Wh, b (4H,) the bias. cs (T+1,B,H) holds
    c_{t-1} in cs[t] and receives c_t in cs[t+1]; hs (T+1,B,H) likewise
    receives h_t in hs[t+1]; tanh_c (T,B,H) receives tanh(c_t) in tanh_c[t].

    A row takes two passes: the pre-activations a = x_t Wx + h_{t-1} Wh + b
    over all 4H columns, then the gates; two short loops vectorize better
    than one that streams twelve arrays at once.
    """
    H = cs.shape[2]
    for r in range(r0, r1):
        a, h_part = gates[t, r], rec[r]
        if ids.size:
            x_part = table[ids[t, r]]
            for k in range(4 * H):
                a[k] = x_part[k] + h_part[k] + b[k]
        else:
            for k in range(4 * H):
                a[k] += h_part[k] + b[k]
        a_i, a_f, a_g, a_o = gate_blocks(a, H)
        c_prev, c, tc, h = cs[t, r], cs[t + 1, r], tanh_c[t, r], hs[t + 1, r]
        for j in range(H):
            i = sigmoid_(a_i[j])
            f = sigmoid_(a_f[j])
            g = tanh_(a_g[j])
            o = sigmoid_(a_o[j])
            c_t = f * c_prev[j] + i * g
            tanh_c_t = tanh_(c_t)
            a_i[j], a_f[j], a_g[j], a_o[j] = i, f, g, o
            c[j] = c_t
            tc[j] = tanh_c_t
            h[j] = o * tanh_c_t


@jit
def cell_backward(gates, dhs, dh_next, dc, cs, tanh_c, db, t, r0, r1):
    """Backward through one LSTM step for columns r0..r1-1, in place.

    gates (T,B,4H): on entry gates[t] holds the activations i, f, g, o, on exit
    the pre-activation gradient da_t. dhs (T,B,H) is what the loss sends into
    h_t, dh_next (B,H) what step t+1 sends into it (h_t's share of
    da_{t+1} Wh^T). dc (B,H) holds on entry the gradient of c_t from step t+1
    and on exit that of c_{t-1}. cs (T+1,B,H) holds c_{t-1} in cs[t],
    tanh_c (T,B,H) holds tanh(c_t). db (4H,) float64 accumulates da_t's
    column sums, which are first summed over these rows in the gates' dtype
    (a few dozen terms) so that the loop vectorizes at full width.
    """
    H = dc.shape[1]
    one = gates.dtype.type(1.0)
    step_db = np.zeros(4 * H, gates.dtype)                  # sum of da_t over rows r0..r1-1
    db_i, db_f, db_g, db_o = gate_blocks(step_db, H)
    for r in range(r0, r1):
        a_i, a_f, a_g, a_o = gate_blocks(gates[t, r], H)     # i, f, g, o in; da out
        dh_out, dh_rec, dc_r, c_prev, tc = dhs[t, r], dh_next[r], dc[r], cs[t, r], tanh_c[t, r]
        for j in range(H):
            i, f, g, o = a_i[j], a_f[j], a_g[j], a_o[j]
            dh = dh_out[j] + dh_rec[j]
            tanh_c_t = tc[j]
            dc_t = dc_r[j] + dh * o * (one - tanh_c_t * tanh_c_t)
            da_i = dc_t * g * i * (one - i)
            da_f = dc_t * c_prev[j] * f * (one - f)
            da_g = dc_t * i * (one - g * g)
            da_o = dh * tanh_c_t * o * (one - o)
            a_i[j], a_f[j], a_g[j], a_o[j] = da_i, da_f, da_g, da_o
            db_i[j] += da_i
            db_f[j] += da_f
            db_g[j] += da_g
            db_o[j] += da_o
            dc_r[j] = dc_t * f
    for k in range(4 * H):
        db[k] += step_db[k]


# ------------------------------------------------------- embedding, output


@jit
def sum_rows_by_id(src, ids, out, c0, c1):
    """out[:, c0:c1] (V,K) = the rows of src[:, c0:c1] (N,K) summed per id of ids (N,); all of it written.

    The embedding gradient (rows of dxs per token) and, for a first layer
    fed by the embedding, its input-weight gradient (rows of dA per token).
    """
    out[:, c0:c1] = 0
    for n in range(ids.shape[0]):
        row, add = out[ids[n], c0:c1], src[n, c0:c1]
        for j in range(c1 - c0):
            row[j] += add[j]


@jit
def softmax_xent(logits, y, mask, dlogits, r0, r1):
    """Masked softmax cross-entropy over rows r0..r1-1 of logits (N,V), one pass per row.

    Writes dlogits (N,V) = (softmax - onehot(y)) * mask on those rows and
    returns their masked loss sum (float64) and how many masked rows have
    their first argmax at y.
    """
    V = logits.shape[1]
    one = logits.dtype.type(1.0)
    loss = 0.0
    correct = 0
    for n in range(r0, r1):
        row, grad = logits[n], dlogits[n]               # (V,)
        best = 0
        for v in range(1, V):
            if row[v] > row[best]:
                best = v
        top = row[best]
        total = 0.0
        for v in range(V):
            e = math.exp(row[v] - top)
            grad[v] = e
            total += e
        m = mask[n]
        target = y[n]
        loss -= m * (row[target] - top - math.log(total))
        if m != 0 and best == target:
            correct += 1
        scale = m * (one / total)
        for v in range(V):
            grad[v] *= scale
        grad[target] -= m
    return loss, correct


@jit
def column_sums(a, out):
    """out (K,) = sums of the columns of a (N,K), accumulated in float64 per column."""
    N, K = a.shape
    acc = np.zeros(K, np.float64)
    for n in range(N):
        row = a[n]
        for k in range(K):
            acc[k] += row[k]
    for k in range(K):
        out[k] = acc[k]


# ------------------------------------------------------------------ optimizer


@jit
def sum_of_squares(a):
    """Sum of a (N,)**2, accumulated in float64."""
    total = 0.0
    for k in range(a.shape[0]):
        total += np.float64(a[k]) * a[k]
    return total


@jit
def sgd_update(p, g, lr):
    """p (N,) -= lr * g (N,)."""
    step = p.dtype.type(lr)
    for k in range(p.shape[0]):
        p[k] -= step * g[k]


@jit
def sgd_momentum_update(p, g, v, lr, momentum):
    """v = momentum * v + g; p -= lr * v (all (N,))."""
    step, mu = p.dtype.type(lr), p.dtype.type(momentum)
    for k in range(p.shape[0]):
        v_k = mu * v[k] + g[k]
        v[k] = v_k
        p[k] -= step * v_k
