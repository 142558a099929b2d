"""Persistent LSTM recurrence in numba-cuda: one launch runs all T steps of one layer and window.

The per-step kernels of :mod:`.kernels` launch once per layer,
time step and direction (100 launches per layer and window at T = 50), and
each launch stages its tile of Wh from global memory again. Here one
cooperative launch runs the whole recurrence: every block loads its part of
Wh into shared memory once and keeps it there for all T steps, and a grid
barrier (``cuda.cg.this_grid().sync()``) stands between consecutive steps.

The arithmetic is the reference's cell, step by step (the equations are in
:mod:`ltexec.backends.numpy.backend`'s docstring); xproj_t = x_t Wx comes computed for the
whole window by the products batched over it. Forward runs t = 0 .. T-1 from
h0, c0; backward runs t = T-1 .. 0 with dh_t = dhs[t] + dA_{t+1} Wh^T (dhT in
place of the last term at t = T-1) and dc starting at dcT, and leaves
dh0 = dA_0 Wh^T and dc0.

The host forms dWx = X^T dA, dWh = H_prev^T dA, db = sum of dA and
dxs = dA Wx^T from dA after the launch, as the per-step path does.

Design: hidden units are split into contiguous slices, ``units_per_block``
(U) per block; block ``blk`` owns units j0 = blk*U .. j0+n-1 (n = U, fewer
in the last block) for all B batch rows. A work item is one (row r, unit u)
pair, item e = r*n + u; a thread takes items tid, tid + threads, ... and
keeps the same items for every step and phase.

* Forward: the block's shared memory holds the columns of Wh for the four
  gates of its units, ``w_s[k*4n + q*n + u] = Wh[k, q*H + j0 + u]`` (H x 4n
  values), loaded once. Per step an item reads h_{t-1}[r, :] of ALL units
  from global memory (written by every block in the previous step), forms
  its four pre-activations, applies the gate maths and writes h_t, c_t and
  the activations i, f, g, o of its own (r, j) only; then the grid barrier.
* Backward: the block's shared memory holds the ROWS of Wh of its units,
  ``w_s[u*(4H+1) + k] = Wh[j0 + u, k]`` (the pitch 4H+1 keeps the n rows in
  different banks when a warp reads one k of several units). Per step an
  item forms dh_t[r, j] from dA_{t+1}[r, :] of ALL units (written by every
  block in the previous iteration) and its shared row of Wh, then the
  pointwise backward of its own (r, j), writing dA_t and the running
  dc (kept in dc0); then the grid barrier. One more phase after the last
  barrier forms dh0 = dA_0 Wh^T for its units.

Why one barrier per step suffices: within a step a block writes only its own
units' elements (h_t, c_t, gates_t, or dA_t, dc) and reads other blocks'
elements only of the previous step (h_{t-1} or dA_{t+1}), which nobody writes
in this step; so the only cross-block dependency is step to step. Everything
a thread writes it alone reads again (its own items), so no block barrier is
needed inside a step either; ``cuda.syncthreads()`` follows the shared-memory
load. No atomics: every sum runs in a fixed order, so the same inputs give
bitwise-equal outputs. Outputs may alias inputs as the per-step path's
buffers do: gates may be xproj, hs and h0 may be ``hs_full[1:]`` and
``hs_full[0]`` of one (T+1,B,H) buffer (likewise cs and c0), dA may be
gates and dc0 may be dcT: each such element is read before it is written, by
the thread that writes it.

Shared memory is dynamic (``cuda.shared.array(0, dtype)``, sized at launch):
H*4U*itemsize bytes forward, U*(4H+1)*itemsize backward. At the paper's
size (H = 400, B = 100) one block per SM with U = 4 (100 blocks, under the
108 SMs of an A100 and the 132 of an H100/H200) needs 25.6 KB in float32 and
51.2 KB in float64. Above 48 KB a kernel must opt in to a larger limit
(``CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES``, at most 163 KB per
block on sm_80, 227 KB on sm_90). numba-cuda (0.30) has no public call for
that attribute (numba-cuda issue 94 asks for one): :func:`allow_dynamic_shared_memory`
sets it through numba's driver wrapper on the compiled kernel's handle, the
call numba's own ``set_shared_memory_carveout`` makes for another attribute.

A cooperative launch needs every block resident at once: the shared plan's
``residency_problem`` compares the grid with ``max_cooperative_grid_blocks``
(an injected callable in tests) and says why it does not fit, so a backend can fall back to its
per-step kernels and report that. numba's CUDA simulator runs cooperative
grids of one block only (its grid barrier is a block barrier), so the
launcher refuses a larger grid there instead of computing garbage.

The per-item work (the shared-memory loads, one step of one item, dh0) is
written once in :func:`_step_functions` and compiled as device functions for
the kernels; :func:`step_functions` returns the same source as plain Python,
so tests can run every block of a grid step by step on the CPU.
"""

from __future__ import annotations

import functools
import math
import types
import warnings

import numba
import numpy as np
from numba import cuda

from ltexec.backends.persistent_plan import PersistentGeometry, persistent_geometry, residency_problem

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
MAX_THREADS = 512
"""Threads per block at most; a block with more items gives each thread several."""
DEFAULT_SHARED_BYTES = 48 * 1024
"""Dynamic shared memory a block may use without opting in."""
OPT_IN_SHARED_BYTES = {(7, 0): 96 * 1024, (7, 5): 64 * 1024, (8, 0): 163 * 1024, (8, 6): 99 * 1024,
                       (8, 7): 163 * 1024, (8, 9): 99 * 1024, (9, 0): 227 * 1024}
"""Shared memory per block with the opt-in, by compute capability (CUDA programming guide)."""
KERNEL_NAMES = {"forward": "lstm_forward_persistent", "backward": "lstm_backward_persistent"}
"""The kernel of each direction."""



# ------------------------------------------------------------------ geometry

def launch_geometry(H: int, B: int, dtype, max_blocks: int) -> PersistentGeometry:
    """The shared plan (:func:`~ltexec.backends.persistent_plan.persistent_geometry`) for these kernels: at
    most MAX_THREADS threads a block, the backward kernel's Wh rows padded to 4H+1 values."""
    return persistent_geometry(H, B, _float_dtype(dtype).itemsize, max_blocks, max_threads=MAX_THREADS,
                               backward_row_pitch=4 * H + 1)


def shared_memory_limit(cc: tuple[int, int]) -> int:
    """Dynamic shared memory per block with the opt-in on compute capability ``cc``; 48 KB if unknown.

    On a device, its ``MAX_SHARED_MEMORY_PER_BLOCK_OPTIN`` attribute is the
    authority (:meth:`PersistentLauncher.residency_problem` reads it).
    """
    return OPT_IN_SHARED_BYTES.get(tuple(cc), DEFAULT_SHARED_BYTES)


def _float_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


# ---------------------------------------------------------- per-item work

def _step_functions(real, jit) -> types.SimpleNamespace:
    """The per-item work of both kernels, decorated with ``jit``; ``real`` is the dtype's scalar type.

    Item e of a block (first unit j0, n units) is row r = e // n, unit
    j = j0 + e % n. Shapes as in the kernels.
    """

    @jit
    def sigmoid(x):
        e = math.exp(-abs(x))                  # exp of -|x| only: never overflows
        s = real(1) / (real(1) + e)
        return s if x >= real(0) else e * s

    @jit
    def block_units(block, units_per_block, H):
        """(j0, n): the first unit and the number of units of ``block``."""
        j0 = block * units_per_block
        return j0, min(units_per_block, H - j0)

    @jit
    def forward_load(e, j0, n, Wh, w_s):
        """Element e of the block's Wh columns: w_s[k*4n + q*n + u] = Wh[k, q*H + j0 + u]."""
        H = Wh.shape[0]
        k, c = e // (4 * n), e % (4 * n)
        w_s[e] = Wh[k, (c // n) * H + j0 + c % n]

    @jit
    def forward_item(t, e, j0, n, w_s, xproj, h0, c0, b, hs, cs, gates):
        """Step t of item e: h_t, c_t and i, f, g, o of (r, j) from h_{t-1} of every unit."""
        H = hs.shape[2]
        r, u = e // n, e % n
        j = j0 + u
        a_i = real(0)
        a_f = real(0)
        a_g = real(0)
        a_o = real(0)
        for k in range(H):
            h = hs[t - 1, r, k] if t > 0 else h0[r, k]
            w = k * 4 * n + u
            a_i += h * w_s[w]
            a_f += h * w_s[w + n]
            a_g += h * w_s[w + 2 * n]
            a_o += h * w_s[w + 3 * n]
        x_i, x_f = xproj[t, r, j], xproj[t, r, H + j]           # all read before gates (may be xproj) is written
        x_g, x_o = xproj[t, r, 2 * H + j], xproj[t, r, 3 * H + j]
        c_prev = cs[t - 1, r, j] if t > 0 else c0[r, j]
        i = sigmoid(x_i + a_i + b[j])
        f = sigmoid(x_f + a_f + b[H + j])
        g = math.tanh(x_g + a_g + b[2 * H + j])
        o = sigmoid(x_o + a_o + b[3 * H + j])
        c = f * c_prev + i * g
        cs[t, r, j] = c
        hs[t, r, j] = o * math.tanh(c)
        gates[t, r, j] = i
        gates[t, r, H + j] = f
        gates[t, r, 2 * H + j] = g
        gates[t, r, 3 * H + j] = o

    @jit
    def backward_load(e, j0, Wh, w_s):
        """Element e of the block's Wh rows: w_s[u*(4H+1) + k] = Wh[j0 + u, k]."""
        four_h = Wh.shape[1]
        u, k = e // four_h, e % four_h
        w_s[u * (four_h + 1) + k] = Wh[j0 + u, k]

    @jit
    def recurrent_dot(dA, t, r, u, w_s):
        """dA[t, r, :] . Wh[j0 + u, :] (row u of the block's shared rows) in four partial sums (partial p
        takes k = p, p + 4, ...; 4H terms) added as (s0 + s1) + (s2 + s3): independent sums hide the FMA
        latency one accumulator waits on at every term, and the fixed order keeps the bits run to run."""
        four_h = dA.shape[2]
        row = u * (four_h + 1)
        s0 = s1 = s2 = s3 = real(0)
        for k in range(0, four_h, 4):
            s0 += dA[t, r, k] * w_s[row + k]
            s1 += dA[t, r, k + 1] * w_s[row + k + 1]
            s2 += dA[t, r, k + 2] * w_s[row + k + 2]
            s3 += dA[t, r, k + 3] * w_s[row + k + 3]
        return (s0 + s1) + (s2 + s3)

    @jit
    def backward_item(t, e, j0, n, w_s, gates, cs, c0, dhs, dhT, dcT, dA, dc0):
        """Step t of BPTT for item e: dA_t of (r, j) from dA_{t+1} of every unit; dc0 carries dc."""
        T, H = dhs.shape[0], dhs.shape[2]
        r, u = e // n, e % n
        j = j0 + u
        last = t + 1 == T
        dh = dhs[t, r, j] + (dhT[r, j] if last else recurrent_dot(dA, t + 1, r, u, w_s))
        dc = dcT[r, j] if last else dc0[r, j]
        i, f = gates[t, r, j], gates[t, r, H + j]              # all read before dA (may be gates) is written
        g, o = gates[t, r, 2 * H + j], gates[t, r, 3 * H + j]
        c_prev = cs[t - 1, r, j] if t > 0 else c0[r, j]
        tanh_c = math.tanh(cs[t, r, j])
        dc_t = dc + dh * o * (real(1) - tanh_c * tanh_c)
        dA[t, r, j] = dc_t * g * i * (real(1) - i)
        dA[t, r, H + j] = dc_t * c_prev * f * (real(1) - f)
        dA[t, r, 2 * H + j] = dc_t * i * (real(1) - g * g)
        dA[t, r, 3 * H + j] = dh * tanh_c * o * (real(1) - o)
        dc0[r, j] = dc_t * f

    @jit
    def dh0_item(e, j0, n, w_s, dA, dh0):
        """dh0[r, j] = dA_0[r, :] . Wh[j, :] for item e."""
        r, u = e // n, e % n
        dh0[r, j0 + u] = recurrent_dot(dA, 0, r, u, w_s)

    return types.SimpleNamespace(sigmoid=sigmoid, block_units=block_units, forward_load=forward_load,
                                 forward_item=forward_item, backward_load=backward_load,
                                 recurrent_dot=recurrent_dot, backward_item=backward_item, dh0_item=dh0_item)


@functools.cache
def step_functions(dtype) -> types.SimpleNamespace:
    """The kernels' per-item work as plain Python on NumPy scalars of ``dtype`` (for emulating a grid)."""
    return _step_functions(_float_dtype(dtype).type, lambda fn: fn)


# ------------------------------------------------------------------- kernels

def kernels(dtype) -> dict:
    """Both persistent kernels for float32 or float64, by name; each compiles on its first launch."""
    return _build(_float_dtype(dtype))


@functools.cache
def _build(dtype: np.dtype) -> dict:
    real = numba.from_dtype(dtype)
    fn = _step_functions(real, cuda.jit(device=True))
    block_units, forward_load, forward_item = fn.block_units, fn.forward_load, fn.forward_item
    backward_load, backward_item, dh0_item = fn.backward_load, fn.backward_item, fn.dh0_item

    @cuda.jit
    def lstm_forward_persistent(xproj, h0, c0, Wh, b, hs, cs, gates, units_per_block):
        """All T forward steps: xproj, gates (T,B,4H); h0, c0 (B,H); Wh (H,4H); b (4H,); hs, cs (T,B,H).

        Dynamic shared memory: H*4n values (the block's Wh columns).
        """
        T, B, H = hs.shape
        j0, n = block_units(cuda.blockIdx.x, units_per_block, H)
        tid, threads = cuda.threadIdx.x, cuda.blockDim.x
        w_s = cuda.shared.array(0, real)
        for e in range(tid, H * 4 * n, threads):
            forward_load(e, j0, n, Wh, w_s)
        cuda.syncthreads()
        grid = cuda.cg.this_grid()
        for t in range(T):
            for e in range(tid, n * B, threads):
                forward_item(t, e, j0, n, w_s, xproj, h0, c0, b, hs, cs, gates)
            if t + 1 < T:                      # the same for every thread: all blocks meet every barrier
                grid.sync()

    @cuda.jit
    def lstm_backward_persistent(gates, cs, c0, Wh, dhs, dhT, dcT, dA, dh0, dc0, units_per_block):
        """All T backward steps: gates, dA (T,B,4H); cs, dhs (T,B,H); c0, dhT, dcT, dh0, dc0 (B,H); Wh (H,4H).

        Dynamic shared memory: n*(4H+1) values (the block's Wh rows, padded).
        """
        T, B, H = dhs.shape
        j0, n = block_units(cuda.blockIdx.x, units_per_block, H)
        tid, threads = cuda.threadIdx.x, cuda.blockDim.x
        w_s = cuda.shared.array(0, real)
        for e in range(tid, n * 4 * H, threads):
            backward_load(e, j0, Wh, w_s)
        cuda.syncthreads()
        grid = cuda.cg.this_grid()
        for s in range(T):
            for e in range(tid, n * B, threads):
                backward_item(T - 1 - s, e, j0, n, w_s, gates, cs, c0, dhs, dhT, dcT, dA, dc0)
            grid.sync()                        # dA_t of every unit is written before anyone reads it
        for e in range(tid, n * B, threads):
            dh0_item(e, j0, n, w_s, dA, dh0)

    return {"lstm_forward_persistent": lstm_forward_persistent,
            "lstm_backward_persistent": lstm_backward_persistent}


def signatures(dtype) -> dict[str, tuple]:
    """The argument types both kernels are launched with, by name (for ahead-of-time compile checks)."""
    real = numba.from_dtype(_float_dtype(dtype))
    v, m, t3, i64 = real[::1], real[:, ::1], real[:, :, ::1], numba.int64
    return {"lstm_forward_persistent": (t3, m, m, m, v, t3, t3, t3, i64),
            "lstm_backward_persistent": (t3, t3, m, m, t3, m, m, t3, m, m, i64)}


def allow_dynamic_shared_memory(compiled, nbytes: int) -> None:
    """Raise a compiled kernel's dynamic shared memory limit to ``nbytes`` (device only).

    ``compiled`` is what ``kernel.compile(signature)`` returns. numba-cuda has
    no public call for this attribute; this is the one its
    ``set_shared_memory_carveout`` makes, for MAX_DYNAMIC_SHARED_SIZE_BYTES.
    """
    from numba.cuda.cudadrv.driver import binding, driver
    cufunc = compiled._codelibrary.get_cufunc()
    attribute = binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    driver.cuKernelSetAttribute(attribute, int(nbytes), cufunc.handle, cufunc.device.id)


# ------------------------------------------------------------------ launcher

class PersistentLauncher:
    """Validates arrays and launches the persistent kernels of one dtype.

    Arrays: NumPy arrays or simulator device arrays under the CUDA simulator;
    numba device arrays, or anything with ``__cuda_array_interface__`` (CuPy),
    on a device. Every launch checks that the geometry fits
    (:meth:`residency_problem`) and raises RuntimeError with the reason if
    not; a backend asks first and falls back to the per-step kernels.
    """

    def __init__(self, dtype):
        self.dtype = _float_dtype(dtype)
        self.simulated = bool(numba.config.ENABLE_CUDASIM)
        self._k = kernels(self.dtype)
        self._signatures = signatures(self.dtype)
        self._problems: dict[PersistentGeometry, str | None] = {}
        self._shared_allowed: dict[str, int] = {}

    def residency_problem(self, geometry: PersistentGeometry) -> str | None:
        """None if ``geometry`` runs with every block resident on the current device, else why not.

        On a device this compiles both kernels, raises their shared memory
        limit where needed and asks the driver; the simulator holds one block.
        """
        if geometry.itemsize != self.dtype.itemsize:
            raise ValueError(f"geometry is for {geometry.itemsize}-byte values, the launcher for {self.dtype}")
        if geometry not in self._problems:
            if self.simulated:
                limit, max_blocks = math.inf, lambda direction, threads, nbytes: 1
            else:
                limit, max_blocks = cuda.get_current_device().MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, self._max_blocks
            problem = residency_problem(geometry, limit, max_blocks)
            if problem is not None and self.simulated:
                problem += " (the CUDA simulator runs cooperative grids of one block only)"
            self._problems[geometry] = problem
        return self._problems[geometry]

    def forward(self, geometry: PersistentGeometry, xproj, h0, c0, Wh, b, hs, cs, gates, stream=0) -> None:
        """All T forward steps of one layer in one launch; see :func:`lstm_forward_persistent`."""
        T, B, H = self._check("hs", hs, (None, None, None))
        self._check_geometry(geometry, B, H)
        for name, a, shape in (("xproj", xproj, (T, B, 4 * H)), ("h0", h0, (B, H)), ("c0", c0, (B, H)),
                               ("Wh", Wh, (H, 4 * H)), ("b", b, (4 * H,)), ("cs", cs, (T, B, H)),
                               ("gates", gates, (T, B, 4 * H))):
            self._check(name, a, shape)
        self._launch("forward", geometry, stream, xproj, h0, c0, Wh, b, hs, cs, gates)

    def backward(self, geometry: PersistentGeometry, gates, cs, c0, Wh, dhs, dhT, dcT, dA, dh0, dc0,
                 stream=0) -> None:
        """All T backward steps of one layer in one launch; see :func:`lstm_backward_persistent`."""
        T, B, H = self._check("dhs", dhs, (None, None, None))
        self._check_geometry(geometry, B, H)
        for name, a, shape in (("gates", gates, (T, B, 4 * H)), ("cs", cs, (T, B, H)), ("c0", c0, (B, H)),
                               ("Wh", Wh, (H, 4 * H)), ("dhT", dhT, (B, H)), ("dcT", dcT, (B, H)),
                               ("dA", dA, (T, B, 4 * H)), ("dh0", dh0, (B, H)), ("dc0", dc0, (B, H))):
            self._check(name, a, shape)
        self._launch("backward", geometry, stream, gates, cs, c0, Wh, dhs, dhT, dcT, dA, dh0, dc0)

    # ------------------------------------------------------------ plumbing

    def _check(self, name: str, a, shape: tuple) -> tuple:
        """a's shape, once it has this launcher's dtype, that shape (None = any), no zero extent, C order."""
        found = tuple(getattr(a, "shape", ()))
        if not hasattr(a, "dtype") or np.dtype(a.dtype) != self.dtype:
            raise ValueError(f"{name} must be an array of {self.dtype}, got {getattr(a, 'dtype', type(a).__name__)}")
        if len(found) != len(shape) or any(s is not None and s != f for s, f in zip(shape, found)):
            wanted = ", ".join("any" if s is None else str(s) for s in shape)
            raise ValueError(f"{name} has shape {found}, expected ({wanted})")
        if 0 in found:
            raise ValueError(f"{name} must not be empty, got shape {found}")
        expected, step = [], self.dtype.itemsize
        for extent in reversed(found):
            expected.insert(0, step)
            step *= extent
        if any(s != e for s, e, extent in zip(a.strides, expected, found) if extent > 1):
            raise ValueError(f"{name} must be C-contiguous")
        return found

    def _check_geometry(self, geometry: PersistentGeometry, B: int, H: int) -> None:
        if (geometry.H, geometry.B, geometry.itemsize) != (H, B, self.dtype.itemsize):
            raise ValueError(f"geometry is for H={geometry.H}, B={geometry.B}, {geometry.itemsize}-byte values; "
                             f"the arrays have H={H}, B={B}, {self.dtype}")

    def _launch(self, direction: str, geometry: PersistentGeometry, stream, *arrays) -> None:
        problem = self.residency_problem(geometry)
        if problem is not None:
            raise RuntimeError(f"the persistent launch does not fit: {problem}")
        args = arrays if self.simulated else tuple(_device_view(a) for a in arrays)
        with warnings.catch_warnings():      # grids are as large as H allows: silence numba's under-utilisation hint
            warnings.filterwarnings("ignore", message="Grid size .* under-utilization")
            kernel = self._k[KERNEL_NAMES[direction]][geometry.grid, geometry.threads, stream,
                                                      geometry.shared_bytes(direction)]
        kernel(*args, geometry.units_per_block)

    def launch_resources(self, geometry: PersistentGeometry) -> dict:
        """Per kernel name: (compiled kernel, threads per block, dynamic shared bytes, the driver's largest
        cooperative grid) at ``geometry``, on the current device (what the GPU check reports)."""
        return {name: (self._k[name].compile(self._signatures[name]), geometry.threads,
                       geometry.shared_bytes(direction), self._max_blocks(direction, geometry.threads,
                                                                          geometry.shared_bytes(direction)))
                for direction, name in KERNEL_NAMES.items()}

    def _max_blocks(self, direction: str, threads: int, nbytes: int) -> int:
        """The driver's largest cooperative grid of the ``direction`` kernel, its shared memory limit raised first."""
        name = KERNEL_NAMES[direction]
        compiled = self._k[name].compile(self._signatures[name])
        if nbytes > max(DEFAULT_SHARED_BYTES, self._shared_allowed.get(name, 0)):
            allow_dynamic_shared_memory(compiled, nbytes)      # raised only, never lowered (the call may synchronise)
            self._shared_allowed[name] = nbytes
        return compiled.max_cooperative_grid_blocks(threads, nbytes)


def _device_view(a):
    """A numba device array as is; anything else with ``__cuda_array_interface__`` viewed without a copy."""
    if cuda.is_cuda_array(a) and not isinstance(a, cuda.cudadrv.devicearray.DeviceNDArray):
        return cuda.as_cuda_array(a, sync=False)
    return a
