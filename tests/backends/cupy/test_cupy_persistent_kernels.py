"""The persistent LSTM kernels of kernels/lstm_persistent.cu: one launch per layer and window.

* The cooperative launcher of the C++ emulation (tests/cuda_emulation) is
  checked first on kernels with known results: all blocks at once, a grid
  barrier, dynamic shared memory of each block its own, overruns caught.
* Arithmetic: the kernels run in that emulation, every block a set of host
  threads running concurrently, so their own grid barrier (atomics, fences,
  spinning) runs as written. They are compared with the NumPy reference
  (ltexec.backends.numpy.backend, in float64 on the kernels' rounded inputs) at
  small odd sizes, with slices of units that do not divide H, blocks smaller
  and larger than a step's work, one block, and one step. The cases are
  benchmarks/kernel_cases.py's (as in test_cupy_kernels.py): outputs are
  poisoned with NaN, every argument sits between guard cells, inputs must
  come out unchanged, and the barrier state is checked after every launch
  (arrivals back to 0, one generation per barrier).
  Forward and backward give bitwise-equal results on every run and for every
  slice and block size (fixed summation order, no atomics on data).
* Compilation: NVRTC for sm_80 and sm_90 with ptxas's resource report
  (``-Xptxas -v``): no spills, registers that fit any block size, and shared
  memory and residency of the whole grid for H = 400 on an A100 and an H100.

Error measure per output array: ``max|kernel - ref| / max|ref|``. A window
must be below 1e-4 for float32 kernels and below 1e-10 for float64 ones.
"""

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import cuda_emulation as emulation
from ltexec.backends.cupy import backend as cupy_backend
from test_cupy_kernels import DEVICE, assert_matches_reference, needs_gxx, nvrtc_compiled, nvrtc_log, nvrtc_or_skip

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

from kernel_cases import (Guarded, Shape, persistent_backward_case, persistent_forward_case,  # noqa: E402
                          persistent_grid, persistent_shared_bytes)

DTYPES = [np.float32, np.float64]
SOURCE = "lstm_persistent.cu"

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


# ----------------------------------------------- the cooperative emulation

@needs_gxx
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, block, grid, rounds", [(20, 8, 3, 3), (37, 4, 12, 2), (5, 16, 4, 3), (64, 32, 2, 1)])
def test_cooperative_emulation_runs_all_blocks_at_once(dtype, n, block, grid, rounds):
    rng = np.random.default_rng(n)
    x = rng.integers(-100, 100, n).astype(dtype)    # integers: every summation order is exact
    partials = Guarded.output(DEVICE, "partials", (rounds, grid), dtype)
    totals = Guarded.output(DEVICE, "totals", (rounds, grid), dtype)
    arrivals = Guarded(DEVICE, "arrivals", np.zeros(1, np.uint32), written=True)
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
    seen = Guarded.output(DEVICE, "seen", (grid, block), np.int32)
    emulation.kernels().launch_cooperative("shared_is_per_block", grid, block, 4 * block,
                                           (seen.array, np.zeros(1, np.uint32)))
    np.testing.assert_array_equal(seen.check(), np.repeat(np.arange(grid)[:, None], block, axis=1))


@needs_gxx
def test_cooperative_emulation_catches_writes_past_shared_memory():
    with pytest.raises(RuntimeError, match="past the end of its dynamic shared memory"):
        emulation.kernels().launch_cooperative("shared_is_per_block", 2, 8, 4 * 8 - 4,
                                               (np.zeros(16, np.int32), np.zeros(1, np.uint32)))


# --------------------------------------------------------------- arithmetic
# Each case checks the guards, the poison, the inputs left alone and the barrier's state after the launch
# (no arrivals left, one generation per barrier passed, counted modulo 2^32 from ``start``).

@needs_gxx
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T, B, H, units, block", SHAPES)
def test_forward_matches_reference(dtype, T, B, H, units, block):
    assert_matches_reference(persistent_forward_case(DEVICE, Shape(T=T, B=B, H=H), dtype, block,
                                                     seed=T * 1000 + B * 100 + H, units=units, start=H))


@needs_gxx
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T, B, H, units, block", SHAPES)
def test_backward_matches_reference(dtype, T, B, H, units, block):
    # dA, dh0, dc0, and the gradients the host computes from dA (dxs, dWx, dWh, db)
    case = persistent_backward_case(DEVICE, Shape(T=T, B=B, H=H), dtype, block, seed=T * 1000 + B * 100 + H + 1,
                                    units=units, start=2**32 - 2)
    assert {"gates", "dh0", "dc0", "dxs", "dWx", "dWh", "db", "barrier"} <= set(case.expected)
    assert_matches_reference(case)


@needs_gxx
@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=10, deadline=None)
@given(T=st.integers(1, 5), B=st.integers(1, 4), H=st.integers(1, 20), units=st.integers(1, 8),
       block=st.sampled_from([1, 5, 32, 64]), seed=st.integers(0, 2**32 - 1))
def test_forward_then_backward_matches_reference(dtype, T, B, H, units, block, seed):
    assume(persistent_grid(H, units) * block <= 512)     # host threads of the emulation
    shape = Shape(T=T, B=B, H=H)
    out = assert_matches_reference(persistent_forward_case(DEVICE, shape, dtype, block, seed, units=units))
    assert_matches_reference(persistent_backward_case(DEVICE, shape, dtype, block, seed, units=units,
                                                      activations=(out["gates"], out["cs"])))


@needs_gxx
@pytest.mark.parametrize("dtype", DTYPES)
def test_same_bits_on_every_run_and_for_every_slicing(dtype):
    shape = Shape(T=5, B=3, H=29)
    runs = [(4, 32), (4, 32), (7, 16), (29, 3), (3, 64)]      # (units, block); the first two are a rerun
    forwards = [persistent_forward_case(DEVICE, shape, dtype, block, seed=29, units=units).run(DEVICE)
                for units, block in runs]
    activations = (forwards[0]["gates"], forwards[0]["cs"])
    backwards = [persistent_backward_case(DEVICE, shape, dtype, block, seed=29, units=units,
                                          activations=activations).run(DEVICE)
                 for units, block in runs]
    for results in (forwards, backwards):
        for other in results[1:]:
            assert other.keys() == results[0].keys()
            for name, got in other.items():
                np.testing.assert_array_equal(got.view(np.uint8), results[0][name].view(np.uint8), err_msg=name)


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
    with nvrtc_compiled(nvrtc, SOURCE, f"--gpu-architecture={arch}", "-Xptxas", "-v") as (program, lowered_names):
        lowered = {name.decode(): expr for expr, name in lowered_names.items()}
        log = nvrtc_log(nvrtc, program)
    resources = {}
    for name, stack, stores, loads, registers, rest in re.findall(
            r"Compiling entry function '(\w+)' for 'sm_\d+'.*?(\d+) bytes stack frame, (\d+) bytes spill stores, "
            r"(\d+) bytes spill loads.*?Used (\d+) registers([^\n]*)", log, re.S):
        smem = re.search(r"(\d+) bytes smem", rest)
        resources[lowered[name]] = {"stack": int(stack), "spill_stores": int(stores), "spill_loads": int(loads),
                                    "registers": int(registers), "static_shared": int(smem[1]) if smem else 0}
    assert sorted(resources) == sorted(lowered.values()), log
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
            shared = persistent_shared_bytes(PAPER_H, units, dtype) + used["static_shared"]
            grid = persistent_grid(PAPER_H, units)
            per_sm = resident_blocks_per_sm(device, used["registers"], PAPER_BLOCK, shared)
            print(f"{arch} {expr}: {used['registers']} registers, H={PAPER_H} units={units}: {grid} blocks of "
                  f"{shared} B shared, {per_sm} per SM x {device['sms']} SMs ({device['name']})")
            assert shared <= device["shared_per_block"]
            assert per_sm * device["sms"] >= grid, f"{expr}: {grid} blocks do not fit on {device['name']} at once"
