"""The CuPy backend: hand-written CUDA C kernels (``kernels/*.cu``) around cuBLAS products.

A training window is a few large matrix products plus a recurrence of small
ones, so the layer is arranged like the fast CPU backend, on the GPU:

* The big products are one cuBLAS call per window and layer: the input
  projection ``X Wx`` for all T steps before the recurrence; ``dWx = X^T dA``,
  ``dWh = H_prev^T dA`` and ``dxs = dA Wx^T`` after it, with ``db`` one
  column reduction of ``dA``.
* The recurrence between them runs in one of two ways (``launch_mode``):

  - **persistent** (``lstm_persistent.cu``): ONE cooperative launch per layer,
    window and direction. Every block keeps its slice of W_h in shared
    memory for all T steps and a grid barrier separates the steps, so all
    blocks must be resident at once. :func:`plan_persistent` picks the
    launch (one block per SM at most) and checks it against the device's
    shared memory and the occupancy API; every launch is checked again
    first (:func:`check_cooperative_grid`: a grid that no longer fits runs
    per step in auto mode, is an error with ``persistent=True``, and is
    never handed to CuPy, which would shrink it); the barrier's two words
    are allocated and zeroed once per backend.
  - **per-step launches** (``lstm_cell.cu``): per step one cuBLAS product
    (``h_{t-1} Wh`` forward, ``da_t Wh^T`` backward) and one fused cell
    kernel; where the persistent kernels do not fit, or are turned off.

* The loss is one kernel (``softmax_xent.cu``): softmax, masked
  cross-entropy, its gradient and the argmax count, per row.

CUDA graphs: none are captured (docs/backends.md says why). The option that
once asked for them, ``graphs=`` / ``LTEXEC_CUDA_GRAPHS``, is gone; the
variable, still set, is an error naming it (:data:`GRAPHS_ENV`).

Every operation checks its arrays once on entry (type, dtype, shape,
C-contiguity, device; the base class's checks), so a bad call raises
ValueError/TypeError instead of reaching a kernel that does not check; the
launches then run unchecked. Launch geometry and the availability probe are
plain functions that take shapes, device limits and injected callables, so
they are tested on machines without a GPU; the kernels and the backend's
window logic are tested there through a C++ emulation of the CUDA subset
they use.

Everything that touches CuPy goes through a device layer (:class:`CudaDevice`):
CuPy arrays, cuBLAS through ``cupy.cublas.gemm``, the kernels compiled by
NVRTC through ``cupy.RawModule`` (once per process and device; CuPy also
caches the binaries on disk), cooperative launches, the device's limits and
the occupancy API. This module imports without CuPy; ``unavailable_reason()``
says what is missing.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ltexec.backends.base import Backend, option_from_environment, switch
from ltexec.backends.common import BufferPool, LstmCache, ceil_div
from ltexec.backends.persistent_plan import (DIRECTIONS, LaunchModes, PersistentGeometry, PersistentUnfit,
                                             check_cooperative_grid, persistent_geometry, recurrence_plan,
                                             residency_problem, turned_off_reason)

KERNELS = {
    "lstm_cell.cu": ("lstm_cell_forward", "lstm_cell_backward"),
    "lstm_persistent.cu": ("lstm_persistent_forward", "lstm_persistent_backward"),
    "softmax_xent.cu": ("softmax_xent",),
}
"""Every kernel source in the ``ltexec.kernels`` package and the template kernels it defines."""

COOPERATIVE_SOURCES = frozenset({"lstm_persistent.cu"})
"""Sources compiled with ``enable_cooperative_groups=True``: CuPy launches their kernels cooperatively."""

PERSISTENT_KERNELS = dict(zip(DIRECTIONS, KERNELS["lstm_persistent.cu"]))
"""The kernels a persistent launch uses: both must let the grid be resident at once."""

REAL_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
"""The C type each supported dtype instantiates the kernel templates with."""

NVRTC_OPTIONS = ("-std=c++17",)
"""Compiler options for every kernel source (CuPy adds the target architecture)."""

CELL_BLOCK = 256
"""Threads per block of the cell kernels (one thread per (b, j) of the state)."""

SOFTMAX_MAX_BLOCK = 256
"""Largest block of the softmax kernel: the size of its shared arrays (``SOFTMAX_MAX_BLOCK`` in the .cu)."""

MAX_BLOCK = 1024
"""Most threads a block may have."""

MAX_LAUNCH_INDEX = 2**31 - 1
"""Kernels index with 32-bit ints, and a grid has at most this many blocks."""

PERSISTENT_ENV = "LTEXEC_CUDA_PERSISTENT"
"""Environment variable for backends built without ``persistent=``: auto, 1/true/yes/on or 0/false/no/off."""

GRAPHS_ENV = "LTEXEC_CUDA_GRAPHS"
"""A removed environment variable (it asked for CUDA graphs, which are never captured): set, it is an error."""

TURNED_OFF = turned_off_reason(PERSISTENT_ENV)
"""Why the recurrence runs per step when the persistent kernels were not wanted."""

INSTALL_HINT = "pip install 'ltexec[cuda12]' or 'ltexec[cuda13]', matching the CUDA driver's major version"


# ------------------------------------------------------------------ kernels

def name_expression(kernel: str, dtype) -> str:
    """The C++ name of a kernel's instantiation, as NVRTC/CuPy look it up: ``lstm_cell_forward<float>``."""
    return f"{kernel}<{REAL_TYPES[np.dtype(dtype)]}>"


def name_expressions(source: str) -> list[str]:
    """Every instantiation the backend uses from one kernel source, for both dtypes."""
    return [name_expression(kernel, dtype) for kernel in KERNELS[source] for dtype in REAL_TYPES]


def kernel_source(name: str) -> str:
    """The text of a kernel source shipped in the ``ltexec.kernels`` package."""
    from ltexec.kernels import source
    return source(name)


@functools.cache
def compiled_kernels(cupy, device_id: int) -> dict:
    """Every kernel instantiation compiled and loaded for one device: name expression -> RawKernel.

    Compiles each source once per process and device (NVRTC through
    ``cupy.RawModule``, one module per source, the persistent one with
    cooperative groups enabled); CuPy keeps the binaries in its on-disk cache.
    """
    functions = {}
    with cupy.cuda.Device(device_id):
        for source in KERNELS:
            expressions = name_expressions(source)
            module = cupy.RawModule(code=kernel_source(source), options=NVRTC_OPTIONS,
                                    name_expressions=expressions,
                                    enable_cooperative_groups=source in COOPERATIVE_SOURCES)
            functions.update({expr: module.get_function(expr) for expr in expressions})
    return functions


def launch_geometry(threads: int, block: int) -> tuple[int, int]:
    """``(grid, block)`` of a 1-D launch that covers ``threads`` threads with blocks of ``block``."""
    if threads < 1:
        raise ValueError(f"a launch needs at least one thread, got {threads}")
    if not 1 <= block <= MAX_BLOCK:
        raise ValueError(f"block size must be in 1..{MAX_BLOCK}, got {block}")
    grid = ceil_div(threads, block)
    if grid > MAX_LAUNCH_INDEX:
        raise ValueError(f"{threads} threads need {grid} blocks of {block}, more than a grid holds")
    return grid, block


def softmax_block(V: int) -> int:
    """Threads per row of the softmax kernel: a power of two >= V (at least a warp), at most SOFTMAX_MAX_BLOCK."""
    if V < 1:
        raise ValueError(f"the vocabulary must have at least one entry, got V={V}")
    block = 32
    while block < V and block < SOFTMAX_MAX_BLOCK:
        block *= 2
    return block


def check_index_range(name: str, count: int) -> None:
    """Kernels index with 32-bit ints: ``count`` elements must stay below 2**31."""
    if count > MAX_LAUNCH_INDEX:
        raise ValueError(f"{name} has {count} elements, more than the kernels' 32-bit indexing allows")


# ------------------------------------------------------- persistent kernels

@dataclass(frozen=True)
class DeviceLimits:
    """What a persistent launch must fit in, from the device's attributes."""

    sms: int
    """Streaming multiprocessors (``MultiProcessorCount``)."""
    shared_per_block: int
    """Dynamic shared memory a block may have after opting in (``MaxSharedMemoryPerBlockOptin``), bytes."""
    cooperative: bool
    """Whether the device can launch cooperative kernels (``CooperativeLaunch``)."""


def plan_persistent(T: int, B: int, H: int, itemsize: int, limits: DeviceLimits,
                    resident_blocks: Callable[[str, int, int], int]) -> PersistentGeometry:
    """How the persistent kernels run a layer window of (T, B, H), or PersistentUnfit saying why they cannot.

    The plan is the shared one (:func:`~ltexec.backends.persistent_plan.persistent_geometry`: one block per
    SM at most, blocks of at most MAX_BLOCK threads; both kernels hold 4H values per unit of W_h in shared
    memory). ``resident_blocks(direction, threads, shared_bytes)`` is how many blocks of that direction's
    kernel the occupancy API lets an SM hold at once; times the SM count it must cover the grid, since a
    block that waits for an SM would hang the barrier.
    """
    if not limits.cooperative:
        raise PersistentUnfit("the device cannot launch cooperative kernels")
    if T * B * 4 * H > MAX_LAUNCH_INDEX:
        raise PersistentUnfit(f"the window's gates hold T*B*4H = {T * B * 4 * H} values, "
                              f"more than the kernels' 32-bit indexing allows")
    geometry = persistent_geometry(H, B, itemsize, limits.sms, max_threads=MAX_BLOCK, backward_row_pitch=4 * H)
    problem = residency_problem(geometry, limits.shared_per_block,
                                lambda direction, threads, nbytes: resident_blocks(direction, threads, nbytes)
                                * limits.sms)
    if problem is not None:
        raise PersistentUnfit(problem)
    return geometry


# --------------------------------------------------------------- validation

def check_on_device(name: str, array, device_id: int) -> None:
    """Raise ValueError unless a CuPy array lives on device ``device_id``."""
    if array.device.id != device_id:
        raise ValueError(f"{name} is on CUDA device {array.device.id}, the backend runs on device {device_id}")


# ------------------------------------------------------------ device layer

class CudaDevice:
    """CuPy's side of the backend: arrays, cuBLAS products, the compiled kernels, the device's limits.

    The backend uses only this interface (``xp``, ``name``, ``empty``,
    ``check_device``, ``gemm``, ``launch``, ``launch_cooperative``,
    ``persistent_limits``, ``resident_blocks``, ``synchronize``); the test
    suite provides the same interface on the CPU. ``cupy``: the CuPy module
    (default: imported here; tests pass a stand-in).
    """

    def __init__(self, cupy=None):
        if cupy is None:
            cupy = importlib.import_module("cupy")
            importlib.import_module("cupy.cublas")   # not imported by ``import cupy``
        self.xp = cupy
        self.id = cupy.cuda.runtime.getDevice()
        self._kernels = compiled_kernels(cupy, self.id)

    def name(self) -> str:
        props = self.xp.cuda.runtime.getDeviceProperties(self.id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return f"{name} (sm_{props['major']}{props['minor']}, CUDA device {self.id})"

    def empty(self, shape: tuple, dtype):
        return self.xp.empty(shape, dtype)

    def check_device(self, name: str, array) -> None:
        check_on_device(name, array, self.id)

    def gemm(self, a, b, out, transpose_a: bool = False, transpose_b: bool = False) -> None:
        """``out = op(a) @ op(b)`` in one cuBLAS call (contiguous operands: no copies, no allocation)."""
        self.xp.cublas.gemm("T" if transpose_a else "N", "T" if transpose_b else "N", a, b, out=out)

    def launch(self, kernel: str, grid: int, block: int, args: tuple) -> None:
        self._kernels[kernel]((grid,), (block,), args)

    def launch_cooperative(self, kernel: str, grid: int, block: int, shared_bytes: int, args: tuple) -> None:
        """Launch with every block resident at once and ``shared_bytes`` of dynamic shared memory per block.

        The kernel's module was compiled with cooperative groups enabled, so
        CuPy launches it with ``cuLaunchCooperativeKernel``. Where the grid
        does not fit, CuPy may shrink a 1-D grid to what fits, with only a
        warning; the backend checks the grid first
        (:func:`check_cooperative_grid`), and any warning CuPy gives here is
        raised as an error, so a grid is never launched smaller than asked.
        """
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            self._kernels[kernel]((grid,), (block,), args, shared_mem=shared_bytes)

    def persistent_limits(self) -> DeviceLimits:
        """The device's SM count, opt-in shared memory per block and cooperative launch support."""
        runtime = self.xp.cuda.runtime

        def attribute(name: str) -> int:
            return runtime.deviceGetAttribute(getattr(runtime, f"cudaDevAttr{name}"), self.id)

        return DeviceLimits(sms=attribute("MultiProcessorCount"),
                            shared_per_block=attribute("MaxSharedMemoryPerBlockOptin"),
                            cooperative=bool(attribute("CooperativeLaunch")))

    def resident_blocks(self, kernel: str, block: int, shared_bytes: int) -> int:
        """Blocks of ``kernel`` an SM holds at once (the occupancy API), once it may use ``shared_bytes``.

        Above the default limit (48 KB) the kernel's dynamic shared memory
        limit is raised first: both the occupancy query and the launch need it.
        """
        function = self._kernels[kernel]
        if shared_bytes > function.max_dynamic_shared_size_bytes:
            function.max_dynamic_shared_size_bytes = shared_bytes
        return self.xp.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(function.kernel.ptr, block,
                                                                              shared_bytes)

    def synchronize(self) -> None:
        self.xp.cuda.Device(self.id).synchronize()


# ---------------------------------------------------------------- backend

def probe(import_module=importlib.import_module) -> str | None:
    """None if the backend can run here, else what is missing: CuPy, a driver, a device, cuBLAS, NVRTC."""
    try:
        cupy = import_module("cupy")
    except ImportError as exc:
        return f"CuPy is not installed ({INSTALL_HINT}): {exc}"
    except Exception as exc:   # a broken CuPy install raises all sorts
        return f"CuPy fails to import ({type(exc).__name__}: {exc})"
    version = getattr(cupy, "__version__", "?")
    try:
        if cupy.cuda.runtime.is_hip:
            return f"CuPy {version} is built for ROCm; the kernels are CUDA C"
        devices = cupy.cuda.runtime.getDeviceCount()
        device_id = cupy.cuda.runtime.getDevice() if devices else None
    except Exception as exc:   # CUDARuntimeError (no driver, driver too old), CUDADriverError, ...
        return f"CuPy {version} is installed but no CUDA driver/device is usable ({type(exc).__name__}: {exc})"
    if not devices:
        return f"CuPy {version} is installed but there is no CUDA device"
    try:
        import_module("cupy.cublas")
    except Exception as exc:   # CuPy wheels load cuBLAS from the CUDA toolkit or the [ctk] extra's packages
        return (f"CuPy {version} finds no cuBLAS ({type(exc).__name__}: {exc}); "
                f"install CuPy with its [ctk] extra or a CUDA toolkit")
    try:
        compiled_kernels(cupy, device_id)
    except Exception as exc:   # CompileException, a missing NVRTC library, ...
        return f"the CUDA kernels do not compile or load with CuPy {version} ({type(exc).__name__}: {exc})"
    return None


@functools.cache
def _probe_once() -> str | None:
    return probe()


class CupyBackend(Backend):
    """CuPy arrays, cuBLAS products, the kernels of ``kernels/*.cu``; the recurrence persistent where it fits.

    ``threads``: checked, nothing more; the backend queues its work from the
    calling host thread only, on one stream.
    ``persistent``: None (auto) runs each layer's recurrence as one
    cooperative launch where the layer's shape fits on the device, else per
    step; True requires that (ValueError naming why a shape does not fit);
    False always runs per step. Without ``persistent=``: the environment
    variable ``LTEXEC_CUDA_PERSISTENT`` (auto, 1/true/yes/on, 0/false/no/off),
    else auto.
    ``device``: the device layer; by default :class:`CudaDevice` on the
    current CUDA device (the test suite passes a CPU emulation).
    ``xp`` is ``cupy`` (the device layer's array module). ``launch_mode`` and
    ``persistent_fallback_reason`` say how the latest layer ran its recurrence.
    """

    name = "cupy"
    xp = None   # cupy, bound per instance from the device layer

    def __init__(self, dtype=np.float32, *, threads: int | None = None, persistent: bool | str | None = None,
                 device=None):
        super().__init__(dtype, threads=threads)
        if os.environ.get(GRAPHS_ENV) is not None:
            raise ValueError(f"{GRAPHS_ENV} is set ({os.environ[GRAPHS_ENV]!r}), but the option it set was removed: "
                             f"CUDA graphs are never captured (docs/backends.md says why); unset it")
        self._persistent = switch(option_from_environment(persistent, PERSISTENT_ENV), PERSISTENT_ENV)
        self._device = CudaDevice() if device is None else device
        self.xp = self._device.xp
        self._pool = BufferPool(self._device.empty)
        self._modes = LaunchModes(self._persistent, TURNED_OFF)
        if self._persistent is not False:
            self._limits = self._device.persistent_limits()
            self._barrier = self._device.empty((2,), np.uint32)   # the grid barrier's arrivals and generation;
            self._barrier[...] = 0                                # every launch leaves the arrivals at 0

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return _probe_once()

    @property
    def launch_mode(self) -> str:
        """How the latest layer ran its recurrence: PERSISTENT or "per-step launches (why)"; see the docs."""
        return self._modes.launch_mode

    @property
    def persistent_fallback_reason(self) -> str | None:
        """Why the latest layer ran per step (None when it ran persistent)."""
        return self._modes.fallback_reason

    def device_name(self) -> str:
        return self._device.name()

    def asarray(self, host_array, dtype=None):
        """A contiguous device array; CuPy's ascontiguousarray takes only device arrays, so upload first."""
        return super().asarray(self.xp.asarray(host_array, order="C"), dtype)

    def synchronize(self) -> None:
        self._device.synchronize()

    # ------------------------------------------------------------ LSTM layer

    def lstm_forward(self, xs, h0, c0, Wx, Wh, b, training: bool):
        T, B, D, H = self._check_lstm_forward(xs, h0, c0, Wx, Wh, b)
        check_index_range("gates", B * 4 * H)   # what one step's kernels index
        take, dt = self._pool.take, self.dtype
        gates = take((T, B, 4 * H), dt)     # x_t Wx, then the activations i, f, g, o
        hs = take((T + 1, B, H), dt)        # hs[t] = h_{t-1}
        cs = take((T + 1, B, H), dt)        # cs[t] = c_{t-1}
        self._device.gemm(xs.reshape(T * B, D), Wx, gates.reshape(T * B, 4 * H))
        hs[0] = h0
        cs[0] = c0
        self._forward_recurrence(gates, hs, cs, Wh, b)
        cache = LstmCache(xs, Wx, Wh, gates, hs, cs) if training else None
        return hs[1:], hs[T].copy(), cs[T].copy(), cache

    def lstm_backward(self, dhs, dhT, dcT, cache):
        T, B, D, H = LstmCache.check(cache, type(self).__name__)
        self._check_lstm_backward(dhs, dhT, dcT, T, B, H)
        xs, Wx, Wh, gates, hs = cache.xs, cache.Wx, cache.Wh, cache.gates, cache.hs
        cache.used = True
        dh0, dc0 = self._backward_recurrence(gates, cache.cs, Wh, dhs, dhT, dcT)
        dA = gates.reshape(T * B, 4 * H)                     # every step's da
        dt = self.dtype
        dWx = self.xp.empty((D, 4 * H), dt)
        dWh = self.xp.empty((H, 4 * H), dt)
        dxs = self._pool.take((T, B, D), dt)
        self._device.gemm(xs.reshape(T * B, D), dA, dWx, transpose_a=True)
        self._device.gemm(hs[:T].reshape(T * B, H), dA, dWh, transpose_a=True)
        self._device.gemm(dA, Wx, dxs.reshape(T * B, D), transpose_b=True)
        db = dA.sum(axis=0)
        return dxs, dWx, dWh, db, dh0, dc0

    # ----------------------------------------------------------- recurrence
    # What lies between the window's cuBLAS products: the arrays were checked on entry.

    def _forward_recurrence(self, gates, hs, cs, Wh, b) -> None:
        """gates: x_t Wx -> activations; hs[1:], cs[1:] from hs[0], cs[0]: one launch, or two per step."""
        T, B, H = cs.shape[0] - 1, cs.shape[1], cs.shape[2]
        geometry = self._persistent_geometry(T, B, H)
        if geometry is not None and self._launch_persistent(
                "forward", geometry, (T, B, H), gates, Wh, b, hs[0], cs[0], hs[1:], cs[1:],
                self._barrier, np.int32(T), np.int32(B), np.int32(H), np.int32(geometry.units_per_block)):
            return
        rec = self._pool.take((B, 4 * H), self.dtype)   # h_{t-1} Wh of the current step
        for t in range(T):
            self._device.gemm(hs[t], Wh, rec)
            self._cell_forward(gates[t], rec, b, cs[t], cs[t + 1], hs[t + 1])

    def _backward_recurrence(self, gates, cs, Wh, dhs, dhT, dcT):
        """gates: activations -> da for every step; returns (dh0, dc0): one launch, or two per step."""
        T, B, H = dhs.shape
        take, dt = self._pool.take, self.dtype
        dh0 = take((B, H), dt)   # per step: h_t's gradient from step t+1, then dh_{t-1} = da_t Wh^T
        dc0 = take((B, H), dt)   # per step: c_t's gradient from step t+1, updated in place
        geometry = self._persistent_geometry(T, B, H)
        if geometry is not None and self._launch_persistent(
                "backward", geometry, (T, B, H), gates, cs[1:], cs[0], Wh, dhs, dhT, dcT, dh0, dc0,
                self._barrier, np.int32(T), np.int32(B), np.int32(H), np.int32(geometry.units_per_block)):
            return dh0, dc0
        dh0[...] = dhT
        dc0[...] = dcT
        for t in reversed(range(T)):
            self._cell_backward(gates[t], cs[t], cs[t + 1], dhs[t], dh0, dc0)
            self._device.gemm(gates[t], Wh, dh0, transpose_b=True)
        return dh0, dc0

    def _persistent_geometry(self, T: int, B: int, H: int) -> PersistentGeometry | None:
        """The persistent launch for a layer window of this shape, or None to run it per step.

        Decided once per shape; sets ``launch_mode``. With ``persistent=True``
        a shape that does not fit raises ValueError.
        """
        def find():
            try:
                return plan_persistent(T, B, H, self.dtype.itemsize, self._limits, self._resident_blocks), None
            except PersistentUnfit as unfit:
                return None, str(unfit)

        return self._modes.geometry((T, B, H), lambda: recurrence_plan(
            self._persistent, f"T={T}, B={B}, H={H}", TURNED_OFF, find))

    def _resident_blocks(self, direction: str, threads: int, shared_bytes: int) -> int:
        """Blocks per SM the persistent kernel of ``direction`` in this dtype can have resident at once."""
        return self._device.resident_blocks(name_expression(PERSISTENT_KERNELS[direction], self.dtype), threads,
                                            shared_bytes)

    # ------------------------------------------------------------- output

    def linear_backward(self, dlogits, hs, W):
        """As the base class, with dhs from the buffer pool (no allocation after the first window)."""
        T, B, H, V = self._check_linear(hs, W, dlogits=dlogits)
        dlogits2 = dlogits.reshape(T * B, V)
        dhs = self._pool.take((T, B, H), self.dtype)
        dW = self.xp.empty((H, V), self.dtype)
        self._device.gemm(dlogits2, W, dhs.reshape(T * B, H), transpose_b=True)
        self._device.gemm(hs.reshape(T * B, H), dlogits2, dW, transpose_a=True)
        return dhs, dW, dlogits2.sum(axis=0)

    def softmax_xent(self, logits, y, mask):
        y, T, B, V = self._check_softmax_xent(logits, y, mask)
        N = T * B
        check_index_range("logits", N * V)
        xp = self.xp
        dlogits = xp.empty((T, B, V), self.dtype)
        row_loss = xp.empty(N, self.dtype)
        row_correct = xp.empty(N, np.int32)
        self._device.launch(name_expression("softmax_xent", self.dtype), N, softmax_block(V),
                            (logits, y, mask, dlogits, row_loss, row_correct, np.int32(N), np.int32(V)))
        return row_loss.sum(dtype=np.float64), dlogits, row_correct.sum(dtype=np.int64)   # left on the device

    # ------------------------------------------------------- kernel launches

    def _launch_persistent(self, direction: str, geometry: PersistentGeometry, shape: tuple, *args) -> bool:
        """One cooperative launch, once the grid is checked to fit (:func:`check_cooperative_grid`); False where it
        does not and the mode is auto (the layer then runs per step, and so does its shape from now on)."""
        name = name_expression(PERSISTENT_KERNELS[direction], self.dtype)
        threads, shared_bytes = geometry.threads, geometry.shared_bytes(direction)
        resident = self._resident_blocks(direction, threads, shared_bytes) * self._limits.sms
        try:
            check_cooperative_grid(name, geometry.grid, threads, shared_bytes, resident)
        except PersistentUnfit as unfit:
            if self._persistent:
                raise ValueError(f"persistent=True, but the persistent kernels cannot run a layer of "
                                 f"T={shape[0]}, B={shape[1]}, H={shape[2]}: {unfit}") from None
            self._modes.refuse(shape, f"persistent launch refused at T={shape[0]}, B={shape[1]}, H={shape[2]}: "
                                      f"{unfit}")
            return False
        self._device.launch_cooperative(name, geometry.grid, threads, shared_bytes, args)
        return True

    def _cell_forward(self, gates, rec, b, c_prev, c, h):
        B, H = c.shape
        grid, block = launch_geometry(B * H, CELL_BLOCK)
        self._device.launch(name_expression("lstm_cell_forward", self.dtype), grid, block,
                            (gates, rec, b, c_prev, c, h, np.int32(B), np.int32(H)))

    def _cell_backward(self, gates, c_prev, c, dh_out, dh_next, dc):
        B, H = dc.shape
        grid, block = launch_geometry(B * H, CELL_BLOCK)
        self._device.launch(name_expression("lstm_cell_backward", self.dtype), grid, block,
                            (gates, c_prev, c, dh_out, dh_next, dc, np.int32(B), np.int32(H)))

    # ------------------------------------------------------------ validation

    def _check_device(self, name: str, a) -> None:
        self._device.check_device(name, a)
