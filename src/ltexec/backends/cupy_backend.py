"""The CuPy backend: hand-written CUDA C kernels (``kernels/*.cu``) around cuBLAS products.

A training window is a few large matrix products plus a recurrence of small
ones, so the layer is arranged like the fast CPU backend, on the GPU:

* The big products are one cuBLAS call per window and layer: the input
  projection ``X Wx`` for all T steps before the recurrence; ``dWx = X^T dA``,
  ``dWh = H_prev^T dA`` and ``dxs = dA Wx^T`` after it, with ``db`` one
  column reduction of ``dA``. Per step remain only ``h_{t-1} Wh`` (forward) or
  ``da_t Wh^T`` (backward) and one fused cell kernel (``lstm_cell.cu``) that
  does all the gate arithmetic of the step in a single pass.
* The loss is one kernel (``softmax_xent.cu``): softmax, masked
  cross-entropy, its gradient and the argmax count, per row.
* The per-step loop (50 steps x 2 launches per layer and direction at the
  paper's size) is launch-bound, so it is recorded once as a CUDA graph
  (stream capture) and replayed with one launch (:class:`StepGraphs`). A graph
  replays fixed addresses, so it is keyed by the address and shape of every
  array it touches and reused only when exactly those arrays come back; the
  buffer pool (:class:`~.common.BufferPool`) makes that the normal case by
  handing the same buffers to every window once the previous window's
  results are dropped.
  When capture is unavailable or fails, the loop runs as plain launches and
  ``launch_mode`` / ``graph_fallback_reason`` say so.

Every operation checks its arrays once on entry (type, dtype, shape,
C-contiguity, device; the base class's checks), so a bad call raises
ValueError/TypeError instead of reaching a kernel that does not check; the
launches of the step loop then run unchecked. Launch geometry, the graph
policy and the availability probe are plain functions or classes that take
shapes and injected callables, so they are tested on machines without a
GPU; the kernels themselves are tested there through a C++ emulation of the
CUDA subset they use.

Everything that touches CuPy goes through a device layer (:class:`CudaDevice`):
CuPy arrays, cuBLAS through ``cupy.cublas.gemm``, the kernels compiled by
NVRTC through ``cupy.RawModule`` (once per process and device; CuPy also
caches the binaries on disk), stream capture. This module imports without
CuPy; ``unavailable_reason()`` says what is missing.
"""

from __future__ import annotations

import functools
import importlib
from collections import OrderedDict

import numpy as np

from ltexec.backends.base import Backend, option_from_environment
from ltexec.backends.common import BufferPool, LstmCache

KERNELS = {
    "lstm_cell.cu": ("lstm_cell_forward", "lstm_cell_backward"),
    "lstm_persistent.cu": ("lstm_persistent_forward", "lstm_persistent_backward"),
    "softmax_xent.cu": ("softmax_xent",),
}
"""Every kernel source in the ``ltexec.kernels`` package and the template kernels it defines."""

REAL_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
"""The C type each supported dtype instantiates the kernel templates with."""

NVRTC_OPTIONS = ("-std=c++17",)
"""Compiler options for every kernel source (CuPy adds the target architecture)."""

CELL_BLOCK = 256
"""Threads per block of the cell kernels (one thread per (b, j) of the state)."""

SOFTMAX_MAX_BLOCK = 256
"""Largest block of the softmax kernel: the size of its shared arrays (``SOFTMAX_MAX_BLOCK`` in the .cu)."""

MAX_LAUNCH_INDEX = 2**31 - 1
"""Kernels index with 32-bit ints, and a grid has at most this many blocks."""

GRAPH_MIN_STEPS = 4
"""Shorter windows (decoding runs one step at a time) are not worth a graph."""

GRAPH_CAPACITY = 32
"""Graphs (and keys seen once) kept per backend, least recently used dropped first."""

GRAPHS_ENV = "LTEXEC_CUDA_GRAPHS"
"""Environment variable: 0/false/no/off turns graph capture off for backends built without ``graphs=``."""

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
    ``cupy.RawModule``); CuPy keeps the binaries in its on-disk cache.
    """
    functions = {}
    with cupy.cuda.Device(device_id):
        for source in KERNELS:
            expressions = name_expressions(source)
            module = cupy.RawModule(code=kernel_source(source), options=NVRTC_OPTIONS,
                                    name_expressions=expressions)
            functions.update({expr: module.get_function(expr) for expr in expressions})
    return functions


def launch_geometry(threads: int, block: int) -> tuple[int, int]:
    """``(grid, block)`` of a 1-D launch that covers ``threads`` threads with blocks of ``block``."""
    if threads < 1:
        raise ValueError(f"a launch needs at least one thread, got {threads}")
    if not 1 <= block <= 1024:
        raise ValueError(f"block size must be in 1..1024, got {block}")
    grid = -(-threads // block)
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


# --------------------------------------------------------------- validation

def check_on_device(name: str, array, device_id: int) -> None:
    """Raise ValueError unless a CuPy array lives on device ``device_id``."""
    if array.device.id != device_id:
        raise ValueError(f"{name} is on CUDA device {array.device.id}, the backend runs on device {device_id}")


# ------------------------------------------------------------ CUDA graphs

def graphs_requested(setting) -> bool:
    """Whether graph capture is wanted: ``graphs=`` if given, else the environment's value (default on)."""
    if isinstance(setting, bool):
        return setting
    text = "" if setting is None else str(setting).strip().lower()
    if text in ("", "1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{GRAPHS_ENV} must be one of 1/true/yes/on or 0/false/no/off, got {setting!r}")


def graph_unavailable_reason(requested: bool, is_hip: bool, has_stream_capture: bool) -> str | None:
    """Why the step loop runs as plain launches from the start, or None when graphs may be captured."""
    if not requested:
        return f"turned off (graphs=False or {GRAPHS_ENV}=0)"
    if is_hip:
        return "CuPy on ROCm has no stream capture"
    if not has_stream_capture:
        return "this CuPy has no stream capture (CuPy >= 10 needed)"
    return None


def graph_key(kind: str, arrays, address) -> tuple:
    """What identifies a captured step loop: its kind and every array it touches (address, shape, dtype, strides)."""
    return (kind,) + tuple((address(a), tuple(a.shape), a.dtype.str, tuple(a.strides)) for a in arrays)


class StepGraphs:
    """Runs a window's step loop as a replayed CUDA graph where that pays, else as plain launches.

    ``run(key, steps, record)``: ``record()`` issues the loop's launches on
    the current stream. The first time a key is seen the loop runs plainly
    (this also loads lazily loaded kernels and initialises cuBLAS outside any
    capture); the second time it is captured with ``capture(record)`` and
    launched with ``launch(graph)``; after that the graph is replayed without
    calling ``record``. Windows shorter than ``min_steps`` always run plainly.
    If a capture fails, graphs are turned off for good, ``reason`` says why,
    and the loop runs plainly; ``mode`` is "graph" or "plain".
    """

    def __init__(self, capture, launch, reason: str | None = None,
                 min_steps: int = GRAPH_MIN_STEPS, capacity: int = GRAPH_CAPACITY):
        self._capture, self._launch = capture, launch
        self.reason = reason
        self.min_steps, self.capacity = min_steps, capacity
        self.stats = {"plain": 0, "captured": 0, "replayed": 0}
        self._seen: OrderedDict = OrderedDict()     # keys run once, plainly
        self._graphs: OrderedDict = OrderedDict()   # key -> captured graph

    @property
    def mode(self) -> str:
        return "plain" if self.reason is not None else "graph"

    def run(self, key: tuple, steps: int, record) -> None:
        if self.reason is not None or steps < self.min_steps:
            self._run_plain(record)
            return
        graph = self._graphs.get(key)
        if graph is not None:
            self._graphs.move_to_end(key)
            self.stats["replayed"] += 1
        elif key not in self._seen:
            self._remember(self._seen, key, None)
            self._run_plain(record)
            return
        else:
            try:
                graph = self._capture(record)
            except Exception as exc:   # any capture failure: fall back to plain launches for good
                self.reason = f"stream capture failed ({type(exc).__name__}: {exc})"
                self._graphs.clear()
                self._run_plain(record)
                return
            del self._seen[key]
            self._remember(self._graphs, key, graph)
            self.stats["captured"] += 1
        self._launch(graph)

    def _run_plain(self, record) -> None:
        record()
        self.stats["plain"] += 1

    def _remember(self, table: OrderedDict, key: tuple, value) -> None:
        table[key] = value
        if len(table) > self.capacity:
            table.popitem(last=False)


# ------------------------------------------------------------ device layer

class CudaDevice:
    """CuPy's side of the backend: arrays, cuBLAS products, the compiled kernels, stream capture.

    The backend uses only this interface (``xp``, ``name``, ``empty``,
    ``address``, ``check_device``, ``gemm``, ``launch``, ``capture``,
    ``launch_graph``, ``stream_capture_support``, ``synchronize``); the test
    suite provides the same interface on the CPU.
    """

    def __init__(self):
        import cupy
        self.xp = cupy
        self._cublas = importlib.import_module("cupy.cublas")   # not imported by ``import cupy``
        self.id = cupy.cuda.runtime.getDevice()
        self._kernels = compiled_kernels(cupy, self.id)
        self._capture_stream = None

    def name(self) -> str:
        props = self.xp.cuda.runtime.getDeviceProperties(self.id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return f"{name} (sm_{props['major']}{props['minor']}, CUDA device {self.id})"

    def empty(self, shape: tuple, dtype):
        return self.xp.empty(shape, dtype)

    def address(self, array) -> int:
        return array.data.ptr

    def check_device(self, name: str, array) -> None:
        check_on_device(name, array, self.id)

    def gemm(self, a, b, out, transpose_a: bool = False, transpose_b: bool = False) -> None:
        """``out = op(a) @ op(b)`` in one cuBLAS call (contiguous operands: no copies, no allocation)."""
        self._cublas.gemm("T" if transpose_a else "N", "T" if transpose_b else "N", a, b, out=out)

    def launch(self, kernel: str, grid: int, block: int, args: tuple) -> None:
        self._kernels[kernel]((grid,), (block,), args)

    def stream_capture_support(self) -> tuple[bool, bool]:
        """``(is_hip, has_stream_capture)`` for :func:`graph_unavailable_reason`."""
        return bool(self.xp.cuda.runtime.is_hip), hasattr(self.xp.cuda.Stream, "begin_capture")

    def capture(self, record):
        """Record ``record()``'s launches into a graph on a side stream; nothing runs yet."""
        if self._capture_stream is None:
            self._capture_stream = self.xp.cuda.Stream(non_blocking=True)
        stream = self._capture_stream
        with stream:
            stream.begin_capture()
            try:
                record()
            except BaseException:
                try:
                    stream.end_capture()   # leave capture mode; the partial graph is dropped
                except Exception:          # an invalidated capture ends with an error of its own
                    pass
                raise
            return stream.end_capture()

    def launch_graph(self, graph) -> None:
        graph.launch()   # on the current stream, ordered with everything else the model queues there

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
    """CuPy arrays, cuBLAS products, the fused kernels of ``kernels/*.cu``, CUDA graphs for the step loop.

    ``threads``: checked, nothing more; the backend queues its work from the
    calling host thread only.
    ``graphs``: capture the per-step loop as CUDA graphs (default: on unless
    the environment variable ``LTEXEC_CUDA_GRAPHS`` is 0/false/no/off).
    ``device``: the device layer; by default :class:`CudaDevice` on the
    current CUDA device (the test suite passes a CPU emulation).
    ``xp`` is ``cupy`` (the device layer's array module). ``launch_mode``,
    ``graph_fallback_reason`` and ``step_graphs.stats`` (plain runs, captures,
    replays) show how the step loops ran.
    """

    name = "cupy"
    xp = None   # cupy, bound per instance from the device layer

    def __init__(self, dtype=np.float32, *, threads: int | None = None, graphs=None, device=None):
        super().__init__(dtype, threads=threads)
        requested = graphs_requested(option_from_environment(graphs, GRAPHS_ENV))
        self._device = CudaDevice() if device is None else device
        self.xp = self._device.xp
        self._pool = BufferPool(self._device.empty)
        reason = graph_unavailable_reason(requested, *self._device.stream_capture_support())
        self.step_graphs = StepGraphs(self._device.capture, self._device.launch_graph, reason)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return _probe_once()

    @property
    def launch_mode(self) -> str:
        """"graph" while the step loop is captured and replayed, "plain" when it runs as plain launches."""
        return self.step_graphs.mode

    @property
    def graph_fallback_reason(self) -> str | None:
        """Why the step loop runs as plain launches (None in graph mode)."""
        return self.step_graphs.reason

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
        rec = take((B, 4 * H), dt)          # h_{t-1} Wh of the current step
        self._device.gemm(xs.reshape(T * B, D), Wx, gates.reshape(T * B, 4 * H))
        hs[0] = h0
        cs[0] = c0

        def steps():
            for t in range(T):
                self._device.gemm(hs[t], Wh, rec)
                self._cell_forward(gates[t], rec, b, cs[t], cs[t + 1], hs[t + 1])

        self.step_graphs.run(self._key("forward", gates, hs, cs, rec, Wh, b), T, steps)
        cache = LstmCache(xs, Wx, Wh, gates, hs, cs) if training else None
        return hs[1:], hs[T].copy(), cs[T].copy(), cache

    def lstm_backward(self, dhs, dhT, dcT, cache):
        T, B, D, H = LstmCache.check(cache, type(self).__name__)
        self._check_lstm_backward(dhs, dhT, dcT, T, B, H)
        xs, Wx, Wh, gates, hs, cs = cache.xs, cache.Wx, cache.Wh, cache.gates, cache.hs, cache.cs
        take, dt, xp = self._pool.take, self.dtype, self.xp
        dh_next = take((B, H), dt)          # h_t's gradient from step t+1, then dh_{t-1} = da_t Wh^T
        dc = take((B, H), dt)               # c_t's gradient from step t+1, updated in place
        dh_next[...] = dhT
        dc[...] = dcT

        def steps():
            for t in reversed(range(T)):
                self._cell_backward(gates[t], cs[t], cs[t + 1], dhs[t], dh_next, dc)
                self._device.gemm(gates[t], Wh, dh_next, transpose_b=True)

        cache.used = True
        self.step_graphs.run(self._key("backward", gates, cs, dhs, dh_next, dc, Wh), T, steps)
        dA = gates.reshape(T * B, 4 * H)                     # every step's da
        dWx = xp.empty((D, 4 * H), dt)
        dWh = xp.empty((H, 4 * H), dt)
        dxs = take((T, B, D), dt)
        self._device.gemm(xs.reshape(T * B, D), dA, dWx, transpose_a=True)
        self._device.gemm(hs[:T].reshape(T * B, H), dA, dWh, transpose_a=True)
        self._device.gemm(dA, Wx, dxs.reshape(T * B, D), transpose_b=True)
        db = dA.sum(axis=0)
        return dxs, dWx, dWh, db, dh_next, dc

    # ------------------------------------------------------------- output

    def linear_backward(self, dlogits, hs, W):
        """As the base class, with dhs from the buffer pool: it is the top layer's graph input."""
        T, B, H, V = self._check_linear(hs, W, dlogits=dlogits)
        dlogits2 = dlogits.reshape(T * B, V)
        dhs = self._pool.take((T, B, H), self.dtype)
        dW = self.xp.empty((H, V), self.dtype)
        self._device.gemm(dlogits2, W, dhs.reshape(T * B, H), transpose_b=True)
        self._device.gemm(hs.reshape(T * B, H), dlogits2, dW, transpose_a=True)
        return dhs, dW, dlogits2.sum(axis=0)

    def softmax_xent(self, logits, y, mask):
        T, B, V = self._check_softmax_xent(logits, y, mask)
        N = T * B
        check_index_range("logits", N * V)
        xp = self.xp
        dlogits = xp.empty((T, B, V), self.dtype)
        row_loss = xp.empty(N, self.dtype)
        row_correct = xp.empty(N, np.int32)
        self._device.launch(name_expression("softmax_xent", self.dtype), N, softmax_block(V),
                            (logits, y, mask, dlogits, row_loss, row_correct, np.int32(N), np.int32(V)))
        return float(row_loss.sum(dtype=np.float64)), dlogits, int(row_correct.sum())

    # ------------------------------------------------------- kernel launches
    # Once per step: the arrays were checked when the window's operation began.

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

    def _key(self, kind: str, *arrays) -> tuple:
        return graph_key(kind, arrays, self._device.address)
