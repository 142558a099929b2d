"""The register-blocked step product against np.matmul, on odd sizes and the backend's per-step shapes."""

import numpy as np
import pytest
from ltexec.testing import assert_relative_error_below

pytest.importorskip("numba")

from ltexec.backends.cpu.step_kernels import host_has_avx512, pack_columns, step_product  # noqa: E402

TOL = {np.float32: 1e-4, np.float64: 1e-12}
BLOCKS = [(5, 64), (6, 64), (5, 80)]


def reference(a, W):
    return a.astype(np.float64) @ W.astype(np.float64)


def test_host_has_avx512_is_a_bool():
    assert isinstance(host_has_avx512(), bool)


def test_an_unknown_step_products_choice_is_named():
    from ltexec.backends.cpu.backend import CpuBackend
    with pytest.raises(ValueError, match="fast"):
        CpuBackend(np.float32, step_products="fast")


@pytest.mark.parametrize("N", [70, 64])
def test_pack_columns_layout(N):
    K, nr = 5, 32
    W = np.arange(1, K * N + 1, dtype=np.float32).reshape(K, N)
    wp = pack_columns(W, nr)
    P = -(-N // nr)
    assert wp.shape == (P, K, nr) and wp.dtype == W.dtype and wp.flags.c_contiguous
    for p in range(P):
        c0, c1 = nr * p, min(N, nr * p + nr)
        np.testing.assert_array_equal(wp[p, :, :c1 - c0], W[:, c0:c1])
        assert not wp[p, :, c1 - c0:].any()               # the last panel's padding is zeros
    if N % nr:
        assert not wp[-1, :, N % nr:].any() and wp[-1, :, :N % nr].all()


@pytest.mark.parametrize("N", [70, 64])
def test_pack_columns_into_a_used_buffer_overwrites_all_of_it(N):
    """A reused buffer (here full of NaN) ends up equal to a fresh packing, padding included."""
    W = np.random.default_rng(N).standard_normal((5, N)).astype(np.float32)
    fresh = pack_columns(W, 32)
    used = np.full(fresh.shape, np.nan, np.float32)
    assert pack_columns(W, 32, out=used) is used
    np.testing.assert_array_equal(used, fresh)


def test_pack_columns_of_a_transposed_view():
    """Wh.T (a Fortran-ordered view) packs like its contiguous copy."""
    Wh = np.random.default_rng(0).standard_normal((37, 148)).astype(np.float32)
    np.testing.assert_array_equal(pack_columns(Wh.T, 64), pack_columns(np.ascontiguousarray(Wh.T), 64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mr,nr", BLOCKS)
@pytest.mark.parametrize("M", [1, 5, 50, 52])
@pytest.mark.parametrize("K", [37, 128])
@pytest.mark.parametrize("N", [37, 148, 512])
def test_product_matches_matmul(dtype, mr, nr, M, K, N):
    rng = np.random.default_rng(M * 1000 + K + N)
    a = rng.standard_normal((M, K)).astype(dtype)
    W = rng.standard_normal((K, N)).astype(dtype)
    out = np.full((M, N), np.nan, dtype)
    step_product(mr, nr)(a, pack_columns(W, nr), out, N)
    assert_relative_error_below("a @ W", out, reference(a, W), TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mr,nr", BLOCKS)
@pytest.mark.parametrize("H,M", [(37, 5), (128, 50), (40, 52)])
def test_forward_and_backward_shapes(dtype, mr, nr, H, M):
    """h_{t-1} Wh (K=H, N=4H) from panels of Wh, and da_t Wh^T (K=4H, N=H) from panels of the view Wh.T."""
    rng = np.random.default_rng(H + M)
    product = step_product(mr, nr)
    Wh = (rng.standard_normal((H, 4 * H)) / np.sqrt(H)).astype(dtype)
    h = rng.uniform(-1, 1, (M, H)).astype(dtype)
    da = rng.standard_normal((M, 4 * H)).astype(dtype)
    rec = np.full((M, 4 * H), np.nan, dtype)
    product(h, pack_columns(Wh, nr), rec, 4 * H)
    assert_relative_error_below("h Wh", rec, reference(h, Wh), TOL[dtype])
    dh = np.full((M, H), np.nan, dtype)
    product(da, pack_columns(Wh.T, nr), dh, H)
    assert_relative_error_below("da Wh^T", dh, reference(da, Wh.T), TOL[dtype])


@pytest.mark.parametrize("mr,nr", BLOCKS)
@pytest.mark.parametrize("n", [37, 64, 100])
def test_product_writes_only_the_first_n_columns(mr, nr, n):
    """A wider out keeps what it held past column n, also where n ends inside a panel or on a panel edge."""
    rng = np.random.default_rng(n)
    M, K, extra = 7, 19, 45
    a = rng.standard_normal((M, K)).astype(np.float32)
    W = rng.standard_normal((K, n)).astype(np.float32)
    out = np.full((M, n + extra), np.nan, np.float32)
    step_product(mr, nr)(a, pack_columns(W, nr), out, n)
    assert not np.isnan(out[:, :n]).any()
    assert_relative_error_below("a @ W", out[:, :n], reference(a, W), TOL[np.float32])
    assert np.isnan(out[:, n:]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mr,nr", BLOCKS)
@pytest.mark.parametrize("r0,r1", [(0, 50), (3, 53), (17, 18), (48, 60)])
def test_product_on_row_slices(dtype, mr, nr, r0, r1):
    """a = hs[t, r0:r1] and out = gates[t, r0:r1] (rows of a lane in the backend's (T, B, .) arrays)."""
    rng = np.random.default_rng(r0 * 100 + r1)
    T, B, H, t = 3, 60, 37, 1
    Wh = rng.standard_normal((H, 4 * H)).astype(dtype)
    hs = rng.standard_normal((T + 1, B, H)).astype(dtype)
    gates = np.full((T, B, 4 * H), np.nan, dtype)
    step_product(mr, nr)(hs[t, r0:r1], pack_columns(Wh, nr), gates[t, r0:r1], 4 * H)
    assert_relative_error_below("lane rows", gates[t, r0:r1], reference(hs[t, r0:r1], Wh), TOL[dtype])
    # nothing outside the lane's rows of step t was written
    untouched = np.ones(gates.shape, bool)
    untouched[t, r0:r1] = False
    assert np.isnan(gates[untouched]).all()
