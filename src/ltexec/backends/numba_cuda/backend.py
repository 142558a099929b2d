"""The Numba-CUDA backend: the whole training step in CUDA kernels written in Python.

For users who want to read and change GPU kernels without leaving Python.
Each layer's recurrence is one persistent launch per window and direction
where it fits (below); otherwise this backend fuses each LSTM step into one
kernel: the recurrent product h_{t-1} Wh for a tile of hidden units and all
four gates, the gate activations and the cell update run in one launch per
layer and time step, and backwards the product da_{t+1} Wh^T runs in the
same launch as the step's pointwise backward (:mod:`.kernels`).
Products batched over the window (x_t Wx, weight gradients, dxs, the output
layer) use a tiled shared-memory kernel; softmax, masked cross-entropy, its
gradient and the argmax count are one kernel.

Storage is CuPy: ``xp = cupy``. The model, the optimizer and the base class
use NumPy-like array methods (slicing, ``*=``, ``argmax``, ``zeros_like``)
that numba's device arrays do not have, so the arrays are CuPy arrays and the
kernels get numba views of the same memory through
``__cuda_array_interface__``; they run on CuPy's current stream, so kernels
and CuPy operations stay in order and nothing waits for the host inside a
window. CuPy is therefore a requirement of this backend. The optimizer's
norm, scaling and update are the base class's CuPy expressions.

Products batched over the window: ``gemm="tiled"`` (default) runs them in the
tiled kernel, so every FLOP of the step is Python-written code that the
benchmark compares with the cuBLAS-based CuPy backend; ``gemm="cublas"`` hands
them to CuPy's ``matmul`` on the same arrays, which should be faster for the
paper's large window products but has not been measured against the tiled
kernel. Without ``gemm=`` the choice comes from the environment variable
``LTEXEC_NUMBA_CUDA_GEMM`` (``tiled`` or ``cublas``).

The recurrence: ``persistent=None`` (auto, the default) runs each layer's
whole window in ONE launch of the persistent kernels
(:mod:`.persistent`: every block keeps its slice of Wh in shared
memory for all T steps, a grid barrier between steps, and the backward
kernel forms dh0 itself) wherever their grid fits on the device at once,
and falls back to the per-step kernels (one launch per time step) where it
does not; ``persistent=True`` requires the persistent kernels (ValueError
naming why they do not fit), ``persistent=False`` never uses them. Without
``persistent=`` the choice comes from ``LTEXEC_NUMBA_CUDA_PERSISTENT``
(``auto``, 1/true/yes/on = required, 0/false/no/off = never). The decision is
made once per layer shape (B, H) by :func:`persistent_plan`: one block per
SM at most (:func:`~ltexec.backends.numba_cuda.persistent.launch_geometry`), then the
driver's ``max_cooperative_grid_blocks`` and the shared memory limit
(:func:`~ltexec.backends.persistent_plan.residency_problem`). ``launch_mode`` says how
the latest layer pass ran ("persistent", or "per-step launches (why)"; the
same words as the CuPy backend's) and ``persistent_fallback_reason`` gives
the why alone. The simulator runs cooperative grids of one block only, so
there the backend plans for one SM: one block covers all units.

The CUDA simulator is not a device: :meth:`unavailable_reason` rejects it, so
``auto`` never picks it. Tests run the backend on it explicitly with
``NumbaCudaBackend(dtype, simulator=True)`` (``NUMBA_ENABLE_CUDASIM=1`` set
before ``numba.cuda`` is first imported): the same kernels on NumPy arrays.
"""

from __future__ import annotations

import numpy as np

from ltexec.backends.base import Backend, BackendUnavailable, option_from_environment, switch
from ltexec.backends.common import LstmCache
from ltexec.backends.persistent_plan import LaunchModes, recurrence_plan, turned_off_reason

GEMM_ENV = "LTEXEC_NUMBA_CUDA_GEMM"
PERSISTENT_ENV = "LTEXEC_NUMBA_CUDA_PERSISTENT"
TURNED_OFF = turned_off_reason(PERSISTENT_ENV)
"""Why the recurrence runs per step when the persistent kernels were not wanted."""
INSTALL_HINT = "pip install 'ltexec[cuda12]' or 'ltexec[cuda13]' (numba-cuda and CuPy for your CUDA major version)"


class NumbaCudaBackend(Backend):
    """CuPy arrays, Numba-CUDA kernels: fused LSTM steps, tiled products, fused softmax cross-entropy.

    ``threads``: checked, nothing more; the backend launches its kernels from
    the calling host thread only. ``gemm``: ``"tiled"`` or ``"cublas"`` (see
    the module docstring; default from ``LTEXEC_NUMBA_CUDA_GEMM``, else
    tiled). ``persistent``: None (auto), True (required) or False (never);
    see the module docstring (default from ``LTEXEC_NUMBA_CUDA_PERSISTENT``,
    else auto). ``simulator``: run on numba's CUDA simulator (tests only).
    """

    name = "numba_cuda"

    def __init__(self, dtype=np.float32, *, threads: int | None = None, gemm: str | None = None,
                 persistent: bool | str | None = None, simulator: bool = False):
        super().__init__(dtype, threads=threads)
        gemm = option_from_environment(gemm, GEMM_ENV) or "tiled"
        self.persistent = persistent_requested(option_from_environment(persistent, PERSISTENT_ENV))
        if simulator:
            if not _simulator_active():
                raise RuntimeError("simulator=True needs NUMBA_ENABLE_CUDASIM=1 set before numba.cuda is imported")
            self.xp = np
        else:
            reason = self.unavailable_reason()
            if reason is not None:
                raise BackendUnavailable(f"backend 'numba_cuda' is unavailable: {reason}")
            import cupy
            self.xp = cupy
        from ltexec.backends.numba_cuda.kernels import Launcher
        from ltexec.backends.numba_cuda.persistent import PersistentLauncher
        self.launcher = Launcher(self.dtype, self.xp, gemm, check=False)   # the operations check on entry
        self.persistent_launcher = PersistentLauncher(self.dtype)
        self._modes = LaunchModes(self.persistent, TURNED_OFF)

    def __repr__(self) -> str:
        where = ", simulator=True" if self.launcher.simulated else ""
        return (f"{type(self).__name__}(dtype={self.dtype.name}, gemm={self.launcher.gemm_impl!r}, "
                f"persistent={self.persistent!r}{where})")

    @property
    def launch_mode(self) -> str:
        """How the latest layer pass ran its recurrence: PERSISTENT or "per-step launches (why)"; before the
        first, what the option implies (UNDECIDED in auto mode). See docs/backends.md."""
        return self._modes.launch_mode

    @property
    def persistent_fallback_reason(self) -> str | None:
        """Why the latest layer pass ran per step (None when it ran persistent, or none has run in auto mode)."""
        return self._modes.fallback_reason

    @classmethod
    def unavailable_reason(cls) -> str | None:
        missing = []
        try:
            from numba import cuda
        except ImportError:
            missing.append("numba-cuda")
        else:
            if getattr(cuda, "implementation", None) != "NVIDIA":
                missing.append("numba-cuda (numba's built-in numba.cuda is not supported)")
            elif _simulator_active():
                return "numba.cuda is the CUDA simulator (NUMBA_ENABLE_CUDASIM=1), not a device"
        try:
            import cupy
        except ImportError:
            missing.append("CuPy")
        if missing:
            return f"needs {' and '.join(missing)}: {INSTALL_HINT}"
        if not cuda.is_available():
            return f"no CUDA device: {_driver_error(cuda)}"
        try:
            cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:
            return f"CuPy cannot reach the device: {type(exc).__name__}: {exc}"
        return None

    # ------------------------------------------------------------- arrays

    def device_name(self) -> str:
        if self.launcher.simulated:
            return "CUDA simulator (CPU)"
        import cupy
        device = cupy.cuda.Device()
        name = cupy.cuda.runtime.getDeviceProperties(device.id)["name"]
        return f"{name.decode() if isinstance(name, bytes) else name} (device {device.id})"

    def synchronize(self) -> None:
        if not self.launcher.simulated:
            self.xp.cuda.get_current_stream().synchronize()

    # --------------------------------------------------------- LSTM layer

    def _persistent_geometry(self, B: int, H: int):
        """The persistent launch of a layer with this shape, or None for per-step launches.

        Planned once per shape; records the latest ``launch_mode``. With
        ``persistent=True`` a shape that does not fit raises ValueError.
        """
        return self._modes.geometry((B, H), lambda: persistent_plan(
            self.persistent, B, H, self.dtype, self._multiprocessors(), self.persistent_launcher.residency_problem))

    def _multiprocessors(self) -> int:
        """The most blocks a persistent launch spreads over (one per SM); the simulator runs one at a time."""
        if self.launcher.simulated:
            return 1
        from numba import cuda
        return cuda.get_current_device().MULTIPROCESSOR_COUNT

    def lstm_forward(self, xs, h0, c0, Wx, Wh, b, training: bool):
        T, B, D, H = self._check_lstm_forward(xs, h0, c0, Wx, Wh, b)
        geometry = self._persistent_geometry(B, H)
        k, xp, dt = self.launcher, self.xp, self.dtype
        gates = xp.empty((T, B, 4 * H), dt)                  # x_t Wx, then activations i, f, g, o
        k.gemm(xs.reshape(T * B, D), Wx, gates.reshape(T * B, 4 * H))
        hs = xp.empty((T + 1, B, H), dt)                     # hs[t] = h_{t-1}
        cs = xp.empty((T + 1, B, H), dt)                     # cs[t] = c_{t-1}
        hs[0], cs[0] = h0, c0
        if geometry is None:
            k.lstm_forward(gates, hs, cs, Wh, b)
        else:                                                # gates is xproj on entry
            self.persistent_launcher.forward(geometry, gates, hs[0], cs[0], Wh, b, hs[1:], cs[1:], gates,
                                             stream=k.stream())
        cache = LstmCache(xs, Wx, Wh, gates, hs, cs) if training else None
        return hs[1:], hs[T].copy(), cs[T].copy(), cache

    def lstm_backward(self, dhs, dhT, dcT, cache):
        T, B, D, H = LstmCache.check(cache, type(self).__name__)
        self._check_lstm_backward(dhs, dhT, dcT, T, B, H)
        geometry = self._persistent_geometry(B, H)
        k, xp, dt = self.launcher, self.xp, self.dtype
        xs, Wx, Wh, gates, cs = cache.xs, cache.Wx, cache.Wh, cache.gates, cache.cs
        cache.used = True
        dh0 = xp.empty((B, H), dt)
        if geometry is None:
            dc = dcT.copy()                                  # becomes dc0
            k.lstm_backward(gates, dhs, dhT, dc, cs, Wh)     # gates now hold da for every step
            k.gemm(gates[0], Wh, dh0, trans_b=True)          # da_0 Wh^T
        else:                                                # da over gates, and dh0, dc0, in one launch
            dc = xp.empty((B, H), dt)
            self.persistent_launcher.backward(geometry, gates, cs[1:], cs[0], Wh, dhs, dhT, dcT, gates, dh0, dc,
                                              stream=k.stream())
        dA = gates.reshape(T * B, 4 * H)
        dWx, dWh = xp.empty((D, 4 * H), dt), xp.empty((H, 4 * H), dt)
        k.gemm(xs.reshape(T * B, D), dA, dWx, trans_a=True)              # X^T dA
        k.gemm(cache.hs[:T].reshape(T * B, H), dA, dWh, trans_a=True)    # H_prev^T dA
        db = xp.empty(4 * H, dt)
        k.column_sums(dA, db)
        dxs = xp.empty((T * B, D), dt)
        k.gemm(dA, Wx, dxs, trans_b=True)                                # dA Wx^T
        return dxs.reshape(T, B, D), dWx, dWh, db, dh0, dc

    # ----------------------------------------------------- embedding, output

    def embedding_forward(self, E, x):
        x, T, B, _, D = self._check_embedding_forward(E, x)
        xs = self.xp.empty((T, B, D), self.dtype)
        self.launcher.embedding_forward(E, x.reshape(T * B), xs.reshape(T * B, D))
        return xs

    def embedding_backward(self, dxs, x, V: int):
        x, T, B, D = self._check_embedding_backward(dxs, x, V)
        dE = self.xp.empty((V, D), self.dtype)
        self.launcher.embedding_backward(dxs.reshape(T * B, D), x.reshape(T * B), dE)
        return dE

    def linear_forward(self, hs, W, b):
        T, B, H, V = self._check_linear(hs, W, b=b)
        logits = self.xp.empty((T, B, V), self.dtype)
        self.launcher.gemm(hs.reshape(T * B, H), W, logits.reshape(T * B, V), bias=b)
        return logits

    def linear_backward(self, dlogits, hs, W):
        T, B, H, V = self._check_linear(hs, W, dlogits=dlogits)
        k, xp, dt = self.launcher, self.xp, self.dtype
        dlogits2 = dlogits.reshape(T * B, V)
        dhs = xp.empty((T, B, H), dt)
        k.gemm(dlogits2, W, dhs.reshape(T * B, H), trans_b=True)     # dlogits W^T
        dW = xp.empty((H, V), dt)
        k.gemm(hs.reshape(T * B, H), dlogits2, dW, trans_a=True)     # hs^T dlogits
        db = xp.empty(V, dt)
        k.column_sums(dlogits2, db)
        return dhs, dW, db

    def softmax_xent(self, logits, y, mask):
        """One fused kernel per row, then one reduction into the two totals, which stay on the device."""
        y, T, B, V = self._check_softmax_xent(logits, y, mask)
        k, xp, dt = self.launcher, self.xp, self.dtype
        dlogits = xp.empty((T, B, V), dt)
        row_stats = xp.empty((T * B, 2), dt)                 # per row: masked loss, masked hit
        k.softmax_xent(logits.reshape(T * B, V), y.reshape(T * B), mask.reshape(T * B),
                       dlogits.reshape(T * B, V), row_stats)
        totals = xp.empty(2, dt)
        k.column_sums(row_stats, totals)
        # Backend scalars, left on the device; hit counts are exact below 2**24 in float32.
        return totals[0].astype(np.float64), dlogits, xp.rint(totals[1]).astype(np.int64)


def persistent_requested(setting) -> bool | None:
    """``persistent=`` (or its environment fallback) as None (auto), True (required) or False (never)."""
    return switch(setting, PERSISTENT_ENV)


def persistent_plan(requested: bool | None, B: int, H: int, dtype, multiprocessors: int, residency_problem):
    """How a layer of this shape runs its recurrence: (geometry, None) for one persistent launch per
    window and direction, or (None, why not) for per-step launches.

    The grid has one block per SM at most (``multiprocessors``);
    ``residency_problem(geometry)`` is None when every block of both kernels
    can be resident at once, else why not (on a device,
    :meth:`~ltexec.backends.numba_cuda.persistent.PersistentLauncher.residency_problem`).
    ``requested``: None falls back, True raises ValueError with the reason,
    False never plans a persistent launch.
    """
    def find():
        from ltexec.backends.numba_cuda.persistent import launch_geometry
        geometry = launch_geometry(H, B, dtype, multiprocessors)
        return geometry, residency_problem(geometry)

    return recurrence_plan(requested, f"B={B}, H={H}", TURNED_OFF, find)


def _simulator_active() -> bool:
    """Whether numba.cuda is (or will be, once imported) the CUDA simulator."""
    import numba
    return bool(numba.config.ENABLE_CUDASIM)


def _driver_error(cuda) -> str:
    """Numba's first line of why the driver or device cannot be used."""
    try:
        cuda.current_context()
    except Exception as exc:
        message = " ".join(str(exc).split()).rstrip(" :")
        return f"{type(exc).__name__}: {message}"
    return "numba.cuda.is_available() is false"
