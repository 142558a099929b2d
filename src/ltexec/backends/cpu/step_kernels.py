"""Register-blocked Numba product for the per-step matrix products of the LSTM recurrence.

Per time step and lane, the ``cpu`` backend multiplies ~50 rows by ``Wh``
(forward ``h_{t-1} Wh``: K=H, N=4H) or by ``Wh^T`` (backward ``da_t Wh^T``:
K=4H, N=H). Through the BLAS every such call repacks the weight matrix and
blocks the rows by 16, which 50 rows fit badly. :func:`step_product` instead
takes the matrix packed once per window into column panels
(:func:`pack_columns`) and computes an MR x NR block of the product in a
stack tile that LLVM keeps in vector registers, the K loop outside the row
and column loops. On one core of a 2-core AMD EPYC (Zen 4, AVX-512) it ran
these shapes 1.25-1.7x faster than NumPy's OpenBLAS (docs/benchmarks.md,
``benchmarks/bench_step_product.py``); on an Intel Xeon with two 512-bit FMA
units OpenBLAS was the faster. The backend's tuner times both at the run's
shapes and takes the faster (:mod:`ltexec.tuning`).

The tile must fit the register file: MR * NR / 16 of the 32 AVX-512
registers for float32. Without AVX-512 (16 registers of 8 floats) or in
float64 (8 per register) the same tiles spill (:func:`host_has_avx512`,
which the step-product benchmark records, tells which case a machine is).
"""

from __future__ import annotations

import functools

import numpy as np
from llvmlite import ir
from llvmlite import binding as llvm
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ltexec.backends.common import ceil_div
from ltexec.backends.cpu.kernels import FASTMATH

jit = njit(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")


@intrinsic(prefer_literal=True)
def _stack_buffer(typingctx, like, count):
    """A pointer to ``count`` (a literal) elements of ``like``'s dtype on the stack (jitted code only).

    Memory on the stack that nothing else can alias is what lets LLVM keep the
    accumulator tile in registers; an array from ``np.empty`` lives on the heap.
    """
    if not isinstance(like, types.Array) or not isinstance(count, types.IntegerLiteral):
        return None
    n, elty = count.literal_value, like.dtype

    def codegen(context, builder, signature, args):
        llty = context.get_value_type(elty)
        ptr = cgutils.alloca_once(builder, ir.ArrayType(llty, n))
        return builder.bitcast(ptr, llty.as_pointer())

    return types.CPointer(elty)(like, count), codegen


def host_has_avx512() -> bool:
    """Whether the CPU Numba compiles for has AVX-512F (what the tiles need to stay in registers)."""
    return "+avx512f" in llvm.get_host_cpu_features().flatten().split(",")


def pack_columns(W, nr: int, out=None):
    """(P, K, nr) column panels of W (K, N), P = ceil(N / nr), the last one zero-padded.

    Written into ``out`` (a (P, K, nr) array of W's dtype) when given, so a
    caller can pack into a reused buffer every window.
    """
    K, N = W.shape
    P = ceil_div(N, nr)
    wp = np.empty((P, K, nr), W.dtype) if out is None else out
    for p in range(P):
        c0, c1 = p * nr, min(N, (p + 1) * nr)
        wp[p, :, :c1 - c0] = W[:, c0:c1]
    wp[P - 1, :, N - (P - 1) * nr:] = 0
    return wp


@njit(inline="always", nogil=True, fastmath=FASTMATH, error_model="numpy")
def _accumulate(a, i0, rows, panel, acc, NR):
    """acc[:rows] = a[i0:i0+rows] @ panel; constant rows and NR (after inlining) let LLVM unroll the loops
    and promote the tile to registers."""
    K = panel.shape[0]
    for r in range(rows):
        t = acc[r]
        for j in range(NR):
            t[j] = 0
    for k in range(K):
        w = panel[k]
        for r in range(rows):
            x = a[i0 + r, k]
            t = acc[r]
            for j in range(NR):
                t[j] += x * w[j]


@njit(inline="always", nogil=True, fastmath=FASTMATH, error_model="numpy")
def _block(a, i0, end, panel, acc, MR, NR):
    """Rows i0.. of a (MR of them, else 4, 2 or 1 while fewer are left) times panel into acc; returns how many.

    Every branch has a constant row count, so each tail is unrolled and kept in registers too.
    """
    left = end - i0
    if left >= MR:
        _accumulate(a, i0, MR, panel, acc, NR)
        return MR
    if MR > 4 and left >= 4:
        _accumulate(a, i0, 4, panel, acc, NR)
        return 4
    if MR > 2 and left >= 2:
        _accumulate(a, i0, 2, panel, acc, NR)
        return 2
    _accumulate(a, i0, 1, panel, acc, NR)
    return 1


@functools.cache
def step_product(mr: int, nr: int):
    """The jitted ``product(a, wp, out, n)`` for blocks of ``mr`` rows and panels of ``nr`` columns.

    nr should be a multiple of 16 (one AVX-512 vector of float32). The tile
    holds mr*nr values: for float32 ``mr * nr / 16`` vector registers, which
    should stay under ~28 of the 32 (e.g. 5 x 64, 6 x 64, 5 x 80). nr=32 (8 or
    12 rows) compiles to a loop that LLVM vectorizes across k instead, >10x
    slower; float64 blocks of these sizes are correct but spill.

    The kernel is cached on disk like the others: its closure holds only the
    integers mr, nr and their product (what Numba's cache keys on), the
    helpers it inlines are module functions.
    """
    MR, NR = mr, nr
    TILE = MR * NR

    @jit
    def product(a, wp, out, n):
        """out[:, :n] (M, n) = a (M, K) @ W for wp = pack_columns(W, NR) (P, K, NR)."""
        M = a.shape[0]
        acc = carray(_stack_buffer(a, TILE), (MR, NR))
        for p in range(wp.shape[0]):
            c0 = p * NR
            nc = min(NR, n - c0)
            panel = wp[p]
            i0 = 0
            while i0 < M:
                rows = _block(a, i0, M, panel, acc, MR, NR)
                for r in range(rows):
                    o, t = out[i0 + r, c0:c0 + nc], acc[r]
                    for j in range(nc):
                        o[j] = t[j]
                i0 += rows

    return product
