"""The fast CPU backend against the NumPy reference: every operation, a whole training step, bad input.

Each operation gets fresh random inputs (shapes drawn by hypothesis, down to
T=1, B=1 and odd sizes) and is run by both backends on copies of them. The
error measure is per array, ``max|cpu - ref| / max|ref|``: below 1e-4 in
float32 (the rational tanh and a different summation order move the last
bits) and below 1e-12 in float64, where both use libm and the same algebra.
Workspace arrays are poisoned with NaN before every call, so an output
element the backend forgets to write shows up as a NaN. The backend's own
paths get their own cases: batches split between lanes, and a first layer
computed from the embedding table instead of its output.
"""

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from closeness import assert_relative_error_below
from ltexec.backends import BACKENDS, available_backends, get_backend
from ltexec.backends.cpu import CpuBackend, Lanes, Workspace, _openblas_thread_setter
from ltexec.backends.numpy_backend import NumpyBackend
from ltexec.model import LSTMModel
from ltexec.optim import SGD

TOLERANCE = {np.float32: 1e-4, np.float64: 1e-12}
DTYPES = [np.float32, np.float64]
SETTINGS = settings(max_examples=25, deadline=None)

dims = st.integers(1, 13)
steps = st.integers(1, 6)
seeds = st.integers(0, 2**32 - 1)


@pytest.fixture(autouse=True)
def poisoned_workspace(monkeypatch):
    """Every workspace array is handed out full of NaN (or the int64 minimum)."""
    empty = Workspace.empty

    def poisoned(self, shape, dtype):
        array = empty(self, shape, dtype)
        array.fill(np.nan if np.dtype(dtype).kind == "f" else np.iinfo(dtype).min)
        return array

    monkeypatch.setattr(Workspace, "empty", poisoned)


def backends(dtype, lanes=None):
    return CpuBackend(dtype, threads=lanes), NumpyBackend(dtype)


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


def output_grads(rng, T, B, H, dtype):
    """What the loss sends into a layer: dhs (T,B,H), dhT and dcT (B,H)."""
    return uniform(rng, (T, B, H), dtype), uniform(rng, (B, H), dtype), uniform(rng, (B, H), dtype)


def assert_layer_backward_matches(fast, ref, grads_in, cache, cache_ref, dtype):
    """lstm_backward of both backends, each on its own copies of grads_in, agree on every gradient."""
    grads = fast.lstm_backward(*[g.copy() for g in grads_in], cache)
    grads_ref = ref.lstm_backward(*[g.copy() for g in grads_in], cache_ref)
    for name, a, e in zip(("dxs", "dWx", "dWh", "db", "dh0", "dc0"), grads, grads_ref):
        assert_close(name, a, e, dtype)


# --------------------------------------------------------------- operations


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(T=steps, B=dims, D=dims, H=dims, seed=seeds)
def test_lstm_layer_matches_reference(dtype, T, B, D, H, seed):
    rng = np.random.default_rng(seed)
    inputs = lstm_inputs(rng, T, B, D, H, dtype)
    grads_in = output_grads(rng, T, B, H, dtype)
    fast, ref = backends(dtype)

    originals = [a.copy() for a in inputs]
    hs, hT, cT, cache = fast.lstm_forward(*inputs, training=True)
    hs_ref, hT_ref, cT_ref, cache_ref = ref.lstm_forward(*originals, training=True)
    for name, a, b in zip(("hs", "hT", "cT"), (hs, hT, cT), (hs_ref, hT_ref, cT_ref)):
        assert_close(name, a, b, dtype)
    forward_out = [hs.copy(), hT.copy(), cT.copy()]

    assert_layer_backward_matches(fast, ref, grads_in, cache, cache_ref, dtype)
    # Neither pass may touch what forward was given or returned.
    for a, original in zip(inputs, originals):
        np.testing.assert_array_equal(a, original)
    for a, before in zip((hs, hT, cT), forward_out):
        np.testing.assert_array_equal(a, before)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(T=steps, B=dims, D=dims, H=dims, seed=seeds)
def test_lstm_forward_without_training_matches(dtype, T, B, D, H, seed):
    inputs = lstm_inputs(np.random.default_rng(seed), T, B, D, H, dtype)
    fast, ref = backends(dtype)
    hs, hT, cT, cache = fast.lstm_forward(*inputs, training=False)
    assert cache is None
    for name, a, b in zip(("hs", "hT", "cT"), (hs, hT, cT), ref.lstm_forward(*inputs, training=False)):
        assert_close(name, a, b, dtype)


@pytest.mark.parametrize("lanes, B", [(2, 64), (2, 97), (3, 100)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_layer_in_several_lanes_matches_reference(dtype, lanes, B):
    """Batches wide enough to be split between lanes (odd splits included)."""
    require_lanes(lanes)
    T, D, H = 3, 6, 5
    rng = np.random.default_rng(B)
    inputs = lstm_inputs(rng, T, B, D, H, dtype)
    grads_in = output_grads(rng, T, B, H, dtype)
    fast, ref = backends(dtype, lanes)
    assert len(fast.lanes.blocks(B, 32)) == lanes
    out, out_ref = fast.lstm_forward(*inputs, training=True), ref.lstm_forward(*inputs, training=True)
    for name, a, b in zip(("hs", "hT", "cT"), out[:3], out_ref[:3]):
        assert_close(name, a, b, dtype)
    assert_layer_backward_matches(fast, ref, grads_in, out[3], out_ref[3], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(T=steps, B=dims, H=dims, V=st.integers(1, 6), seed=seeds)
def test_layer_on_an_embedding_matches_reference(dtype, T, B, H, V, seed):
    """A layer fed by embedding_forward (computed from E Wx where that saves work) gives the reference's numbers.

    E changes in place after the lookup, as an optimizer step would: the
    layer must still see the looked-up values.
    """
    rng = np.random.default_rng(seed)
    E, x = uniform(rng, (V, H), dtype), rng.integers(0, V, (T, B))
    _, h0, c0, Wx, Wh, b = lstm_inputs(rng, T, B, H, H, dtype)
    grads_in = output_grads(rng, T, B, H, dtype)
    fast, ref = backends(dtype)
    xs = fast.embedding_forward(E, x)
    assert not xs.flags.writeable
    xs_ref = ref.embedding_forward(E, x)
    E += 1.0
    out, out_ref = fast.lstm_forward(xs, h0, c0, Wx, Wh, b, True), ref.lstm_forward(xs_ref, h0, c0, Wx, Wh, b, True)
    for name, a, e in zip(("hs", "hT", "cT"), out[:3], out_ref[:3]):
        assert_close(name, a, e, dtype)
    assert_layer_backward_matches(fast, ref, grads_in, out[3], out_ref[3], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(T=steps, B=dims, H=dims, V=st.integers(1, 30), seed=seeds, other_ids=st.booleans())
def test_embedding_and_first_layer_backward_match_reference(dtype, T, B, H, V, seed, other_ids):
    """embedding_lstm_backward equals lstm_backward + embedding_backward of the reference.

    With few ids (2V <= T*B) the layer runs on E Wx and dE comes from S Wx^T
    without dxs; otherwise, or when the ids given are not the ones looked up,
    the backend takes the two-step way.
    """
    rng = np.random.default_rng(seed)
    E, x = uniform(rng, (V, H), dtype), rng.integers(0, V, (T, B))
    ids = rng.integers(0, V, (T, B)) if other_ids else x.copy()
    _, h0, c0, Wx, Wh, b = lstm_inputs(rng, T, B, H, H, dtype)
    grads_in = output_grads(rng, T, B, H, dtype)
    fast, ref = backends(dtype)
    cache = fast.lstm_forward(fast.embedding_forward(E, x), h0, c0, Wx, Wh, b, True)[3]
    assert (cache.embedded is not None) == (2 * V <= T * B)
    cache_ref = ref.lstm_forward(ref.embedding_forward(E, x), h0, c0, Wx, Wh, b, True)[3]
    grads = fast.embedding_lstm_backward(*[g.copy() for g in grads_in], cache, ids, V)
    dxs_ref, *grads_ref = ref.lstm_backward(*[g.copy() for g in grads_in], cache_ref)
    grads_ref = [ref.embedding_backward(dxs_ref, ids, V)] + grads_ref
    for name, a, e in zip(("dE", "dWx", "dWh", "db", "dh0", "dc0"), grads, grads_ref):
        assert_close(name, a, e, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(T=steps, B=dims, D=dims, V=dims, seed=seeds)
def test_embedding_matches_reference(dtype, T, B, D, V, seed):
    rng = np.random.default_rng(seed)
    E, x = uniform(rng, (V, D), dtype), rng.integers(0, V, (T, B))
    dxs = uniform(rng, (T, B, D), dtype)
    fast, ref = backends(dtype)
    assert_close("xs", fast.embedding_forward(E, x), ref.embedding_forward(E, x), dtype)
    assert_close("dE", fast.embedding_backward(dxs, x, V), ref.embedding_backward(dxs, x, V), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(T=steps, B=dims, H=dims, V=dims, seed=seeds)
def test_linear_matches_reference(dtype, T, B, H, V, seed):
    rng = np.random.default_rng(seed)
    hs, W, b = uniform(rng, (T, B, H), dtype), uniform(rng, (H, V), dtype), uniform(rng, (V,), dtype)
    dlogits = uniform(rng, (T, B, V), dtype)
    fast, ref = backends(dtype)
    assert_close("logits", fast.linear_forward(hs, W, b), ref.linear_forward(hs, W, b), dtype)
    for name, a, e in zip(("dhs", "dW", "db"), fast.linear_backward(dlogits, hs, W),
                          ref.linear_backward(dlogits, hs, W)):
        assert_close(name, a, e, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(T=steps, B=dims, V=dims, seed=seeds, ties=st.booleans())
def test_softmax_xent_matches_reference(dtype, T, B, V, seed, ties):
    rng = np.random.default_rng(seed)
    # With ties, logits are small integers, so rows have several maxima: the first one counts.
    logits = (rng.integers(-2, 3, (T, B, V)) if ties else rng.normal(0, 3, (T, B, V))).astype(dtype)
    y = rng.integers(0, V, (T, B))
    mask = (rng.random((T, B)) < 0.5).astype(dtype)
    fast, ref = backends(dtype)
    loss, dlogits, correct = fast.softmax_xent(logits, y, mask)
    loss_ref, dlogits_ref, correct_ref = ref.softmax_xent(logits, y, mask)
    assert isinstance(loss, float) and isinstance(correct, int)
    assert correct == correct_ref
    assert_close("loss", loss, loss_ref, dtype)
    assert_close("dlogits", dlogits, dlogits_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(sizes=st.lists(dims, min_size=1, max_size=4), seed=seeds,
       momentum=st.sampled_from([0.0, 0.9]), factor=st.floats(0.01, 2.0))
def test_optimizer_ops_match_reference(dtype, sizes, seed, momentum, factor):
    rng = np.random.default_rng(seed)
    shapes = [(n,) if k % 2 else (n, sizes[0]) for k, n in enumerate(sizes)]
    params = {f"p{k}": uniform(rng, s, dtype) for k, s in enumerate(shapes)}
    grads = {name: uniform(rng, p.shape, dtype) for name, p in params.items()}
    velocity = {name: uniform(rng, p.shape, dtype) for name, p in params.items()}
    fast, ref = backends(dtype)
    copies = [{k: v.copy() for k, v in d.items()} for d in (params, grads, velocity)]

    assert_close("norm", fast.global_norm(grads), ref.global_norm(copies[1]), dtype)
    fast.scale_(grads, factor)
    ref.scale_(copies[1], factor)
    fast.sgd_update_(params, grads, velocity if momentum else None, 0.3, momentum)
    ref.sgd_update_(copies[0], copies[1], copies[2] if momentum else None, 0.3, momentum)
    for name in params:
        assert_close(f"grads[{name}]", grads[name], copies[1][name], dtype)
        assert_close(f"params[{name}]", params[name], copies[0][name], dtype)
        assert_close(f"velocity[{name}]", velocity[name], copies[2][name], dtype)


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


# ------------------------------------------------------------ whole model


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layers, hidden, batch, window", [(2, 9, 5, 7), (1, 3, 1, 1), (3, 16, 4, 3), (2, 8, 70, 3)])
def test_training_steps_match_numpy(dtype, layers, hidden, batch, window):
    """Two loss_and_grads + SGD steps (state carried) through LSTMModel give the reference's numbers."""
    V = 11
    rng = np.random.default_rng(layers * 100 + hidden)
    models = {name: LSTMModel(V, hidden, layers, backend=name, dtype=dtype, init_scale=0.5, seed=3)
              for name in ("cpu", "numpy")}
    optimizers = {name: SGD(lr=0.5, momentum=0.9, clip=1.0) for name in models}
    states = {name: None for name in models}
    results, norms = {}, {}
    for step in range(2):
        x, y = rng.integers(0, V, (window, batch)), rng.integers(0, V, (window, batch))
        mask = (rng.random((window, batch)) < 0.5).astype(dtype)
        mask[0, 0] = 1.0
        for name, model in models.items():
            results[name] = model.loss_and_grads(x, y, mask, states[name])
            norms[name] = optimizers[name].step(model.backend, model.params, results[name].grads)
            states[name] = results[name].state
        fast, ref = results["cpu"], results["numpy"]
        assert fast.correct == ref.correct and fast.count == ref.count
        assert_close("loss", fast.loss, ref.loss, dtype)
        assert_close("norm", norms["cpu"], norms["numpy"], dtype)
        for name in ref.grads:
            assert_close(f"step {step} grads[{name}]", fast.grads[name], ref.grads[name], dtype)
            assert_close(f"step {step} params[{name}]", models["cpu"].params[name],
                         models["numpy"].params[name], dtype)
        for k in range(layers):
            for part in range(2):
                assert_close(f"state[{k}][{part}]", fast.state[k][part], ref.state[k][part], dtype)
                assert_close(f"dstate[{k}][{part}]", fast.dstate[k][part], ref.dstate[k][part], dtype)


def test_held_results_survive_later_steps():
    """Workspace reuse never overwrites arrays a caller still holds (gradients, state, logits)."""
    V, T, B = 7, 4, 3
    model = LSTMModel(V, hidden=5, layers=2, backend="cpu", dtype=np.float64, seed=1)
    rng = np.random.default_rng(0)
    x, y, mask = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B)), np.ones((T, B))
    first = model.loss_and_grads(x, y, mask, None)
    kept = {name: g.copy() for name, g in first.grads.items()}
    kept_state = [(h.copy(), c.copy()) for h, c in first.state]
    logits, _ = model.forward(x, None)
    kept_logits = logits.copy()
    for _ in range(2):
        model.loss_and_grads(x, y, mask, first.state)
        model.forward(x, None)
    for name, g in first.grads.items():
        np.testing.assert_array_equal(g, kept[name])
    for (h, c), (h_kept, c_kept) in zip(first.state, kept_state):
        np.testing.assert_array_equal(h, h_kept)
        np.testing.assert_array_equal(c, c_kept)
    np.testing.assert_array_equal(logits, kept_logits)


def test_workspace_reuses_only_unreferenced_arrays():
    ws = Workspace()
    a = ws.empty((3, 4), np.float32)
    assert ws.empty((3, 4), np.float32) is not a          # a is held
    view = a[1:]
    a_id = id(a)
    del a
    assert id(ws.empty((3, 4), np.float32)) != a_id       # held through a view
    del view
    free = ws.empty((3, 4), np.float32)
    free_id = id(free)
    del free
    assert id(ws.empty((3, 4), np.float32)) == free_id     # the same array again, once dropped
    assert ws.empty((3, 4), np.float64).dtype == np.float64


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
    monkeypatch.setattr("ltexec.backends.cpu._openblas_thread_setter", lambda: None)
    assert Lanes(3).count == 1 and Lanes(None).count == 1
    with pytest.raises(ValueError, match="at least 1"):
        Lanes(0)


def test_registry_prefers_cpu_over_numpy():
    assert available_backends()["cpu"] is None
    assert BACKENDS.index("cpu") < BACKENDS.index("numpy")
    assert isinstance(get_backend("cpu", np.float64), CpuBackend)


# --------------------------------------------------------------- bad input


def _lstm_args(dtype=np.float32):
    return list(lstm_inputs(np.random.default_rng(0), 3, 2, 4, 5, dtype))


@pytest.mark.parametrize("position, bad, error", [
    (0, lambda a: a.astype(np.float64), TypeError),            # xs of the wrong dtype
    (0, lambda a: a.tolist(), TypeError),                       # not an array
    (0, lambda a: a[:, :, :2], ValueError),                     # xs width disagrees with Wx
    (0, lambda a: np.asfortranarray(a), ValueError),            # not C-contiguous
    (1, lambda a: a[:1], ValueError),                           # h0 batch disagrees with xs
    (2, lambda a: a.T.copy(), ValueError),                      # c0 transposed
    (3, lambda a: a[:, ::2], ValueError),                       # Wx non-contiguous and narrow
    (4, lambda a: a[:, :-1].copy(), ValueError),                # Wh not (H, 4H)
    (5, lambda a: a[None], ValueError),                         # b with an extra axis
])
def test_lstm_forward_rejects_bad_input(position, bad, error):
    args = _lstm_args()
    args[position] = bad(args[position])
    with pytest.raises(error):
        CpuBackend(np.float32).lstm_forward(*args, training=True)


def test_lstm_backward_rejects_bad_input():
    bk = CpuBackend(np.float32)
    hs, hT, cT, cache = bk.lstm_forward(*_lstm_args(), training=True)
    with pytest.raises(TypeError, match="cache"):
        bk.lstm_backward(hs.copy(), hT, cT, None)
    with pytest.raises(ValueError, match="dhs"):
        bk.lstm_backward(hs[:-1].copy(), hT, cT, cache)
    with pytest.raises(TypeError, match="dhT"):
        bk.lstm_backward(hs.copy(), hT.astype(np.float64), cT, cache)


def test_ids_are_checked():
    bk = CpuBackend(np.float32)
    E = np.zeros((5, 3), np.float32)
    with pytest.raises(ValueError, match="outside"):
        bk.embedding_forward(E, np.array([[0, 5]]))
    with pytest.raises(ValueError, match="outside"):
        bk.embedding_backward(np.zeros((1, 2, 3), np.float32), np.array([[-1, 0]]), 5)
    with pytest.raises(TypeError, match="int64"):
        bk.embedding_forward(E, np.array([[0, 1]], dtype=np.int32))
    logits, mask = np.zeros((1, 2, 5), np.float32), np.ones((1, 2), np.float32)
    with pytest.raises(ValueError, match="outside"):
        bk.softmax_xent(logits, np.array([[0, 7]]), mask)
    with pytest.raises(ValueError, match="mask"):
        bk.softmax_xent(logits, np.array([[0, 1]]), mask[:, :1])


def test_optimizer_ops_reject_bad_input():
    bk = CpuBackend(np.float32)
    params = {"w": np.zeros((2, 3), np.float32)}
    with pytest.raises(TypeError, match="float32"):
        bk.global_norm({"w": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="shape"):
        bk.sgd_update_(params, {"w": np.zeros((3, 2), np.float32)}, None, 0.1, 0.0)
    with pytest.raises(ValueError, match="contiguous"):
        bk.scale_({"w": np.zeros((3, 4), np.float32)[:, ::2]}, 0.5)
