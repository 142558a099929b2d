"""The Numba-CUDA backend: the whole training step in CUDA kernels written in Python.

For users who want to read and change GPU kernels without leaving Python.
Where the CuPy backend calls cuBLAS for every product and a small pointwise
kernel per step, this backend fuses each LSTM step into one kernel: the
recurrent product h_{t-1} Wh for a tile of hidden units and all four gates,
the gate activations and the cell update run in one launch per layer and time
step, and backwards the product da_{t+1} Wh^T runs in the same launch as the
step's pointwise backward (:mod:`.numba_cuda_kernels`). Products batched over
the window (x_t Wx, weight gradients, dxs, the output layer) use a tiled
shared-memory kernel; softmax, masked cross-entropy, its gradient and the
argmax count are one kernel.

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

The CUDA simulator is not a device: :meth:`unavailable_reason` rejects it, so
``auto`` never picks it. Tests run the backend on it explicitly with
``NumbaCudaBackend(dtype, simulator=True)`` (``NUMBA_ENABLE_CUDASIM=1`` set
before ``numba.cuda`` is first imported): the same kernels on NumPy arrays.
"""

from __future__ import annotations

import numpy as np

from ltexec.backends.base import Backend, BackendUnavailable, option_from_environment
from ltexec.backends.common import LstmCache

GEMM_ENV = "LTEXEC_NUMBA_CUDA_GEMM"
INSTALL_HINT = "pip install 'ltexec[cuda12]' or 'ltexec[cuda13]' (numba-cuda and CuPy for your CUDA major version)"


class NumbaCudaBackend(Backend):
    """CuPy arrays, Numba-CUDA kernels: fused LSTM steps, tiled products, fused softmax cross-entropy.

    ``threads``: checked, nothing more; the backend launches its kernels from
    the calling host thread only. ``gemm``: ``"tiled"`` or ``"cublas"`` (see
    the module docstring; default from ``LTEXEC_NUMBA_CUDA_GEMM``, else
    tiled). ``simulator``: run on numba's CUDA simulator (tests only).
    """

    name = "numba_cuda"

    def __init__(self, dtype=np.float32, *, threads: int | None = None, gemm: str | None = None,
                 simulator: bool = False):
        super().__init__(dtype, threads=threads)
        gemm = option_from_environment(gemm, GEMM_ENV) or "tiled"
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
        from ltexec.backends.numba_cuda_kernels import Launcher
        self.launcher = Launcher(self.dtype, self.xp, gemm, check=False)   # the operations check on entry

    def __repr__(self) -> str:
        where = ", simulator=True" if self.launcher.simulated else ""
        return f"{type(self).__name__}(dtype={self.dtype.name}, gemm={self.launcher.gemm_impl!r}{where})"

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

    def lstm_forward(self, xs, h0, c0, Wx, Wh, b, training: bool):
        T, B, D, H = self._check_lstm_forward(xs, h0, c0, Wx, Wh, b)
        k, xp, dt = self.launcher, self.xp, self.dtype
        gates = xp.empty((T, B, 4 * H), dt)                  # x_t Wx, then activations i, f, g, o
        k.gemm(xs.reshape(T * B, D), Wx, gates.reshape(T * B, 4 * H))
        hs = xp.empty((T + 1, B, H), dt)                     # hs[t] = h_{t-1}
        cs = xp.empty((T + 1, B, H), dt)                     # cs[t] = c_{t-1}
        hs[0], cs[0] = h0, c0
        k.lstm_forward(gates, hs, cs, Wh, b)
        cache = LstmCache(xs, Wx, Wh, gates, hs, cs) if training else None
        return hs[1:], hs[T].copy(), cs[T].copy(), cache

    def lstm_backward(self, dhs, dhT, dcT, cache):
        T, B, D, H = LstmCache.check(cache, type(self).__name__)
        self._check_lstm_backward(dhs, dhT, dcT, T, B, H)
        k, xp, dt = self.launcher, self.xp, self.dtype
        xs, Wx, Wh, gates = cache.xs, cache.Wx, cache.Wh, cache.gates
        dc = dcT.copy()                                      # becomes dc0
        cache.used = True
        k.lstm_backward(gates, dhs, dhT, dc, cache.cs, Wh)  # gates now hold da for every step
        dA = gates.reshape(T * B, 4 * H)
        dWx, dWh = xp.empty((D, 4 * H), dt), xp.empty((H, 4 * H), dt)
        k.gemm(xs.reshape(T * B, D), dA, dWx, trans_a=True)              # X^T dA
        k.gemm(cache.hs[:T].reshape(T * B, H), dA, dWh, trans_a=True)    # H_prev^T dA
        db = xp.empty(4 * H, dt)
        k.column_sums(dA, db)
        dxs = xp.empty((T * B, D), dt)
        k.gemm(dA, Wx, dxs, trans_b=True)                                # dA Wx^T
        dh0 = xp.empty((B, H), dt)
        k.gemm(gates[0], Wh, dh0, trans_b=True)                          # da_0 Wh^T
        return dxs.reshape(T, B, D), dWx, dWh, db, dh0, dc

    # ----------------------------------------------------- embedding, output

    def embedding_forward(self, E, x):
        T, B, _, D = self._check_embedding_forward(E, x)
        xs = self.xp.empty((T, B, D), self.dtype)
        self.launcher.embedding_forward(E, x.reshape(T * B), xs.reshape(T * B, D))
        return xs

    def embedding_backward(self, dxs, x, V: int):
        T, B, D = self._check_embedding_backward(dxs, x, V)
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
        """One fused kernel per row, then one reduction: the only host transfer is the two totals."""
        T, B, V = self._check_softmax_xent(logits, y, mask)
        k, xp, dt = self.launcher, self.xp, self.dtype
        dlogits = xp.empty((T, B, V), dt)
        row_stats = xp.empty((T * B, 2), dt)                 # per row: masked loss, masked hit
        k.softmax_xent(logits.reshape(T * B, V), y.reshape(T * B), mask.reshape(T * B),
                       dlogits.reshape(T * B, V), row_stats)
        totals = xp.empty(2, dt)
        k.column_sums(row_stats, totals)
        loss_sum, correct = self.to_numpy(totals).tolist()  # hit counts are exact below 2**24 in float32
        return loss_sum, dlogits, int(round(correct))


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
