"""What only the fast CPU backend has: lanes, the E Wx path of the first layer, its tanh, BLAS threads.

Every operation against the NumPy reference, for this backend as for every
other, is in tests/backends/test_conformance.py. Here: batches split between
lanes, the choice between a lookup and ``E Wx`` for the first layer, the
float32 rational tanh, the lanes' arithmetic, threads and failures, and the
BLAS thread count around a job. Error measure as there: ``max|cpu - ref| /
max|ref|`` below 1e-4 in float32 and 1e-12 in float64, with pool buffers
poisoned with NaN.
"""

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ltexec.testing import assert_relative_error_below
from ltexec.backends import BACKENDS, available_backends, get_backend
from ltexec.backends.common import BufferPool
from ltexec.backends.cpu.backend import CpuBackend, Lanes, _openblas_thread_setter
from ltexec.backends.numpy.backend import NumpyBackend
from ltexec.model import LSTMModel

TOLERANCE = {np.float32: 1e-4, np.float64: 1e-12}
DTYPES = [np.float32, np.float64]


@pytest.fixture(autouse=True)
def poisoned_pool(monkeypatch):
    """Every pool buffer is handed out full of NaN."""
    take = BufferPool.take

    def poisoned(self, shape, dtype):
        array = take(self, shape, dtype)
        array.fill(np.nan)
        return array

    monkeypatch.setattr(BufferPool, "take", poisoned)


def require_lanes(count):
    """Skip unless the BLAS can be set to one thread, as more than one lane needs."""
    if Lanes(count).count != count:
        pytest.skip("the BLAS cannot be set to one thread (not OpenBLAS), so there is one lane")


def assert_close(name, actual, expected, dtype):
    assert_relative_error_below(name, actual, expected, TOLERANCE[dtype])


def uniform(rng, shape, dtype, scale=1.0):
    return rng.uniform(-scale, scale, shape).astype(dtype)


def lstm_inputs(rng, T, B, D, H, dtype):
    """xs, h0, c0, Wx, Wh, b with the gates away from both their linear and saturated ranges."""
    return (uniform(rng, (T, B, D), dtype), uniform(rng, (B, H), dtype), uniform(rng, (B, H), dtype),
            uniform(rng, (D, 4 * H), dtype, 0.7), uniform(rng, (H, 4 * H), dtype, 0.7),
            uniform(rng, (4 * H,), dtype, 0.5))


def assert_layer_matches(fast, ref, inputs, grads_in, dtype):
    """Forward and backward of one layer on both backends, each on its own copies, agree."""
    out = fast.lstm_forward(*[a.copy() for a in inputs], training=True)
    out_ref = ref.lstm_forward(*inputs, training=True)
    for name, a, e in zip(("hs", "hT", "cT"), out[:3], out_ref[:3]):
        assert_close(name, a, e, dtype)
    grads = fast.lstm_backward(*[g.copy() for g in grads_in], out[3])
    grads_ref = ref.lstm_backward(*[g.copy() for g in grads_in], out_ref[3])
    for name, a, e in zip(("dxs", "dWx", "dWh", "db", "dh0", "dc0"), grads, grads_ref):
        assert_close(name, a, e, dtype)


# --------------------------------------------------------------- lanes and paths


@pytest.mark.parametrize("lanes, B", [(2, 64), (2, 97), (3, 100)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_layer_in_several_lanes_matches_reference(dtype, lanes, B):
    """Batches wide enough to be split between lanes (odd splits included)."""
    require_lanes(lanes)
    T, D, H = 3, 6, 5
    rng = np.random.default_rng(B)
    inputs = lstm_inputs(rng, T, B, D, H, dtype)
    grads_in = uniform(rng, (T, B, H), dtype), uniform(rng, (B, H), dtype), uniform(rng, (B, H), dtype)
    fast = CpuBackend(dtype, threads=lanes)
    assert len(fast.lanes.blocks(B, 32)) == lanes
    assert_layer_matches(fast, NumpyBackend(dtype), inputs, grads_in, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=10, deadline=None)
@given(T=st.integers(1, 6), B=st.integers(1, 13), H=st.integers(1, 13), V=st.integers(1, 30),
       seed=st.integers(0, 2**32 - 1))
def test_first_layer_runs_on_e_wx_where_that_is_less_work(dtype, T, B, H, V, seed):
    """embedding_lstm_forward takes E Wx when 2V <= T*B (its cache keeps E and x), else the lookup.

    Either way its numbers are the reference's (the conformance suite checks
    that for drawn shapes; here for both sides of the rule).
    """
    rng = np.random.default_rng(seed)
    E, x = uniform(rng, (V, H), dtype), rng.integers(0, V, (T, B))
    _, h0, c0, Wx, Wh, b = lstm_inputs(rng, T, B, H, H, dtype)
    fast, ref = CpuBackend(dtype), NumpyBackend(dtype)
    out = fast.embedding_lstm_forward(E, x, h0, c0, Wx, Wh, b, True)
    cache = out[3]
    assert (cache.E is not None) == (2 * V <= T * B) == (cache.x is not None) == (cache.xs is None)
    out_ref = ref.lstm_forward(ref.embedding_forward(E, x), h0, c0, Wx, Wh, b, True)
    for name, a, e in zip(("hs", "hT", "cT"), out[:3], out_ref[:3]):
        assert_close(name, a, e, dtype)
    grads_in = uniform(rng, (T, B, H), dtype), uniform(rng, (B, H), dtype), uniform(rng, (B, H), dtype)
    grads = fast.embedding_lstm_backward(*[g.copy() for g in grads_in], cache, x.copy(), V)
    dxs_ref, *grads_ref = ref.lstm_backward(*[g.copy() for g in grads_in], out_ref[3])
    grads_ref = [ref.embedding_backward(dxs_ref, x, V)] + grads_ref
    for name, a, e in zip(("dE", "dWx", "dWh", "db", "dh0", "dc0"), grads, grads_ref):
        assert_close(name, a, e, dtype)


def test_rational_tanh_is_accurate():
    """The float32 tanh (and the sigmoid built on it) stays within 5e-7 (a few float32 ulp) of exact values."""
    x = np.linspace(-12, 12, 200_001).astype(np.float32)
    # One step of a 1-unit layer with Wx = 1 and nothing else: every gate's pre-activation is x.
    B, f32 = x.size, np.float32
    hs, hT, cT, cache = CpuBackend(f32).lstm_forward(
        x.reshape(1, B, 1), np.zeros((B, 1), f32), np.zeros((B, 1), f32), np.ones((1, 4), f32),
        np.zeros((1, 4), f32), np.zeros(4, f32), training=True)
    exact = x.astype(np.float64)
    sigmoid, tanh = 1 / (1 + np.exp(-exact)), np.tanh(exact)
    i, f, g, o = cache.gates[0].astype(np.float64).T
    for name, actual, expected in (("i", i, sigmoid), ("f", f, sigmoid), ("g", g, tanh), ("o", o, sigmoid),
                                   ("c", cT[:, 0], sigmoid * tanh),
                                   ("h", hT[:, 0], sigmoid * np.tanh(sigmoid * tanh))):
        error = np.abs(actual - expected).max()
        assert error < 5e-7, f"{name}: largest error {error:.3g}"


# ------------------------------------------------------------------ lanes


def test_lanes_split_every_range_into_near_equal_blocks():
    lanes = Lanes(1)
    lanes.count = 3                       # the arithmetic only; no threads are started
    assert lanes.blocks(100, 32) == [(0, 32), (32, 64), (64, 100)]     # edges on multiples of 8
    assert lanes.blocks(96, 32) == [(0, 32), (32, 64), (64, 96)]
    assert lanes.blocks(64, 32) == [(0, 32), (32, 64)]
    assert lanes.blocks(5, 32) == [(0, 5)]
    assert lanes.blocks(2) == [(0, 1), (1, 2)]
    assert lanes.blocks(20) == [(0, 6), (6, 13), (13, 20)]              # too few rows to align
    lanes.count = 2
    assert lanes.blocks(100, 32) == [(0, 48), (48, 100)]
    assert lanes.blocks(70, 34) == [(0, 35), (35, 70)]                  # aligning would leave 32 < 34


@pytest.mark.parametrize("lanes", [1, 2, 3])
def test_lanes_compute_several_products_exactly(lanes):
    """Products dealt out by rows across lanes (shares ending mid-product) equal plain matmul, every row written."""
    require_lanes(lanes)
    rng = np.random.default_rng(lanes)
    shapes = [(97, 130, 301), (411, 160, 75), (5, 64, 33), (203, 257, 128)]    # (m, k, n), ~4e7 FLOPs
    products = [(rng.standard_normal((m, k)), rng.standard_normal((k, n)), np.full((m, n), np.nan))
                for m, k, n in shapes]
    Lanes(lanes).matmul(*products)
    for a, b, out in products:
        np.testing.assert_allclose(out, a @ b, rtol=1e-12, atol=1e-12)


def test_lanes_reraise_a_failing_block():
    require_lanes(2)
    lanes = Lanes(2)

    def job(lane, lo, hi):
        if lane == 1:
            raise RuntimeError("block failed")

    with pytest.raises(RuntimeError, match="block failed"):
        lanes.run(job, lanes.blocks(10))


def test_lanes_wait_for_every_block_when_the_callers_block_fails():
    """A failure in lane 0 (the caller) is raised only after the other lanes have finished with the buffers."""
    require_lanes(2)
    lanes = Lanes(2)
    finished = []

    def job(lane, lo, hi):
        if lane == 0:
            raise KeyboardInterrupt
        time.sleep(0.05)
        finished.append(lane)

    with pytest.raises(KeyboardInterrupt):
        lanes.run(job, lanes.blocks(10))
    assert finished == [1]
    lanes.run(lambda lane, lo, hi: finished.append(lane), lanes.blocks(10))   # the lanes still serve
    assert sorted(finished) == [0, 1, 1]


def test_blas_threads_are_restored_after_each_operation():
    """Lanes run the BLAS single-threaded only while a job runs; other NumPy code keeps its threads."""
    require_lanes(2)
    set_threads = _openblas_thread_setter()
    model = LSTMModel(7, hidden=8, layers=2, backend=CpuBackend(np.float32, threads=2))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 7, (4, 70))
    previous = set_threads(3)
    try:
        model.loss_and_grads(x, x, np.ones(x.shape), None)
    finally:
        during = set_threads(previous)
    assert during == 3


def test_threads_cap_the_lanes():
    assert CpuBackend(np.float32, threads=1).lanes.count == 1
    assert get_backend("cpu", np.float32, threads=1).lanes.count == 1
    default = CpuBackend(np.float32).lanes.count
    assert CpuBackend(np.float32, threads=default + 5).lanes.count == default + 5 or default == 1
    with pytest.raises(ValueError, match="threads"):
        CpuBackend(np.float32, threads=0)


def test_lanes_without_a_settable_blas_are_one(monkeypatch):
    """More lanes than the BLAS allows is a cap, not an error: one lane."""
    monkeypatch.setattr("ltexec.backends.cpu.backend._openblas_thread_setter", lambda: None)
    assert Lanes(3).count == 1 and Lanes(None).count == 1
    with pytest.raises(ValueError, match="at least 1"):
        Lanes(0)


def test_registry_prefers_cpu_over_numpy():
    assert available_backends()["cpu"] is None
    assert BACKENDS.index("cpu") < BACKENDS.index("numpy")
    assert isinstance(get_backend("cpu", np.float64), CpuBackend)
