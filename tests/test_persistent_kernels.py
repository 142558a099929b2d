"""The persistent LSTM kernels of kernels/lstm_persistent.cu: one launch per layer and window.

* The cooperative launcher of the C++ emulation (tests/cuda_emulation) is
  checked first on kernels with known results: all blocks at once, a grid
  barrier, dynamic shared memory of each block its own, overruns caught.
* Arithmetic: the kernels run in that emulation, every block a set of host
  threads running concurrently, so their own grid barrier (atomics, fences,
  spinning) runs as written. They are compared with the NumPy reference
  (ltexec.backends.numpy_backend, in float64 on the kernels' rounded inputs) at
  small odd sizes, with slices of units that do not divide H, blocks smaller
  and larger than a step's work, one block, and one step. Outputs are
  poisoned with NaN and sit between guard cells; the barrier state is checked
  after every launch (arrivals back to 0, one generation per barrier).
  Forward and backward give bitwise-equal results on every run and for every
  slice and block size (fixed summation order, no atomics on data).
* Compilation: NVRTC for sm_80 and sm_90 with ptxas's resource report
  (``-Xptxas -v``): no spills, registers that fit any block size, and shared
  memory and residency of the whole grid for H = 400 on an A100 and an H100.

Error measure per output array: ``max|kernel - ref| / max|ref|``. A window
must be below 1e-4 for float32 kernels and below 1e-10 for float64 ones.
"""

import re

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import cuda_emulation as emulation
from ltexec.testing import relative_error as rel_error
from ltexec.backends import cupy_backend
from ltexec.backends.numpy_backend import NumpyBackend, cell_backward
from test_cupy_kernels import CANARY, Guarded, needs_gxx, nvrtc_check, nvrtc_or_skip

TOLERANCE = {np.float32: 1e-4, np.float64: 1e-10}
DTYPES = [np.float32, np.float64]
SOURCE = "lstm_persistent.cu"
D = 6              # layer input size of the test windows

# (T, B, H, units, block): ragged last slices, blocks smaller and larger than
# the B * units pairs of a step, one block (units >= H), one step (T = 1).
SHAPES = [
    (7, 5, 37, 4, 32),
    (3, 2, 37, 8, 8),
    (1, 3, 5, 2, 4),
    (4, 1, 16, 4, 64),
    (5, 3, 23, 5, 7),
    (2, 4, 9, 16, 32),
    (6, 2, 12, 1, 3),
]


def grid_size(H: int, units: int) -> int:
    """Blocks of a persistent launch: one per slice of ``units`` hidden units."""
    return -(-H // units)


def shared_bytes(H: int, units: int, dtype) -> int:
    """Dynamic shared memory per block, both kernels: the block's part of W_h."""
    return 4 * H * units * np.dtype(dtype).itemsize


def launch(kernel, dtype, H, units, block, *args):
    """Run a persistent kernel (by base name and dtype) in the emulation, all blocks at once."""
    plain = tuple(a.array if isinstance(a, Guarded) else a for a in args)
    emulation.kernels().launch_cooperative(cupy_backend.name_expression(kernel, dtype), grid_size(H, units),
                                           block, shared_bytes(H, units, dtype), plain)


def barrier_state(start: int) -> np.ndarray:
    """A grid barrier's state (no arrivals, generation ``start``) between two guard words: (2,) of (4,)."""
    return np.array([CANARY, 0, start, CANARY], np.uint32)[1:3]


def check_barrier(barrier: np.ndarray, start: int, barriers: int) -> None:
    """The kernel left no arrivals, passed ``barriers`` barriers (generation modulo 2^32) and wrote nothing else."""
    np.testing.assert_array_equal(barrier.base, [CANARY, 0, (start + barriers) % 2**32, CANARY])


# ------------------------------------------------------------ the reference

class Window:
    """Random inputs of one window, rounded to ``dtype``, and the float64 reference on them."""

    def __init__(self, T, B, H, dtype, seed):
        rng = np.random.default_rng(seed)
        self.T, self.B, self.H, self.dtype = T, B, H, dtype
        self.xs = rng.standard_normal((T, B, D)).astype(dtype)
        self.Wx = (rng.standard_normal((D, 4 * H)) / np.sqrt(D)).astype(dtype)
        self.Wh = (rng.standard_normal((H, 4 * H)) / np.sqrt(H)).astype(dtype)
        self.b = (rng.standard_normal(4 * H) * 0.5).astype(dtype)
        self.h0 = (rng.standard_normal((B, H)) * 0.5).astype(dtype)
        self.c0 = rng.standard_normal((B, H)).astype(dtype)
        self.dhs = rng.standard_normal((T, B, H)).astype(dtype)
        self.dhT = rng.standard_normal((B, H)).astype(dtype)
        self.dcT = rng.standard_normal((B, H)).astype(dtype)
        ref = NumpyBackend(np.float64)
        f64 = {name: getattr(self, name).astype(np.float64) for name in ("xs", "Wx", "Wh", "b", "h0", "c0")}
        self.hs_ref, _, cT, self.cache = ref.lstm_forward(f64["xs"], f64["h0"], f64["c0"], f64["Wx"], f64["Wh"],
                                                          f64["b"], training=True)
        steps = self.cache[4]                      # (i, f, g, o, c_prev, tanh_c, Wh) per step
        self.gates_ref = np.stack([np.concatenate(step[:4], axis=1) for step in steps])
        self.cs_ref = np.stack([step[4] for step in steps[1:]] + [cT])
        dhs64, dhT64, dcT64 = (a.astype(np.float64) for a in (self.dhs, self.dhT, self.dcT))
        self.grads_ref = ref.lstm_backward(dhs64.copy(), dhT64, dcT64, self.cache)   # dxs, dWx, dWh, db, dh0, dc0
        das = np.empty((T, B, 4 * H))
        dh, dc = dhT64, dcT64
        for t in reversed(range(T)):
            das[t], dh, dc = cell_backward(dhs64[t] + dh, dc, steps[t])
        self.das_ref = das

    def xproj(self):
        """x_t Wx for every step, in the kernel's dtype (cuBLAS's part on the GPU)."""
        return (self.xs.reshape(self.T * self.B, D) @ self.Wx).reshape(self.T, self.B, 4 * self.H)

    def host_gradients(self, dA, dh0, dc0):
        """What the host computes from the kernel's dA after the launch: (dxs, dWx, dWh, db, dh0, dc0)."""
        T, B, H = self.T, self.B, self.H
        dA2 = dA.astype(np.float64).reshape(T * B, 4 * H)
        h_prevs = np.concatenate([self.h0[None], self.hs_ref[:-1]]).astype(np.float64).reshape(T * B, H)
        return ((dA2 @ self.Wx.astype(np.float64).T).reshape(T, B, D), self.xs.astype(np.float64).reshape(T * B, D).T
                @ dA2, h_prevs.T @ dA2, dA2.sum(axis=0), dh0, dc0)


def run_forward(window, units, block, start=0):
    """The forward kernel on ``window``: (gates, hs, cs) after checking guards, poison and the barrier."""
    T, B, H, dtype = window.T, window.B, window.H, window.dtype
    gates = Guarded(window.xproj())
    hs, cs = Guarded.poisoned((T, B, H), dtype), Guarded.poisoned((T, B, H), dtype)
    barrier = barrier_state(start)
    launch("lstm_persistent_forward", dtype, H, units, block, gates, Guarded(window.Wh), Guarded(window.b),
           Guarded(window.h0), Guarded(window.c0), hs, cs, barrier, np.int32(T), np.int32(B), np.int32(H),
           np.int32(units))
    check_barrier(barrier, start, T - 1)
    return gates.check(), hs.check(), cs.check()


def run_backward(window, gates, cs, units, block, start=0):
    """The backward kernel on cached ``gates`` (activations) and ``cs``: (dA, dh0, dc0)."""
    T, B, H, dtype = window.T, window.B, window.H, window.dtype
    gates = Guarded(gates.astype(dtype))
    dh0, dc0 = Guarded.poisoned((B, H), dtype), Guarded.poisoned((B, H), dtype)
    barrier = barrier_state(start)
    launch("lstm_persistent_backward", dtype, H, units, block, gates, Guarded(cs.astype(dtype)),
           Guarded(window.c0), Guarded(window.Wh), Guarded(window.dhs), Guarded(window.dhT),
           Guarded(window.dcT), dh0, dc0, barrier, np.int32(T), np.int32(B), np.int32(H), np.int32(units))
    check_barrier(barrier, start, T)
    return gates.check(), dh0.check(), dc0.check()


def assert_forward_matches(window, gates, hs, cs):
    tol = TOLERANCE[window.dtype]
    errors = {"gates": rel_error(gates, window.gates_ref), "hs": rel_error(hs, window.hs_ref),
              "cs": rel_error(cs, window.cs_ref)}
    assert max(errors.values()) < tol, errors


def assert_backward_matches(window, dA, dh0, dc0):
    tol = TOLERANCE[window.dtype]
    names = ("dxs", "dWx", "dWh", "db", "dh0", "dc0")
    errors = {name: rel_error(got, want)
              for name, got, want in zip(names, window.host_gradients(dA, dh0, dc0), window.grads_ref)}
    errors["dA"] = rel_error(dA, window.das_ref)
    assert max(errors.values()) < tol, errors


# ----------------------------------------------- the cooperative emulation

@needs_gxx
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, block, grid, rounds", [(20, 8, 3, 3), (37, 4, 12, 2), (5, 16, 4, 3), (64, 32, 2, 1)])
def test_cooperative_emulation_runs_all_blocks_at_once(dtype, n, block, grid, rounds):
    rng = np.random.default_rng(n)
    x = rng.integers(-100, 100, n).astype(dtype)    # integers: every summation order is exact
    partials = Guarded.poisoned((rounds, grid), dtype)
    totals = Guarded.poisoned((rounds, grid), dtype)
    arrivals = Guarded(np.zeros(1, np.uint32))
    emulation.kernels().launch_cooperative(f"grid_sums<{cupy_backend.REAL_TYPES[np.dtype(dtype)]}>", grid, block,
                                           block * np.dtype(dtype).itemsize,
                                           (x, partials.array, totals.array, arrivals.array, np.int32(n),
                                            np.int32(rounds)))
    block_sums = np.add.reduceat(np.pad(x, (0, grid * block - n)).astype(np.float64), np.arange(0, grid * block, block))
    total = 0.0
    for r in range(rounds):
        expected = (r + 1) * block_sums + total
        np.testing.assert_array_equal(partials.check()[r], expected)
        total = expected.sum()
        np.testing.assert_array_equal(totals.check()[r], np.full(grid, total))
    np.testing.assert_array_equal(arrivals.check(), [2 * rounds * grid])


@needs_gxx
@pytest.mark.parametrize("grid, block", [(6, 5), (2, 64), (16, 1)])
def test_cooperative_emulation_gives_every_block_its_own_shared_memory(grid, block):
    seen = Guarded.poisoned((grid, block), np.int32)
    emulation.kernels().launch_cooperative("shared_is_per_block", grid, block, 4 * block,
                                           (seen.array, np.zeros(1, np.uint32)))
    np.testing.assert_array_equal(seen.check(), np.repeat(np.arange(grid)[:, None], block, axis=1))


@needs_gxx
def test_cooperative_emulation_catches_writes_past_shared_memory():
    with pytest.raises(RuntimeError, match="past the end of its dynamic shared memory"):
        emulation.kernels().launch_cooperative("shared_is_per_block", 2, 8, 4 * 8 - 4,
                                               (np.zeros(16, np.int32), np.zeros(1, np.uint32)))


# --------------------------------------------------------------- arithmetic

@needs_gxx
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T, B, H, units, block", SHAPES)
def test_forward_matches_reference(dtype, T, B, H, units, block):
    window = Window(T, B, H, dtype, seed=T * 1000 + B * 100 + H)
    assert_forward_matches(window, *run_forward(window, units, block, start=H))


@needs_gxx
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T, B, H, units, block", SHAPES)
def test_backward_matches_reference(dtype, T, B, H, units, block):
    window = Window(T, B, H, dtype, seed=T * 1000 + B * 100 + H + 1)
    dA, dh0, dc0 = run_backward(window, window.gates_ref, window.cs_ref, units, block, start=2**32 - 2)
    assert_backward_matches(window, dA, dh0, dc0)


@needs_gxx
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=10, deadline=None)
@given(T=st.integers(1, 5), B=st.integers(1, 4), H=st.integers(1, 20), units=st.integers(1, 8),
       block=st.sampled_from([1, 5, 32, 64]), seed=st.integers(0, 2**32 - 1))
def test_forward_then_backward_matches_reference(dtype, T, B, H, units, block, seed):
    assume(grid_size(H, units) * block <= 512)     # host threads of the emulation
    window = Window(T, B, H, dtype, seed)
    gates, hs, cs = run_forward(window, units, block)
    assert_forward_matches(window, gates, hs, cs)
    assert_backward_matches(window, *run_backward(window, gates, cs, units, block))


@needs_gxx
@pytest.mark.parametrize("dtype", DTYPES)
def test_same_bits_on_every_run_and_for_every_slicing(dtype):
    T, B, H = 5, 3, 29
    window = Window(T, B, H, dtype, seed=29)
    runs = [(4, 32), (4, 32), (7, 16), (29, 3), (3, 64)]      # (units, block); the first two are a rerun
    forwards = [run_forward(window, units, block) for units, block in runs]
    backwards = [run_backward(window, *forwards[0][::2], units, block) for units, block in runs]
    for results in (forwards, backwards):
        for other in results[1:]:
            for got, first in zip(other, results[0]):
                np.testing.assert_array_equal(got.view(np.uint8), first.view(np.uint8))


# ------------------------------------------------------------- compilation

# One device of each architecture the tests compile for, as the host will see it.
DEVICES = {
    "sm_80": {"name": "A100", "sms": 108, "shared_per_sm": 164 * 1024, "shared_per_block": 163 * 1024},
    "sm_90": {"name": "H100/H200", "sms": 132, "shared_per_sm": 228 * 1024, "shared_per_block": 227 * 1024},
}
REGISTERS_PER_SM = 65536
THREADS_PER_SM = 2048
BLOCKS_PER_SM = 32
RESERVED_SHARED_PER_BLOCK = 1024   # shared memory the system keeps per resident block (sm_80 and later)
PAPER_H = 400                      # the paper's hidden size
PAPER_BLOCK = 256


def resident_blocks_per_sm(device: dict, registers: int, block: int, shared: int) -> int:
    """Blocks of one kernel resident on one SM at once, limited by registers, shared memory and threads."""
    warps = -(-block // 32)
    registers_per_warp = -(-registers * 32 // 256) * 256      # allocated per warp in units of 256
    return min(REGISTERS_PER_SM // (warps * registers_per_warp),
               device["shared_per_sm"] // (shared + RESERVED_SHARED_PER_BLOCK),
               THREADS_PER_SM // (warps * 32), BLOCKS_PER_SM)


def ptxas_report(arch: str) -> tuple[dict, str]:
    """Compile the source with NVRTC as the backend does, plus ``-Xptxas -v``: (resources per name expression, log)."""
    nvrtc = nvrtc_or_skip()
    text = (emulation.KERNEL_DIR / SOURCE).read_bytes()
    (program,) = nvrtc_check(nvrtc, nvrtc.nvrtcCreateProgram(text, SOURCE.encode(), 0, [], []))
    try:
        expressions = cupy_backend.name_expressions(SOURCE)
        for expr in expressions:
            nvrtc_check(nvrtc, nvrtc.nvrtcAddNameExpression(program, expr.encode()))
        options = [o.encode() for o in (*cupy_backend.NVRTC_OPTIONS, f"--gpu-architecture={arch}", "-Xptxas", "-v")]
        nvrtc_check(nvrtc, nvrtc.nvrtcCompileProgram(program, len(options), options), program)
        lowered = {nvrtc_check(nvrtc, nvrtc.nvrtcGetLoweredName(program, expr.encode()))[0].decode(): expr
                   for expr in expressions}
        (size,) = nvrtc_check(nvrtc, nvrtc.nvrtcGetProgramLogSize(program))
        buffer = b" " * size
        nvrtc.nvrtcGetProgramLog(program, buffer)
    finally:
        nvrtc.nvrtcDestroyProgram(program)
    log = buffer.decode(errors="replace")
    resources = {}
    for name, stack, stores, loads, registers, rest in re.findall(
            r"Compiling entry function '(\w+)' for 'sm_\d+'.*?(\d+) bytes stack frame, (\d+) bytes spill stores, "
            r"(\d+) bytes spill loads.*?Used (\d+) registers([^\n]*)", log, re.S):
        smem = re.search(r"(\d+) bytes smem", rest)
        resources[lowered[name]] = {"stack": int(stack), "spill_stores": int(stores), "spill_loads": int(loads),
                                    "registers": int(registers), "static_shared": int(smem[1]) if smem else 0}
    assert sorted(resources) == sorted(expressions), log
    return resources, log


@pytest.mark.parametrize("arch", sorted(DEVICES))
def test_resources_fit_the_paper_size_with_every_block_resident(arch, record_property):
    resources, log = ptxas_report(arch)
    device = DEVICES[arch]
    for expr, used in resources.items():
        record_property(f"{arch} {expr}", used)
        assert (used["stack"], used["spill_stores"], used["spill_loads"]) == (0, 0, 0), f"{expr} spills:\n{log}"
        assert used["registers"] * 1024 <= REGISTERS_PER_SM, f"{expr}: a block of 1024 threads would not fit"
        dtype = np.float32 if expr.endswith("<float>") else np.float64
        for units in (4, 8):
            shared = shared_bytes(PAPER_H, units, dtype) + used["static_shared"]
            grid = grid_size(PAPER_H, units)
            per_sm = resident_blocks_per_sm(device, used["registers"], PAPER_BLOCK, shared)
            print(f"{arch} {expr}: {used['registers']} registers, H={PAPER_H} units={units}: {grid} blocks of "
                  f"{shared} B shared, {per_sm} per SM x {device['sms']} SMs ({device['name']})")
            assert shared <= device["shared_per_block"]
            assert per_sm * device["sms"] >= grid, f"{expr}: {grid} blocks do not fit on {device['name']} at once"
