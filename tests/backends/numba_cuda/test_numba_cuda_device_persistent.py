"""The persistent LSTM kernels against the NumPy reference (on the CUDA simulator, or a GPU).

The simulator's grid barrier is a block barrier, so it runs cooperative
grids of ONE block only: here one block covers every hidden unit, at tiny
odd sizes (every thread is a Python thread). What this proves: the
arithmetic, the indexing of the inputs, outputs and dynamic shared memory,
the time loops and the in-place use of the per-step path's buffers. The
same algorithm with several blocks is run step by step on the CPU in
tests/backends/numba_cuda/test_numba_cuda_persistent_geometry.py; a real multi-block grid (the
barrier, memory visibility between blocks, co-residency) only on a GPU,
where :func:`test_several_blocks` runs one.

Arrays are numba device arrays (simulated ones here), so that outputs
passed as the same array as an input really alias. Inputs are fresh random
numbers, outputs NaN-poisoned before each launch. Tolerance, as
max|kernel - reference| / max|reference| per array against a float64
reference on the same numbers: 1e-4 for float32 kernels, 1e-10 for float64.
"""

import numpy as np
import pytest
from numba import cuda

from ltexec.testing import assert_relative_error_below
from ltexec.backends.numba_cuda import persistent as P
from ltexec.backends.numba_cuda.backend import _simulator_active
from ltexec.backends.numpy.backend import cell_backward, cell_forward

DTYPES = [np.float32, np.float64]
TOLERANCE = {np.float32: 1e-4, np.float64: 1e-10}
SIZES = [(3, 2, 5), (4, 3, 7), (3, 2, 9)]      # (T, B, H)
MODE = "simulator" if _simulator_active() else "device"


def assert_close(name, actual, expected, dtype):
    assert_relative_error_below(name, actual, expected, TOLERANCE[dtype])


class Problem:
    """Random inputs of one layer and window in ``dtype``, and the float64 reference on the same numbers."""

    def __init__(self, dtype, T, B, H, seed):
        rng = np.random.default_rng(seed)
        self.dtype, self.T, self.B, self.H = dtype, T, B, H

        def uniform(shape, scale=1.0):
            return rng.uniform(-scale, scale, shape).astype(dtype)

        self.xproj, self.h0, self.c0 = uniform((T, B, 4 * H)), uniform((B, H)), uniform((B, H))
        self.Wh, self.b = uniform((H, 4 * H), 0.7), uniform((4 * H,), 0.5)
        self.dhs, self.dhT, self.dcT = uniform((T, B, H)), uniform((B, H)), uniform((B, H))

    def forward_reference(self):
        """(hs, cs, gates) of the reference's cells in float64."""
        f64 = np.float64
        h, c, hs, cs, gates = self.h0.astype(f64), self.c0.astype(f64), [], [], []
        for t in range(self.T):
            h, c, cache = cell_forward(self.xproj[t].astype(f64), h, c, self.Wh.astype(f64), self.b.astype(f64))
            hs.append(h)
            cs.append(c)
            gates.append(np.concatenate(cache[:4], axis=1))
        return np.stack(hs), np.stack(cs), np.stack(gates)

    def backward_reference(self, gates, cs):
        """(dA, dh0, dc0) of the reference's cells in float64, from the given activations and cells."""
        f64 = np.float64
        gates, cs, Wh = gates.astype(f64), cs.astype(f64), self.Wh.astype(f64)
        c_prev = np.concatenate([self.c0.astype(f64)[None], cs[:-1]])
        dh, dc, dA = self.dhT.astype(f64), self.dcT.astype(f64), [None] * self.T
        for t in reversed(range(self.T)):
            cache = (*np.split(gates[t], 4, axis=1), c_prev[t], np.tanh(cs[t]), Wh)
            dA[t], dh, dc = cell_backward(self.dhs[t] + dh, dc, cache)
        return np.stack(dA), dh, dc


def poisoned(shape, dtype):
    return cuda.to_device(np.full(shape, np.nan, dtype))


def run_forward(launcher, geometry, p):
    """The kernel's (hs, cs, gates) on host, outputs poisoned before the launch."""
    T, B, H = p.T, p.B, p.H
    hs, cs, gates = poisoned((T, B, H), p.dtype), poisoned((T, B, H), p.dtype), poisoned((T, B, 4 * H), p.dtype)
    launcher.forward(geometry, *map(cuda.to_device, (p.xproj, p.h0, p.c0, p.Wh, p.b)), hs, cs, gates)
    return hs.copy_to_host(), cs.copy_to_host(), gates.copy_to_host()


def run_backward(launcher, geometry, p, gates, cs):
    """The kernel's (dA, dh0, dc0) on host, outputs poisoned before the launch."""
    T, B, H = p.T, p.B, p.H
    dA, dh0, dc0 = poisoned((T, B, 4 * H), p.dtype), poisoned((B, H), p.dtype), poisoned((B, H), p.dtype)
    inputs = map(cuda.to_device, (gates, cs, p.c0, p.Wh, p.dhs, p.dhT, p.dcT))
    launcher.backward(geometry, *inputs, dA, dh0, dc0)
    return dA.copy_to_host(), dh0.copy_to_host(), dc0.copy_to_host()


def one_block(p):
    return P.launch_geometry(p.H, p.B, p.dtype, max_blocks=1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T, B, H", SIZES)
def test_forward_matches_reference(dtype, T, B, H):
    p = Problem(dtype, T, B, H, seed=T * B * H)
    geometry = one_block(p)
    assert geometry.grid == 1 and B * H <= geometry.threads < B * H + 32   # one item a thread, the rest idle
    hs, cs, gates = run_forward(P.PersistentLauncher(dtype), geometry, p)
    ref_hs, ref_cs, ref_gates = p.forward_reference()
    assert_close("h_t", hs, ref_hs, dtype)
    assert_close("c_t", cs, ref_cs, dtype)
    assert_close("i, f, g, o", gates, ref_gates, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T, B, H", SIZES)
def test_backward_matches_reference_and_repeats_bitwise(dtype, T, B, H):
    """From the reference's activations (cast to dtype), so the forward pass's error does not enter."""
    p = Problem(dtype, T, B, H, seed=T * B * H + 1)
    _, ref_cs, ref_gates = p.forward_reference()
    gates, cs = ref_gates.astype(dtype), ref_cs.astype(dtype)
    launcher, geometry = P.PersistentLauncher(dtype), one_block(p)
    first = run_backward(launcher, geometry, p, gates, cs)
    second = run_backward(launcher, geometry, p, gates, cs)
    for name, a, b, ref in zip(("dA", "dh0", "dc0"), first, second, p.backward_reference(gates, cs)):
        assert_close(name, a, ref, dtype)
        assert a.tobytes() == b.tobytes(), f"{name}: a second launch on the same inputs differs"


@pytest.mark.parametrize("dtype", DTYPES)
def test_per_step_path_buffers_in_place(dtype):
    """The per-step path's buffers: gates holds xproj, then i, f, g, o, then dA; hs, cs are (T+1,B,H) with
    h0, c0 at index 0; dc holds dcT, then dc0. Bitwise the same as separate outputs."""
    T, B, H = 3, 2, 6
    p = Problem(dtype, T, B, H, seed=11)
    launcher, geometry = P.PersistentLauncher(dtype), one_block(p)
    hs_sep, cs_sep, gates_sep = run_forward(launcher, geometry, p)
    dA_sep, dh0_sep, dc0_sep = run_backward(launcher, geometry, p, gates_sep, cs_sep)

    gates = cuda.to_device(p.xproj)
    hs_full, cs_full = poisoned((T + 1, B, H), dtype), poisoned((T + 1, B, H), dtype)
    hs_full[0], cs_full[0] = p.h0, p.c0
    Wh = cuda.to_device(p.Wh)
    launcher.forward(geometry, gates, hs_full[0], cs_full[0], Wh, cuda.to_device(p.b), hs_full[1:], cs_full[1:],
                     gates)
    assert hs_full.copy_to_host()[1:].tobytes() == hs_sep.tobytes()
    assert cs_full.copy_to_host()[1:].tobytes() == cs_sep.tobytes()
    assert gates.copy_to_host().tobytes() == gates_sep.tobytes()

    dc, dh0 = cuda.to_device(p.dcT), poisoned((B, H), dtype)
    launcher.backward(geometry, gates, cs_full[1:], cs_full[0], Wh, cuda.to_device(p.dhs), cuda.to_device(p.dhT),
                      dc, gates, dh0, dc)
    assert gates.copy_to_host().tobytes() == dA_sep.tobytes()
    assert dh0.copy_to_host().tobytes() == dh0_sep.tobytes()
    assert dc.copy_to_host().tobytes() == dc0_sep.tobytes()


@pytest.mark.parametrize("max_blocks", [3, 4])
def test_several_blocks(max_blocks):
    """H = 10 over 3 blocks of 4, 4, 2 units or 4 blocks of 3, 3, 3, 1. The simulator refuses the grid;
    on a GPU it runs and matches the reference."""
    dtype, (T, B, H) = np.float64, (4, 3, 10)
    p = Problem(dtype, T, B, H, seed=max_blocks)
    geometry = P.launch_geometry(H, B, dtype, max_blocks)
    assert geometry.grid == max_blocks
    launcher = P.PersistentLauncher(dtype)
    if MODE == "simulator":
        with pytest.raises(RuntimeError, match=f"needs {max_blocks} co-resident blocks.*holds 1.*one block only"):
            run_forward(launcher, geometry, p)
        return
    hs, cs, gates = run_forward(launcher, geometry, p)
    ref_hs, ref_cs, ref_gates = p.forward_reference()
    assert_close("h_t", hs, ref_hs, dtype)
    assert_close("c_t", cs, ref_cs, dtype)
    assert_close("i, f, g, o", gates, ref_gates, dtype)
    for name, a, ref in zip(("dA", "dh0", "dc0"), run_backward(launcher, geometry, p, gates, cs),
                            p.backward_reference(gates, cs)):
        assert_close(name, a, ref, dtype)


def test_bad_arrays_and_geometry_are_refused_before_launch():
    T, B, H, dtype = 2, 2, 3, np.float32
    p = Problem(dtype, T, B, H, seed=0)
    launcher, geometry = P.PersistentLauncher(dtype), one_block(p)
    to = cuda.to_device
    good = [to(a) for a in (p.xproj, p.h0, p.c0, p.Wh, p.b)] + [poisoned((T, B, H), dtype)] * 2 \
        + [poisoned((T, B, 4 * H), dtype)]

    def forward_with(index, value, geometry=geometry):
        args = list(good)
        args[index] = value
        launcher.forward(geometry, *args)

    with pytest.raises(ValueError, match="h0 must be an array of float32, got float64"):
        forward_with(1, to(p.h0.astype(np.float64)))
    with pytest.raises(ValueError, match=r"Wh has shape \(3, 11\), expected \(3, 12\)"):
        forward_with(3, to(np.ones((3, 11), dtype)))
    with pytest.raises(ValueError, match="xproj must be C-contiguous"):
        forward_with(0, np.ones((T, 4 * H, B), dtype).transpose(0, 2, 1))
    with pytest.raises(ValueError, match="geometry is for H=3, B=1"):
        forward_with(1, to(p.h0), geometry=P.launch_geometry(H, 1, dtype, 1))
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        P.PersistentLauncher(np.int64)
    with pytest.raises(ValueError, match="dhs has shape"):
        launcher.backward(geometry, good[7], good[5], good[1], good[3], to(np.ones((T, B), dtype)), good[1],
                          good[2], good[7], good[1], good[2])
