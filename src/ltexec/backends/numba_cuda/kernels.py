"""CUDA kernels of the ``numba_cuda`` backend, written in Python with ``numba.cuda.jit``.

The design keeps a whole LSTM step in one kernel instead of splitting it into
a library matrix product and a pointwise kernel:

* :func:`lstm_forward_step` (one launch per layer and time step): a block
  owns a tile of hidden units ``j`` and batch rows ``r``. It stages h_{t-1}
  and the tile's columns of Wh for all four gates in shared memory, k-chunk
  by k-chunk, so each thread accumulates the recurrent part of a_i, a_f, a_g,
  a_o for its (r, j) in registers; it adds x_t Wx (precomputed for the whole
  window) and b, applies the gate activations and writes c_t, h_t and the
  activations i, f, g, o that the backward pass keeps. The pre-activations
  never go to global memory.
* :func:`lstm_backward_step` (one launch per layer and time step, backwards):
  the same tiling computes dh_t = dhs[t] + da_{t+1} Wh^T for its tile (da_{t+1}
  and Wh staged in shared memory), then the pointwise backward of step t,
  writing da_t over the activations and dc_{t-1} over dc_t.
* :func:`gemm`: a tiled shared-memory product C = op(A) op(B) (+ bias) for
  everything batched over the window (x_t Wx, the weight gradients, dxs, the
  output layer). Each thread computes a MICRO x MICRO block of C.
* :func:`softmax_xent`: softmax, masked cross-entropy, its gradient and the
  first-argmax hit of a row, one row per group of lanes; :func:`column_sums`
  reduces columns (db, and the per-row loss and hit counts) in a fixed order,
  so results are deterministic (no atomics anywhere).
* :func:`embedding_forward` / :func:`embedding_backward`: gather and a
  deterministic scatter-add (one thread per element of dE walks the ids).

Kernels are built per dtype by :func:`kernels` (the dtype is a compile-time
constant of the closure, so float32 kernels do float32 arithmetic: every
literal goes through ``real``). Block shapes come from the array shapes
(pure functions ``*_geometry``, capped by the tile constants that size the
shared arrays), so small problems launch small blocks.

:class:`Launcher` is the only way the backend runs a kernel: it picks the
geometry and launches on CuPy's current stream (the stream the backend's
CuPy operations are queued on, not necessarily the one an array was made
on). Called directly, it validates every array (type, dtype, shape,
contiguity) once per call before launching; the backend's launcher leaves
that to the backend's operations, which check their arguments on entry.
Under the CUDA simulator it takes NumPy arrays, which is how the tests run
every kernel on the CPU.
"""

from __future__ import annotations

import functools
import math
import warnings

import numba
import numpy as np
from numba import cuda

from ltexec.backends.common import ceil_div, check_array

RECURRENT_TILE_H = 32
"""Hidden units per block of the step kernels (a warp along j); also their k-chunk."""
RECURRENT_TILE_B = 8
"""Batch rows per block of the step kernels."""
GEMM_THREADS = 16
"""Threads per block side of :func:`gemm` at most: blocks are up to 16 x 16 threads."""
GEMM_MICRO = 4
"""Each :func:`gemm` thread computes a GEMM_MICRO x GEMM_MICRO block of C: tiles up to 64 x 64."""
GEMM_TILE_K = 16
"""The k-chunk :func:`gemm` stages in shared memory."""
SOFTMAX_LANES = 32
"""Threads per row of :func:`softmax_xent` at most (a power of two)."""
BLOCK_THREADS = 256
"""Threads per block of :func:`softmax_xent`, :func:`column_sums` and the elementwise kernels, at most."""
COLUMN_TILE = 32
"""Columns per block of :func:`column_sums`."""

GEMM_IMPLEMENTATIONS = ("tiled", "cublas")

# Shared-array extents: shapes must be literal constants when a kernel is compiled.
_GATE_COLUMNS = 4 * RECURRENT_TILE_H               # Wh columns of a unit tile, all four gates
_PADDED_TILE_H = RECURRENT_TILE_H + 1              # row pitch that keeps column reads conflict-free
_PADDED_GEMM_TILE = GEMM_THREADS * GEMM_MICRO + 1  # ditto for the GEMM tiles



# ------------------------------------------------------------------ geometry
# Each returns (grid, block) for a launch; x is the fastest-varying thread index. Grids put the
# extent that grows with T*B or B along x (up to 2**31 - 1 blocks); grid.y holds at most
# MAX_GRID_Y blocks, and the two-dimensional geometries refuse more with a ValueError.

MAX_GRID_Y = 65535
"""CUDA's limit on grid.y; grid.x goes to 2**31 - 1."""


def _check_grid_y(blocks: int, what: str) -> None:
    if blocks > MAX_GRID_Y:
        raise ValueError(f"{what} needs {blocks} blocks along grid.y, above CUDA's limit of {MAX_GRID_Y}")


def recurrent_geometry(B: int, H: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Step kernels: threads (j, r) over hidden units and batch rows; grid (row tiles, unit tiles)."""
    tile_h, tile_b = min(RECURRENT_TILE_H, H), min(RECURRENT_TILE_B, B)
    grid = (ceil_div(B, tile_b), ceil_div(H, tile_h))
    _check_grid_y(grid[1], f"a launch of the LSTM step kernels at H={H} ({tile_h} units per block)")
    return grid, (tile_h, tile_b)


def gemm_geometry(M: int, N: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """:func:`gemm` for C (M,N): threads (n, m), each covering GEMM_MICRO strided rows and columns;
    grid (row tiles, column tiles), since M (T*B for the window's products) is the extent that grows."""
    threads_n = min(GEMM_THREADS, ceil_div(N, GEMM_MICRO))
    threads_m = min(GEMM_THREADS, ceil_div(M, GEMM_MICRO))
    grid = (ceil_div(M, threads_m * GEMM_MICRO), ceil_div(N, threads_n * GEMM_MICRO))
    _check_grid_y(grid[1], f"a product with N={N} columns ({threads_n * GEMM_MICRO} per block)")
    return grid, (threads_n, threads_m)


def softmax_geometry(R: int, V: int) -> tuple[int, tuple[int, int]]:
    """:func:`softmax_xent` for R rows of V logits: lanes (a power of two) along V, rows along y."""
    lanes = min(SOFTMAX_LANES, 1 << (V - 1).bit_length())
    rows = min(BLOCK_THREADS // lanes, R)
    return ceil_div(R, rows), (lanes, rows)


def column_sums_geometry(M: int, N: int) -> tuple[int, tuple[int, int]]:
    """:func:`column_sums` of an (M,N) array: columns along x, partial sums over rows along y."""
    columns = min(COLUMN_TILE, N)
    partials = min(BLOCK_THREADS // columns, M)
    return ceil_div(N, columns), (columns, partials)


def elementwise_geometry(n: int) -> tuple[int, int]:
    """One thread per element of n."""
    threads = min(BLOCK_THREADS, n)
    return ceil_div(n, threads), threads


# ------------------------------------------------------------------- kernels

def kernels(dtype) -> dict:
    """The kernels for float32 or float64, by name; each compiles on its first launch."""
    return _build(np.dtype(dtype))


@functools.cache
def _build(dtype: np.dtype) -> dict:
    real = numba.from_dtype(dtype)             # the closure constant every kernel computes in

    @cuda.jit(device=True)
    def sigmoid(x):
        e = math.exp(-abs(x))                  # exp of -|x| only: never overflows
        s = real(1) / (real(1) + e)
        return s if x >= real(0) else e * s

    @cuda.jit
    def lstm_forward_step(gates, hs, cs, Wh, b, t):
        """Step t of one layer: gates[t] (B,4H) holds x_t Wx on entry, i, f, g, o on exit.

        hs, cs (T+1,B,H): reads h_{t-1}, c_{t-1} at index t, writes h_t, c_t at t+1.
        Wh (H,4H), b (4H,). Threads (j, r): hidden unit, batch row.
        """
        B, H = hs.shape[1], hs.shape[2]
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tile_h, tile_b = cuda.blockDim.x, cuda.blockDim.y
        j = cuda.blockIdx.y * tile_h + tx
        r = cuda.blockIdx.x * tile_b + ty
        h_s = cuda.shared.array((RECURRENT_TILE_B, RECURRENT_TILE_H), real)      # h_{t-1}[rows, k chunk]
        w_s = cuda.shared.array((RECURRENT_TILE_H, _GATE_COLUMNS), real)  # Wh[k chunk, i|f|g|o of the tile]
        a_i = real(0)
        a_f = real(0)
        a_g = real(0)
        a_o = real(0)
        for k0 in range(0, H, tile_h):
            k = k0 + tx
            h_s[ty, tx] = hs[t, r, k] if r < B and k < H else real(0)
            for kk in range(ty, tile_h, tile_b):
                for q in range(4):
                    inside = k0 + kk < H and j < H
                    w_s[kk, q * tile_h + tx] = Wh[k0 + kk, q * H + j] if inside else real(0)
            cuda.syncthreads()
            for kk in range(min(tile_h, H - k0)):
                h = h_s[ty, kk]
                a_i += h * w_s[kk, tx]
                a_f += h * w_s[kk, tile_h + tx]
                a_g += h * w_s[kk, 2 * tile_h + tx]
                a_o += h * w_s[kk, 3 * tile_h + tx]
            cuda.syncthreads()
        if r < B and j < H:
            i = sigmoid(gates[t, r, j] + a_i + b[j])
            f = sigmoid(gates[t, r, H + j] + a_f + b[H + j])
            g = math.tanh(gates[t, r, 2 * H + j] + a_g + b[2 * H + j])
            o = sigmoid(gates[t, r, 3 * H + j] + a_o + b[3 * H + j])
            c = f * cs[t, r, j] + i * g
            cs[t + 1, r, j] = c
            hs[t + 1, r, j] = o * math.tanh(c)
            gates[t, r, j] = i
            gates[t, r, H + j] = f
            gates[t, r, 2 * H + j] = g
            gates[t, r, 3 * H + j] = o

    @cuda.jit
    def lstm_backward_step(gates, dhs, dh_last, dc, cs, Wh, t):
        """Step t of BPTT for one layer: gates[t] (B,4H) holds i, f, g, o on entry, da_t on exit.

        dh_t = dhs[t] + da_{t+1} Wh^T (gates[t+1] already holds da_{t+1}), or
        dhs[t] + dh_last at the window's last step; dc (B,H) holds the gradient
        of c_t from step t+1 on entry and that of c_{t-1} on exit. cs (T+1,B,H)
        as in the forward pass; dhs (T,B,H); Wh (H,4H).
        """
        T, B, H = dhs.shape
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tile_h, tile_b = cuda.blockDim.x, cuda.blockDim.y
        j0 = cuda.blockIdx.y * tile_h
        j = j0 + tx
        r = cuda.blockIdx.x * tile_b + ty
        da_s = cuda.shared.array((RECURRENT_TILE_B, RECURRENT_TILE_H), real)     # da_{t+1}[rows, k chunk]
        w_s = cuda.shared.array((RECURRENT_TILE_H, _PADDED_TILE_H), real)     # Wh[units, k chunk]
        dh_next = real(0)                      # da_{t+1} Wh^T for (r, j)
        if t + 1 < T:                          # the same for the whole grid: barriers stay uniform
            for k0 in range(0, 4 * H, tile_h):
                k = k0 + tx
                da_s[ty, tx] = gates[t + 1, r, k] if r < B and k < 4 * H else real(0)
                for jj in range(ty, tile_h, tile_b):
                    w_s[jj, tx] = Wh[j0 + jj, k] if j0 + jj < H and k < 4 * H else real(0)
                cuda.syncthreads()
                for kk in range(min(tile_h, 4 * H - k0)):
                    dh_next += da_s[ty, kk] * w_s[tx, kk]
                cuda.syncthreads()
        if r < B and j < H:
            dh = dhs[t, r, j] + (dh_next if t + 1 < T else dh_last[r, j])
            i = gates[t, r, j]
            f = gates[t, r, H + j]
            g = gates[t, r, 2 * H + j]
            o = gates[t, r, 3 * H + j]
            tanh_c = math.tanh(cs[t + 1, r, j])
            dc_t = dc[r, j] + dh * o * (real(1) - tanh_c * tanh_c)
            gates[t, r, j] = dc_t * g * i * (real(1) - i)                       # da_i
            gates[t, r, H + j] = dc_t * cs[t, r, j] * f * (real(1) - f)         # da_f
            gates[t, r, 2 * H + j] = dc_t * i * (real(1) - g * g)               # da_g
            gates[t, r, 3 * H + j] = dh * tanh_c * o * (real(1) - o)            # da_o
            dc[r, j] = dc_t * f

    @cuda.jit(device=True)
    def stage_k_major(s, X, k_major, k0, x0, K, extent, tile_x, tid, threads):
        """s[kk, x] = element (k0+kk, x0+x) of a (K, extent) operand, zero outside it.

        The operand is X itself if ``k_major`` (X is (K, extent)), else X^T.
        Consecutive threads read consecutive addresses of X either way.
        """
        for e in range(tid, GEMM_TILE_K * tile_x, threads):
            if k_major:
                kk, x = e // tile_x, e % tile_x
                inside = k0 + kk < K and x0 + x < extent
                s[kk, x] = X[k0 + kk, x0 + x] if inside else real(0)
            else:
                x, kk = e // GEMM_TILE_K, e % GEMM_TILE_K
                inside = k0 + kk < K and x0 + x < extent
                s[kk, x] = X[x0 + x, k0 + kk] if inside else real(0)

    @cuda.jit
    def gemm(A, B, C, bias, trans_a, trans_b, add_bias):
        """C (M,N) = op(A) op(B), plus bias (N,) on every row if add_bias.

        op(A) is A (M,K), or A^T for A (K,M) if trans_a; op(B) is B (K,N), or
        B^T for B (N,K) if trans_b. Threads (tx, ty) own rows ty + p*ny and
        columns tx + q*nx of the block's tile (p, q < GEMM_MICRO).
        """
        M, N = C.shape
        K = A.shape[0] if trans_a else A.shape[1]
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        nx, ny = cuda.blockDim.x, cuda.blockDim.y
        tile_m, tile_n = ny * GEMM_MICRO, nx * GEMM_MICRO
        m0, n0 = cuda.blockIdx.x * tile_m, cuda.blockIdx.y * tile_n
        tid, threads = ty * nx + tx, nx * ny
        a_s = cuda.shared.array((GEMM_TILE_K, _PADDED_GEMM_TILE), real)   # op(A)^T tile [kk, m]
        b_s = cuda.shared.array((GEMM_TILE_K, _PADDED_GEMM_TILE), real)   # op(B) tile [kk, n]
        acc = cuda.local.array((GEMM_MICRO, GEMM_MICRO), real)
        a_r = cuda.local.array(GEMM_MICRO, real)
        b_r = cuda.local.array(GEMM_MICRO, real)
        for p in range(GEMM_MICRO):
            for q in range(GEMM_MICRO):
                acc[p, q] = real(0)
        for k0 in range(0, K, GEMM_TILE_K):
            stage_k_major(a_s, A, trans_a, k0, m0, K, M, tile_m, tid, threads)
            stage_k_major(b_s, B, not trans_b, k0, n0, K, N, tile_n, tid, threads)
            cuda.syncthreads()
            for kk in range(min(GEMM_TILE_K, K - k0)):
                for p in range(GEMM_MICRO):
                    a_r[p] = a_s[kk, ty + p * ny]
                for q in range(GEMM_MICRO):
                    b_r[q] = b_s[kk, tx + q * nx]
                for p in range(GEMM_MICRO):
                    for q in range(GEMM_MICRO):
                        acc[p, q] += a_r[p] * b_r[q]
            cuda.syncthreads()
        for p in range(GEMM_MICRO):
            m = m0 + ty + p * ny
            for q in range(GEMM_MICRO):
                n = n0 + tx + q * nx
                if m < M and n < N:
                    C[m, n] = acc[p, q] + bias[n] if add_bias else acc[p, q]

    @cuda.jit
    def column_sums(A, out):
        """out (N,) = A (M,N) summed over rows: each thread sums rows ty, ty+ny, ..., then y is reduced."""
        M, N = A.shape
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        nx, ny = cuda.blockDim.x, cuda.blockDim.y
        n = cuda.blockIdx.x * nx + tx
        partial = cuda.shared.array(BLOCK_THREADS, real)    # [ty * nx + tx]
        s = real(0)
        if n < N:
            for m in range(ty, M, ny):
                s += A[m, n]
        partial[ty * nx + tx] = s
        cuda.syncthreads()
        if ty == 0 and n < N:
            for p in range(1, ny):
                s += partial[p * nx + tx]
            out[n] = s

    @cuda.jit(device=True)
    def reduce_lanes(values, indices, row0, lane, lanes, take_max):
        """Tree reduction of a row's lanes (values[row0 + lane]) into values[row0]: the sum, or the
        first maximum with its index in indices."""
        stride = lanes // 2
        while stride > 0:
            if lane < stride:
                mine, other = row0 + lane, row0 + lane + stride
                if not take_max:
                    values[mine] += values[other]
                elif values[other] > values[mine] or (values[other] == values[mine]
                                                      and indices[other] < indices[mine]):
                    values[mine] = values[other]
                    indices[mine] = indices[other]
            cuda.syncthreads()
            stride //= 2

    @cuda.jit
    def softmax_xent(logits, y, mask, dlogits, row_stats):
        """Per row n of logits (R,V), with target y[n] and weight mask[n] (0 or 1):

        dlogits[n] = (softmax(logits[n]) - onehot(y[n])) * mask[n]
        row_stats[n] = (mask[n] * -log softmax(logits[n])[y[n]], mask[n] * [first argmax == y[n]])
        A target outside [0, V) gives a NaN loss. Threads (lane, slot): lanes along V, one row per slot.
        """
        R, V = logits.shape
        lane, slot = cuda.threadIdx.x, cuda.threadIdx.y
        lanes = cuda.blockDim.x
        n = cuda.blockIdx.x * cuda.blockDim.y + slot
        row0 = slot * lanes                    # this row's lanes in the shared arrays
        values = cuda.shared.array(BLOCK_THREADS, real)
        indices = cuda.shared.array(BLOCK_THREADS, numba.int64)
        best = real(-math.inf)                 # this lane's first maximum and its column
        best_k = V
        if n < R:
            for k in range(lane, V, lanes):
                if logits[n, k] > best:
                    best = logits[n, k]
                    best_k = k
        values[row0 + lane] = best
        indices[row0 + lane] = best_k
        cuda.syncthreads()
        reduce_lanes(values, indices, row0, lane, lanes, True)
        row_max = values[row0]
        argmax = indices[row0]
        cuda.syncthreads()                     # every lane has read the maximum before the sums overwrite it
        z = real(0)
        if n < R:
            for k in range(lane, V, lanes):
                z += math.exp(logits[n, k] - row_max)
        values[row0 + lane] = z
        cuda.syncthreads()
        reduce_lanes(values, indices, row0, lane, lanes, False)
        if n < R:
            z = values[row0]
            w, target = mask[n], y[n]
            for k in range(lane, V, lanes):
                p = math.exp(logits[n, k] - row_max) / z
                dlogits[n, k] = (p - real(1) if k == target else p) * w
            if lane == 0:
                valid = 0 <= target < V
                shifted_y = logits[n, target] - row_max if valid else real(math.nan)
                row_stats[n, 0] = w * (math.log(z) - shifted_y)
                row_stats[n, 1] = w if argmax == target else real(0)

    @cuda.jit
    def embedding_forward(E, ids, xs):
        """xs (R,D) = rows of E (V,D) for ids (R,); an id outside [0, V) gives a NaN row."""
        R, D = xs.shape
        e = cuda.grid(1)
        if e < R * D:
            n, d = e // D, e % D
            v = ids[n]
            xs[n, d] = E[v, d] if 0 <= v < E.shape[0] else real(math.nan)

    @cuda.jit
    def embedding_backward(dxs, ids, dE):
        """dE (V,D): row v is the sum of the rows n of dxs (R,D) with ids[n] == v, added in order of n."""
        V, D = dE.shape
        e = cuda.grid(1)
        if e < V * D:
            v, d = e // D, e % D
            s = real(0)
            for n in range(ids.shape[0]):
                if ids[n] == v:
                    s += dxs[n, d]
            dE[v, d] = s

    return {"lstm_forward_step": lstm_forward_step, "lstm_backward_step": lstm_backward_step,
            "gemm": gemm, "column_sums": column_sums, "softmax_xent": softmax_xent,
            "embedding_forward": embedding_forward, "embedding_backward": embedding_backward}


def signatures(dtype) -> dict[str, tuple]:
    """The argument types every kernel is launched with, by name (for ahead-of-time compile checks)."""
    real = numba.from_dtype(np.dtype(dtype))
    v, m, t3 = real[::1], real[:, ::1], real[:, :, ::1]
    ids = numba.int64[::1]
    i64, flag = numba.int64, numba.boolean
    return {"lstm_forward_step": (t3, t3, t3, m, v, i64),
            "lstm_backward_step": (t3, t3, m, m, t3, m, i64),
            "gemm": (m, m, m, v, flag, flag, flag),
            "column_sums": (m, v),
            "softmax_xent": (m, ids, v, m, m),
            "embedding_forward": (m, ids, m),
            "embedding_backward": (m, ids, m)}


# ------------------------------------------------------------------ launcher

class Launcher:
    """Validates arrays and launches the kernels of one dtype.

    ``xp`` is the array module the arrays belong to: CuPy on a device (the
    kernels get numba views of the CuPy memory and run on CuPy's current
    stream, so kernels and CuPy operations stay in order without a host
    synchronisation), NumPy under the CUDA simulator. ``gemm`` picks the
    products batched over the window: ``"tiled"`` (:func:`gemm`) or
    ``"cublas"`` (``xp.matmul`` on the same arrays; CuPy only). ``check``:
    validate every array of a call before launching (off for a caller that
    has checked them already, like the backend).
    """

    def __init__(self, dtype, xp, gemm: str = "tiled", check: bool = True):
        self.dtype = np.dtype(dtype)
        self.xp = xp
        if gemm not in GEMM_IMPLEMENTATIONS:
            raise ValueError(f"gemm must be one of {GEMM_IMPLEMENTATIONS}, got {gemm!r}")
        self.simulated = xp is np
        if gemm == "cublas" and self.simulated:
            raise ValueError("gemm='cublas' needs CuPy arrays on a device; the simulator has only 'tiled'")
        self.gemm_impl = gemm
        self.check_arrays = check
        self._k = kernels(self.dtype)
        self._no_bias = xp.zeros(1, self.dtype)     # the bias argument of gemm when there is none (never read)
        self._streams = {}

    # ------------------------------------------------------------ checks

    def check(self, name: str, a, shape: tuple, dtype=None) -> tuple:
        """a's shape, once a is a non-empty C-contiguous array of xp with that dtype and shape (None = any).

        Without ``check_arrays`` only the shape (the caller has checked the rest).
        """
        if not self.check_arrays:
            return tuple(a.shape)
        return check_array(name, a, shape, self.dtype if dtype is None else dtype, self.xp.ndarray)

    # ----------------------------------------------------------- launches

    def lstm_forward(self, gates, hs, cs, Wh, b) -> None:
        """All T fused forward steps of one layer (see :func:`lstm_forward_step`)."""
        T, B, _ = self.check("gates", gates, (None, None, None))
        H = self.check("Wh", Wh, (None, None))[0]
        self.check("Wh", Wh, (H, 4 * H))
        self.check("gates", gates, (T, B, 4 * H))
        self.check("hs", hs, (T + 1, B, H))
        self.check("cs", cs, (T + 1, B, H))
        self.check("b", b, (4 * H,))
        step = self._configured("lstm_forward_step", *recurrent_geometry(B, H))
        args = self._views(gates, hs, cs, Wh, b)
        for t in range(T):
            step(*args, t)

    def lstm_backward(self, gates, dhs, dh_last, dc, cs, Wh) -> None:
        """All T fused backward steps of one layer, t = T-1 down to 0 (see :func:`lstm_backward_step`)."""
        T, B, H = self.check("dhs", dhs, (None, None, None))
        self.check("gates", gates, (T, B, 4 * H))
        self.check("dh_last", dh_last, (B, H))
        self.check("dc", dc, (B, H))
        self.check("cs", cs, (T + 1, B, H))
        self.check("Wh", Wh, (H, 4 * H))
        step = self._configured("lstm_backward_step", *recurrent_geometry(B, H))
        args = self._views(gates, dhs, dh_last, dc, cs, Wh)
        for t in reversed(range(T)):
            step(*args, t)

    def gemm(self, A, B, C, trans_a: bool = False, trans_b: bool = False, bias=None) -> None:
        """C = op(A) op(B) (+ bias on every row); see :func:`gemm`."""
        M, N = self.check("C", C, (None, None))
        K = self.check("A", A, (None, M) if trans_a else (M, None))[0 if trans_a else 1]
        self.check("B", B, (N, K) if trans_b else (K, N))
        if bias is not None:
            self.check("bias", bias, (N,))
        if self.gemm_impl == "cublas":
            self.xp.matmul(A.T if trans_a else A, B.T if trans_b else B, out=C)
            if bias is not None:
                C += bias
            return
        kernel = self._configured("gemm", *gemm_geometry(M, N))
        kernel(*self._views(A, B, C, self._no_bias if bias is None else bias),
               bool(trans_a), bool(trans_b), bias is not None)

    def column_sums(self, A, out) -> None:
        """out (N,) = A (M,N) summed over rows."""
        M, N = self.check("A", A, (None, None))
        self.check("out", out, (N,))
        self._configured("column_sums", *column_sums_geometry(M, N))(*self._views(A, out))

    def softmax_xent(self, logits, y, mask, dlogits, row_stats) -> None:
        """Fused softmax cross-entropy of every row; see :func:`softmax_xent`."""
        R, V = self.check("logits", logits, (None, None))
        self.check("y", y, (R,), np.int64)
        self.check("mask", mask, (R,))
        self.check("dlogits", dlogits, (R, V))
        self.check("row_stats", row_stats, (R, 2))
        kernel = self._configured("softmax_xent", *softmax_geometry(R, V))
        kernel(*self._views(logits, y, mask, dlogits, row_stats))

    def embedding_forward(self, E, ids, xs) -> None:
        """xs (R,D) = E[ids]."""
        D = self.check("E", E, (None, None))[1]
        R = self.check("ids", ids, (None,), np.int64)[0]
        self.check("xs", xs, (R, D))
        self._configured("embedding_forward", *elementwise_geometry(R * D))(*self._views(E, ids, xs))

    def embedding_backward(self, dxs, ids, dE) -> None:
        """dE (V,D) = the rows of dxs (R,D) summed per id."""
        R, D = self.check("dxs", dxs, (None, None))
        self.check("ids", ids, (R,), np.int64)
        V = self.check("dE", dE, (None, D))[0]
        self._configured("embedding_backward", *elementwise_geometry(V * D))(*self._views(dxs, ids, dE))

    # ------------------------------------------------------------ plumbing

    def _configured(self, name: str, grid, block):
        """Kernel ``name`` configured for a launch on the current stream.

        Numba warns about grids under 128 blocks; here they are as large as
        the shapes allow (e.g. one batch-sized product, or the two loss
        totals), so that warning is silenced for these launches only.
        """
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Grid size .* under-utilization")
            return self._k[name][grid, block, self.stream()]

    def stream(self):
        """The numba stream for CuPy's current stream (0 under the simulator): where every launch goes."""
        if self.simulated:
            return 0
        ptr = self.xp.cuda.get_current_stream().ptr
        if ptr not in self._streams:
            self._streams[ptr] = cuda.external_stream(ptr) if ptr else cuda.legacy_default_stream()
        return self._streams[ptr]

    def _views(self, *arrays) -> tuple:
        """What the kernels get: the NumPy arrays themselves, or numba views of CuPy memory.

        ``sync=False``: the arrays belong to the stream the kernels run on, so
        importing them must not wait for that stream.
        """
        if self.simulated:
            return arrays
        return tuple(cuda.as_cuda_array(a, sync=False) for a in arrays)
