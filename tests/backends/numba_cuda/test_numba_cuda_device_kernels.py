"""The numba_cuda kernels against the NumPy reference (on the CUDA simulator, or a GPU).

The backend's operations and a whole model are checked against the reference
by the conformance suite (tests/backends), for this backend as for every
other. Here every kernel is launched through a checking ``Launcher`` on
fresh random inputs (never zeros) with its outputs poisoned with NaN first,
so an element a kernel forgets to write shows up. Shapes are tiny, because the simulator
runs every CUDA thread as a Python thread, but they include sizes that are
not multiples of the tiles and sizes that need several blocks along a grid
dimension and several k-chunks. The reference runs in float64 on the same
numbers. Tolerance, as max|kernel - reference| / max|reference| per array:
1e-12 for float64 kernels, 1e-5 for float32 ones.
"""

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ltexec.testing import assert_relative_error_below
from ltexec.backends import BackendUnavailable, available_backends, get_backend
from ltexec.backends.numba_cuda import kernels as nk
from ltexec.backends.numba_cuda import persistent as P
from ltexec.backends.numba_cuda.backend import NumbaCudaBackend, _simulator_active
from ltexec.backends.numpy.backend import cell_backward, cell_forward
from ltexec.model import LSTMModel

DTYPES = [np.float32, np.float64]
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}
FEW = settings(max_examples=6, deadline=None)
MODE = "simulator" if _simulator_active() else "device"   # conftest collects this file for nothing else


def assert_close(name, actual, expected, dtype):
    """Relative error below TOLERANCE[dtype], and no NaN left by a missed write."""
    assert_relative_error_below(name, actual, expected, TOLERANCE[dtype])


class Arrays:
    """Random host inputs of one dtype, moved to the backend, and NaN-poisoned outputs."""

    def __init__(self, backend, seed):
        self.backend, self.rng = backend, np.random.default_rng(seed)
        self.launcher = nk.Launcher(backend.dtype, backend.xp)   # one that checks every call, as a unit

    def uniform(self, shape, scale=1.0):
        """(host, device) copies of the same uniform numbers in [-scale, scale]; never the same array."""
        host = self.rng.uniform(-scale, scale, shape).astype(self.backend.dtype)
        return host, self.backend.asarray(host.copy())

    def poisoned(self, shape):
        return self.backend.asarray(np.full(shape, np.nan, self.backend.dtype))

    def host(self, device_array):
        return np.array(self.backend.to_numpy(device_array), dtype=np.float64)


# ------------------------------------------------------------------- kernels

# (M, N, K, trans_a, trans_b, bias): every transpose and bias combination at small sizes, and
# 67 x 70 x 19, which needs 2 x 2 blocks of 16 x 16 threads and two k-chunks.
GEMM_CASES = ([(5, 7, 3, ta, tb, bias) for ta in (False, True) for tb in (False, True) for bias in (False, True)]
              + [(1, 1, 1, False, False, True), (13, 6, 17, True, False, False),
                 (67, 70, 19, False, True, True), (70, 67, 19, True, False, False)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M, N, K, trans_a, trans_b, bias", GEMM_CASES)
def test_gemm_matches_matmul(make_backend, dtype, M, N, K, trans_a, trans_b, bias):
    arrays = Arrays(make_backend(dtype), seed=M * N * K)
    A, A_dev = arrays.uniform((K, M) if trans_a else (M, K))
    B, B_dev = arrays.uniform((N, K) if trans_b else (K, N))
    b, b_dev = arrays.uniform((N,))
    C = arrays.poisoned((M, N))
    arrays.launcher.gemm(A_dev, B_dev, C, trans_a, trans_b, b_dev if bias else None)
    expected = (A.T if trans_a else A).astype(np.float64) @ (B.T if trans_b else B) + (b if bias else 0)
    assert_close("C", arrays.host(C), expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M, N", [(1, 1), (5, 3), (300, 2), (9, 40)])
def test_column_sums(make_backend, dtype, M, N):
    arrays = Arrays(make_backend(dtype), seed=M + N)
    A, A_dev = arrays.uniform((M, N))
    out = arrays.poisoned((N,))
    arrays.launcher.column_sums(A_dev, out)
    assert_close("sums", arrays.host(out), A.astype(np.float64).sum(axis=0), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T, B, H", [(1, 1, 1), (3, 2, 5), (2, 9, 5), (2, 2, 33)])
def test_lstm_steps_match_reference_cells(make_backend, dtype, T, B, H):
    """All fused forward steps, then all fused backward steps, against the reference's cells.

    (2, 9, 5) needs two blocks along the batch rows; (2, 2, 33) two along the
    hidden units and several k-chunks (H = 33 forward, 4H = 132 backward).
    Each is a grid of its own, as the simulator runs every thread of every
    block as a Python thread.
    """
    arrays = Arrays(make_backend(dtype), seed=T * B * H)
    k = arrays.launcher
    xproj, gates = arrays.uniform((T, B, 4 * H))            # x_t Wx
    h0, _ = arrays.uniform((B, H))
    c0, _ = arrays.uniform((B, H))
    Wh, Wh_dev = arrays.uniform((H, 4 * H), 0.7)
    b, b_dev = arrays.uniform((4 * H,), 0.5)
    hs, cs = arrays.poisoned((T + 1, B, H)), arrays.poisoned((T + 1, B, H))
    hs[0], cs[0] = arrays.backend.asarray(h0), arrays.backend.asarray(c0)
    k.lstm_forward(gates, hs, cs, Wh_dev, b_dev)

    f64 = np.float64
    h, c, caches, ref_hs, ref_cs = h0.astype(f64), c0.astype(f64), [], [], []
    for t in range(T):
        h, c, cache = cell_forward(xproj[t].astype(f64), h, c, Wh.astype(f64), b.astype(f64))
        ref_hs.append(h)
        ref_cs.append(c)
        caches.append(cache)
    assert_close("h_t", arrays.host(hs)[1:], np.stack(ref_hs), dtype)
    assert_close("c_t", arrays.host(cs)[1:], np.stack(ref_cs), dtype)
    assert_close("i, f, g, o", arrays.host(gates), np.stack([np.concatenate(cache[:4], axis=1)
                                                            for cache in caches]), dtype)

    dhs, dhs_dev = arrays.uniform((T, B, H))
    dh_last, dh_last_dev = arrays.uniform((B, H))
    dcT, dc = arrays.uniform((B, H))
    k.lstm_backward(gates, dhs_dev, dh_last_dev, dc, cs, Wh_dev)
    dh, dc_ref, das = dh_last.astype(f64), dcT.astype(f64), [None] * T
    for t in reversed(range(T)):
        das[t], dh, dc_ref = cell_backward(dhs[t] + dh, dc_ref, caches[t])
    assert_close("da", arrays.host(gates), np.stack(das), dtype)
    assert_close("dc0", arrays.host(dc), dc_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@FEW
@given(R=st.integers(1, 12), V=st.sampled_from([1, 2, 7, 33, 70]), ties=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_softmax_xent_rows(make_backend, dtype, R, V, ties, seed):
    """Per-row loss, hit and gradient against the reference; ties take the first maximum."""
    arrays = Arrays(make_backend(dtype), seed)
    rng = arrays.rng
    logits = (rng.integers(-2, 3, (R, V)) if ties else rng.normal(0, 3, (R, V))).astype(dtype)
    y = rng.integers(0, V, R)
    mask = (rng.random(R) < 0.6).astype(dtype)
    dlogits, row_stats = arrays.poisoned((R, V)), arrays.poisoned((R, 2))
    to = arrays.backend.asarray
    arrays.launcher.softmax_xent(to(logits), to(y), to(mask), dlogits, row_stats)

    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected_d = (np.exp(log_p) - np.eye(V)[y]) * mask[:, None]
    stats = arrays.host(row_stats)
    assert_close("dlogits", arrays.host(dlogits), expected_d, dtype)
    assert_close("loss", stats[:, 0], -log_p[np.arange(R), y] * mask, dtype)
    np.testing.assert_array_equal(stats[:, 1], (logits.argmax(axis=1) == y) * mask)


def test_softmax_xent_target_outside_vocabulary_is_nan(make_backend):
    arrays = Arrays(make_backend(np.float64), seed=1)
    logits, logits_dev = arrays.uniform((2, 3))
    to = arrays.backend.asarray
    row_stats = arrays.poisoned((2, 2))
    arrays.launcher.softmax_xent(logits_dev, to(np.array([1, 3])), to(np.ones(2)),
                                         arrays.poisoned((2, 3)), row_stats)
    stats = arrays.host(row_stats)
    assert np.isfinite(stats[0]).all() and np.isnan(stats[1, 0]) and stats[1, 1] == 0


@pytest.mark.parametrize("dtype", DTYPES)
@FEW
@given(R=st.integers(1, 12), V=st.integers(1, 6), D=st.integers(1, 9), seed=st.integers(0, 2**32 - 1))
def test_embedding_gather_and_scatter(make_backend, dtype, R, V, D, seed):
    arrays = Arrays(make_backend(dtype), seed)
    E, E_dev = arrays.uniform((V, D))
    dxs, dxs_dev = arrays.uniform((R, D))
    ids = arrays.rng.integers(0, V, R)                      # ids repeat: R can exceed V
    k, ids_dev = arrays.launcher, arrays.backend.asarray(ids)
    xs, dE = arrays.poisoned((R, D)), arrays.poisoned((V, D))
    k.embedding_forward(E_dev, ids_dev, xs)
    k.embedding_backward(dxs_dev, ids_dev, dE)
    assert_close("xs", arrays.host(xs), E[ids], dtype)
    expected = np.zeros((V, D))
    np.add.at(expected, ids, dxs.astype(np.float64))
    assert_close("dE", arrays.host(dE), expected, dtype)


def test_embedding_id_outside_vocabulary_gives_nan_row(make_backend):
    arrays = Arrays(make_backend(np.float64), seed=2)
    _, E_dev = arrays.uniform((3, 2))
    xs = arrays.poisoned((2, 2))
    arrays.launcher.embedding_forward(E_dev, arrays.backend.asarray(np.array([2, 3])), xs)
    rows = arrays.host(xs)
    assert np.isfinite(rows[0]).all() and np.isnan(rows[1]).all()


# ------------------------------------------------------------------ validation

def test_bad_arrays_are_refused_before_launch(make_backend):
    """A launcher called directly checks every array of the call (the backend's checks on entry instead)."""
    backend = make_backend(np.float32)
    k, xp, to = Arrays(backend, seed=0).launcher, backend.xp, backend.asarray
    A, C = to(np.ones((4, 3))), to(np.ones((4, 5)))
    with pytest.raises(TypeError, match="B must have dtype float32, got float64"):
        k.gemm(A, xp.ones((3, 5)), C)
    with pytest.raises(ValueError, match=r"B has shape \(4, 5\), expected \(3, 5\)"):
        k.gemm(A, to(np.ones((4, 5))), C)
    with pytest.raises(ValueError, match="must be C-contiguous"):
        k.gemm(A, to(np.ones((5, 3))).T, C)
    with pytest.raises(TypeError, match="A must be a .*ndarray, got builtins.list"):
        k.gemm(A.tolist(), to(np.ones((3, 5))), C)
    with pytest.raises(ValueError, match="A must not be empty"):
        k.column_sums(to(np.ones((2, 0))), to(np.ones(0)))
    with pytest.raises(TypeError, match="y must have dtype int64"):
        k.softmax_xent(to(np.ones((2, 3))), to(np.ones(2)), to(np.ones(2)), C, C)
    with pytest.raises(ValueError, match=r"hs has shape \(2, 1, 2\), expected \(3, 1, 2\)"):
        k.lstm_forward(to(np.ones((2, 1, 8))), to(np.ones((2, 1, 2))), to(np.ones((3, 1, 2))),
                       to(np.ones((2, 8))), to(np.ones(8)))
    assert not backend.launcher.check_arrays    # the backend's own launcher leaves it to the operations


def test_gemm_choice_is_validated(make_backend):
    with pytest.raises(ValueError, match="gemm must be one of"):
        make_backend(np.float32, gemm="magic")


@pytest.mark.skipif(MODE != "simulator", reason="the simulator's own checks")
def test_simulator_is_never_a_device():
    """Under the simulator the backend is unavailable to the registry: auto skips it, naming it fails."""
    reason = available_backends()["numba_cuda"]
    assert reason is not None and "simulator" in reason
    assert get_backend("auto").name != "numba_cuda"
    with pytest.raises(BackendUnavailable, match="simulator"):
        get_backend("numba_cuda")
    with pytest.raises(ValueError, match="only 'tiled'"):
        NumbaCudaBackend(np.float32, gemm="cublas", simulator=True)


# ----------------------------------------------------------- whole model

def gemm_choices():
    return ["tiled", "cublas"] if MODE == "device" else ["tiled"]


class Recording:
    """A kernel whose launches add their argument types to ``types``; anything else goes to the kernel."""

    def __init__(self, kernel, types: set):
        self.kernel, self.types = kernel, types

    def __getattr__(self, name):
        return getattr(self.kernel, name)

    def __getitem__(self, config):
        configured = self.kernel[config]

        def launch(*args):
            self.types.add(tuple(numba.typeof(a) for a in args))
            configured(*args)
        return launch


@pytest.mark.parametrize("persistent", [False, True])
@pytest.mark.parametrize("gemm", gemm_choices())
@pytest.mark.parametrize("dtype", DTYPES)
def test_training_step_launches_every_kernel_with_its_signature(make_backend, dtype, gemm, persistent):
    """A loss_and_grads step launches each kernel of its recurrence (per-step or persistent) and every
    other kernel, with exactly the argument types ``signatures()`` lists (what the compile tests
    compile). Its numbers: tests/backends."""
    backend = make_backend(dtype, gemm, persistent)
    launched = {}
    for launcher in (backend.launcher, backend.persistent_launcher):
        launcher._k = {name: Recording(kernel, launched.setdefault(name, set()))
                       for name, kernel in launcher._k.items()}
    V, T, B = 3, 2, 1
    model = LSTMModel(V, hidden=2, layers=1, backend=backend, init_scale=0.5, seed=3)
    rng = np.random.default_rng(5)
    x, y = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    result = model.loss_and_grads(x, y, np.ones((T, B)), None)
    assert np.isfinite(result.loss)
    assert (backend.launch_mode == "persistent") == persistent
    signatures = {**nk.signatures(dtype), **P.signatures(dtype)}
    recurrence = set(P.KERNEL_NAMES.values()) if persistent else {"lstm_forward_step", "lstm_backward_step"}
    expected = nk.signatures(dtype).keys() - {"lstm_forward_step", "lstm_backward_step"} | recurrence
    assert {name for name, types in launched.items() if types} == expected - ({"gemm"} if gemm == "cublas" else set())
    for name, types in launched.items():
        assert types <= {signatures[name]}, f"{name} was launched with {types}"
