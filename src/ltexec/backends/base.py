"""The backend interface: the few array operations the model is built from.

:class:`ltexec.model.LSTMModel` never touches an array library directly; every
computation goes through a :class:`Backend`, so a new backend (a faster CPU
kernel, a CUDA kernel) only has to provide these operations and the model,
optimizer, trainer and benchmarks work on it unchanged.

Conventions (B batch, T window length, D layer input size, H hidden units,
V vocabulary size):

* Every array is an array of ``self.xp`` (NumPy here, CuPy for GPU backends),
  C-contiguous. Floating arrays have dtype ``self.dtype`` (float32 or float64);
  token ids are int64, and may also be given as host (NumPy) arrays: a GPU
  backend checks those on the host and uploads them, while ids already on
  the device cost two small reductions read back by the host to check.
* A *backend scalar* (a loss, a count, a norm) is a 0-d array of ``self.xp``
  (a NumPy scalar on the CPU backends): it stays where it was computed, and
  ``float()`` or ``int()`` reads it, which on a GPU waits for the queued work.
  The operations below never read one themselves, so a training step
  (:meth:`ltexec.model.LSTMModel.loss_and_grads` and
  :meth:`ltexec.optim.SGD.step`) queues its work without waiting for it.
* Sequences are time-major: ``xs[t]`` is the (B, D) input of step ``t``.
* The LSTM gate blocks along the 4H axis are ordered i, f, g, o (as in
  ``torch.nn.LSTM``); one layer computes, for each step ``t``, the cell of
  :mod:`ltexec.backends.numpy.backend` (its docstring has the equations,
  forward and backward, written once for every backend).

Operations (what a backend must provide):

``lstm_forward(xs, h0, c0, Wx, Wh, b, training) -> (hs, hT, cT, cache)``
    xs (T,B,D), h0 and c0 (B,H), Wx (D,4H), Wh (H,4H), b (4H,). Returns all
    hidden states hs (T,B,H), the final state hT, cT (B,H) and an opaque
    ``cache`` for the backward pass (None when ``training`` is false).
``lstm_backward(dhs, dhT, dcT, cache) -> (dxs, dWx, dWh, db, dh0, dc0)``
    Backpropagation through time: gradients of the loss given its gradients
    with respect to every hs[t] (dhs, (T,B,H)) and to the final state (dhT,
    dcT, (B,H)). It may overwrite dhs and workspace held only by the cache,
    never an array lstm_forward was given or returned: xs is the layer
    below's output and hT, cT are carried into the next window.
``embedding_forward(E, x) -> xs`` and ``embedding_backward(dxs, x, V) -> dE``
    E (V,D), x (T,B) ids, xs (T,B,D).
``embedding_lstm_forward(E, x, h0, c0, Wx, Wh, b, training) -> (hs, hT, cT, cache)``
    The first layer, fed by the embedding: ``lstm_forward`` on
    ``embedding_forward(E, x)`` (this class does exactly that). A backend may
    instead compute ``x_t Wx`` as ``(E Wx)[x_t]`` when V is small.
``embedding_lstm_backward(dhs, dhT, dcT, cache, x, V) -> (dE, dWx, dWh, db, dh0, dc0)``
    Its backward, the layer's and the embedding's together: ``lstm_backward``
    then ``embedding_backward`` (this class does exactly that). ``cache`` is
    ``embedding_lstm_forward``'s; dxs only feeds dE, so a backend whose cache
    knows the rows came from E may get dE without forming dxs (dE = S Wx^T,
    S the rows of dA summed per id).
``linear_forward(hs, W, b) -> logits`` and ``linear_backward(dlogits, hs, W) -> (dhs, dW, db)``
    hs (T,B,H), W (H,V), b (V,), logits (T,B,V).
``tanh_forward(x) -> y`` and ``tanh_backward(dy, y) -> dx``
    The elementwise activation of an encoder: x, y, dy, dx of one shape (T,B,N);
    dx = dy * (1 - y^2) from the forward's output.
``concat_last(parts) -> out`` and ``split_last(x, sizes) -> parts``
    Arrays (T,B,N_k) side by side along the last axis, out (T,B,sum N_k), and
    back: each is the other's backward. Every part is a fresh array.
``softmax_xent(logits, y, mask) -> (loss_sum, dlogits, correct)``
    y (T,B) ids, mask (T,B) of 0/1 in ``self.dtype``. ``loss_sum`` (a
    float64 backend scalar) is the cross-entropy summed over positions with
    mask 1, ``dlogits`` its gradient, ``correct`` (an integer backend scalar)
    the number of those positions whose argmax (first maximum) equals y.
``global_norm(grads) -> norm``, ``scale_(grads, factor)``, ``add_(grads, more)``
    On dicts of arrays: the Euclidean norm of all gradients together (a
    backend scalar); scaling every gradient in place; adding each array of
    ``more`` to the one of ``grads`` with its name, in place (gradients of
    one step gathered from several batches).
``clipped_sgd_update_(params, grads, velocity, lr, momentum, clip) -> norm``
    One optimizer step in place, decided on the device: with ``norm`` the
    global norm of ``grads`` and ``s = clip / max(norm, clip)`` (1 unless the
    norm exceeds ``clip``), ``v = momentum*v + s*g; p -= lr*v`` (``velocity``
    may be None when momentum is 0; ``grads`` are scaled by s in place, as
    ``torch.nn.utils.clip_grad_norm_`` does). Where ``norm`` is not finite,
    parameters, velocity and gradients are left unchanged.
    Returns ``norm`` (a backend scalar): reading it is the caller's choice.

Every returned gradient is a fresh array (never a view of a parameter, an
input or another gradient), because the optimizer scales gradients in place.

Every operation checks its arguments once, on entry, with the helpers of
this class (``_check``, ``_check_ids`` and one per operation): an array of
the wrong type or dtype is a ``TypeError``; a wrong shape, an empty or
non-contiguous array is a ``ValueError`` naming the argument; so is an id
outside [0, V) in x or y, and the message names that id. Past the entry
checks, a backend's kernels may assume valid arguments.

Construction: ``Backend(dtype, *, threads=None, **its own options)``.
``threads`` is the one option every backend takes: the most host threads
the backend runs its work on at once (None: its own default). Backends that
start no threads of their own run on the calling thread and only check it.
:func:`ltexec.backends.get_backend` passes options on to the constructor.
A backend option may fall back to an environment variable when it is not
given (:func:`option_from_environment`); these are all of them:

* ``LTEXEC_CUDA_PERSISTENT`` for ``CupyBackend(persistent=)``: ``auto``
  (default), 1/true/yes/on (required) or 0/false/no/off (never).
* ``LTEXEC_NUMBA_CUDA_GEMM`` for ``NumbaCudaBackend(gemm=)``: ``tiled``
  (default) or ``cublas``.
* ``LTEXEC_NUMBA_CUDA_PERSISTENT`` for ``NumbaCudaBackend(persistent=)``:
  ``auto`` (default), 1/true/yes/on (required) or 0/false/no/off (never).

Tuning: ``tune(window, batch, hidden)`` fixes, for that workload, the
options that change speed and not results beyond rounding (the ``cpu``
backend times its candidates, :mod:`ltexec.tuning`); ``choices`` is what was
fixed, as constructor options, so a checkpoint can record them and a resumed
run can pass them back. Backends with nothing to choose return None and {}.

Housekeeping: ``name``, ``xp``, ``dtype``, ``threads``, ``device_name()``,
``asarray(host_array)`` (host to backend; floating data becomes
``self.dtype``), ``to_numpy(array)``, ``synchronize()`` (wait for queued
device work, for timing) and the classmethod ``unavailable_reason()``.

This class implements everything except the LSTM layer with ``self.xp`` calls
that work for NumPy and CuPy alike, so a backend subclasses it, sets ``name``
and ``xp``, implements ``lstm_forward``/``lstm_backward`` and overrides
whatever else it makes faster. It also tells the registry whether it can run
here (:meth:`Backend.unavailable_reason`); its module must import even when
its optional dependencies are missing.
"""

from __future__ import annotations

import os
import platform

import numpy as np

from ltexec.backends.common import check_array, check_ids
from ltexec.validation import check_int

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class BackendUnavailable(RuntimeError):
    """A backend was asked for by name but cannot run here; the message says why."""


def check_dtype(dtype) -> np.dtype:
    """Return ``dtype`` as a NumPy dtype if it is float32 or float64, else raise ``ValueError``."""
    try:
        resolved = None if dtype is None else np.dtype(dtype)   # np.dtype(None) would be float64
    except TypeError:
        resolved = None
    if resolved is None or resolved not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return resolved


def check_threads(threads) -> int | None:
    """``threads`` as an int >= 1, or None (the backend's default); else ``ValueError``."""
    return None if threads is None else check_int("threads", threads, minimum=1)


SWITCH_VALUES = {"auto": None, "1": True, "true": True, "yes": True, "on": True,
                 "0": False, "false": False, "no": False, "off": False}
"""What the on/off options accept as text (an environment variable's): None is auto, or not requested."""

def switch(setting, variable: str) -> bool | None:
    """An on/off option as True, False or None (auto, or not requested): a bool or None as given, else text.

    Text (an environment variable's, ``variable``) is one of SWITCH_VALUES, in any case.
    """
    if setting is None or isinstance(setting, bool):
        return setting
    text = str(setting).strip().lower()
    if text not in SWITCH_VALUES:
        raise ValueError(f"{variable} must be auto, 1/true/yes/on or 0/false/no/off, got {setting!r}")
    return SWITCH_VALUES[text]


def option_from_environment(value, variable: str):
    """A constructor option: ``value`` when given (not None), else the environment variable's text.

    The text is stripped; an unset or blank variable gives None (the option's
    default). Every ``LTEXEC_*`` variable is read this way; the module
    docstring lists them.
    """
    if value is not None:
        return value
    text = os.environ.get(variable, "").strip()
    return text or None


class Backend:
    """Array operations for the model; see the module docstring for the contract."""

    name = "base"
    xp = np

    def __init__(self, dtype=np.float32, *, threads: int | None = None):
        self.dtype = check_dtype(dtype)
        self.threads = check_threads(threads)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None if this backend can run here, else a short human reason (e.g. a missing package)."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dtype={self.dtype.name})"

    # ---------------------------------------------------------------- tuning

    def tune(self, window: int, batch: int, hidden: int, refresh: bool = False):
        """Fix the options that change speed and not results (beyond rounding) for this workload.

        ``window`` steps of ``batch`` sequences through layers of ``hidden``
        units. Returns a :class:`~ltexec.tuning.Tuning` (what was chosen, how,
        each candidate's time), or None for a backend with nothing to choose.
        A backend fixes its choice once: later calls return the same one.
        """
        return None

    @property
    def choices(self) -> dict:
        """The options fixed so far that reproduce this backend's arithmetic, as constructor options."""
        return {}

    # ---------------------------------------------------------------- arrays

    def device_name(self) -> str:
        """A human name for the device the arrays live on."""
        return f"CPU ({platform.machine() or 'unknown'})"

    def asarray(self, host_array, dtype=None):
        """A contiguous backend array from a host array; floating data becomes ``self.dtype``."""
        if dtype is None:
            source = host_array.dtype if hasattr(host_array, "dtype") else np.asarray(host_array).dtype
            dtype = self.dtype if np.issubdtype(source, np.floating) else None
        return self.xp.ascontiguousarray(host_array, dtype=dtype)

    def to_numpy(self, array) -> np.ndarray:
        """A NumPy copy (or view, for NumPy backends) of a backend array."""
        return getattr(self.xp, "asnumpy", np.asarray)(array)   # CuPy names it asnumpy

    def synchronize(self) -> None:
        """Wait until queued device work has finished (for timing); a no-op on the CPU."""

    # ------------------------------------------------------------ LSTM layer

    def lstm_forward(self, xs, h0, c0, Wx, Wh, b, training: bool):
        """One LSTM layer over a window: ``(hs, hT, cT, cache)``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement lstm_forward")

    def lstm_backward(self, dhs, dhT, dcT, cache):
        """Backpropagation through time for one layer: ``(dxs, dWx, dWh, db, dh0, dc0)``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement lstm_backward")

    def embedding_lstm_forward(self, E, x, h0, c0, Wx, Wh, b, training: bool):
        """The first layer on the embedding of x: ``(hs, hT, cT, cache)``."""
        return self.lstm_forward(self.embedding_forward(E, x), h0, c0, Wx, Wh, b, training)

    def embedding_lstm_backward(self, dhs, dhT, dcT, cache, x, V: int):
        """The first layer's backward and the embedding's: ``(dE, dWx, dWh, db, dh0, dc0)``."""
        dxs, dWx, dWh, db, dh0, dc0 = self.lstm_backward(dhs, dhT, dcT, cache)
        return self.embedding_backward(dxs, x, V), dWx, dWh, db, dh0, dc0

    # ----------------------------------------------------- embedding, output

    def embedding_forward(self, E, x):
        """Rows of E for every id: (T,B) ids -> (T,B,D)."""
        x = self._check_embedding_forward(E, x)[0]
        return E[x]

    def embedding_backward(self, dxs, x, V: int):
        """Gradient of E: the rows of dxs summed per id, as a one-hot product (V is small)."""
        x, T, B, D = self._check_embedding_backward(dxs, x, V)
        one_hot = self._one_hot(x.reshape(T * B), V)           # (T*B, V)
        return one_hot.T @ dxs.reshape(T * B, D)                # (V, D)

    def linear_forward(self, hs, W, b):
        """Affine output layer: (T,B,H) -> (T,B,V)."""
        T, B, H, V = self._check_linear(hs, W, b=b)
        return (hs.reshape(T * B, H) @ W + b).reshape(T, B, V)

    def linear_backward(self, dlogits, hs, W):
        """Gradients of the output layer: ``(dhs, dW, db)``."""
        T, B, H, V = self._check_linear(hs, W, dlogits=dlogits)
        dlogits2 = dlogits.reshape(T * B, V)
        dhs = (dlogits2 @ W.T).reshape(T, B, H)
        dW = hs.reshape(T * B, H).T @ dlogits2
        db = dlogits2.sum(axis=0)
        return dhs, dW, db

    def tanh_forward(self, x):
        """Elementwise tanh: (T,B,N) -> (T,B,N)."""
        self._check("x", x, (None, None, None))
        return self.xp.tanh(x)

    def tanh_backward(self, dy, y):
        """Gradient through ``y = tanh(x)`` from its output: ``dy * (1 - y^2)``."""
        shape = self._check("y", y, (None, None, None))
        self._check("dy", dy, shape)
        return dy * (1 - y * y)

    def concat_last(self, parts):
        """(T,B,N_k) arrays side by side along the last axis: (T,B,sum N_k)."""
        if not isinstance(parts, (list, tuple)) or not parts:
            raise ValueError(f"parts must be a non-empty list of arrays, got {parts!r}")
        T, B, _ = self._check("parts[0]", parts[0], (None, None, None))
        for k, part in enumerate(parts[1:], 1):
            self._check(f"parts[{k}]", part, (T, B, None))
        return self.xp.concatenate(parts, axis=-1)

    def split_last(self, x, sizes):
        """x (T,B,N) cut along the last axis into fresh (T,B,sizes[k]) arrays (``sizes`` sums to N)."""
        N = self._check("x", x, (None, None, None))[2]
        if (not isinstance(sizes, (list, tuple)) or not sizes
                or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in sizes)):
            raise ValueError(f"sizes must be a non-empty list of positive integers, got {sizes!r}")
        if sum(sizes) != N:
            raise ValueError(f"sizes {list(sizes)} sum to {sum(sizes)}, x's last axis has {N}")
        bounds = np.cumsum([0, *sizes])
        return [x[..., start:end].copy() for start, end in zip(bounds[:-1], bounds[1:])]   # C order, never a view

    def softmax_xent(self, logits, y, mask):
        """Masked summed cross-entropy, its gradient and the count of correct argmaxes (backend scalars)."""
        y = self._check_softmax_xent(logits, y, mask)[0]
        xp = self.xp
        shifted = logits - logits.max(axis=-1, keepdims=True)   # largest logit is 0: exp cannot overflow
        log_z = xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))
        log_p = shifted - log_z                                  # (T,B,V) log-probabilities
        log_p_y = xp.take_along_axis(log_p, y[..., None], axis=-1)[..., 0]
        loss_sum = -(log_p_y * mask).sum()
        one_hot = self._one_hot(y, logits.shape[-1])
        dlogits = (xp.exp(log_p) - one_hot) * mask[..., None]
        correct = ((logits.argmax(axis=-1) == y) & (mask != 0)).sum()
        return loss_sum.astype(np.float64), dlogits, correct

    def _one_hot(self, ids, V: int):
        """Float one-hot rows for an integer id array: ids.shape + (V,)."""
        return (ids[..., None] == self.xp.arange(V)).astype(self.dtype)

    # ------------------------------------------------------------- optimizer

    def global_norm(self, grads: dict):
        """Euclidean norm of all gradient arrays taken together (a backend scalar)."""
        self._check_arrays("grads", grads)
        return self._global_norm(grads)

    def _global_norm(self, grads: dict):
        return self.xp.sqrt(sum((g * g).sum() for g in grads.values()))

    def scale_(self, grads: dict, factor: float) -> None:
        """Multiply every gradient by ``factor`` in place."""
        self._check_arrays("grads", grads)
        for g in grads.values():
            g *= factor

    def add_(self, grads: dict, more: dict) -> None:
        """Add every array of ``more`` to the array of ``grads`` with its name, in place (the same names and shapes)."""
        if set(more) != set(grads):
            raise ValueError(f"more must name the same arrays as grads: {sorted(more)} vs {sorted(grads)}")
        self._check_arrays("grads", grads)
        self._check_arrays("more", more, like=grads)
        for name, g in grads.items():
            g += more[name]

    def clipped_sgd_update_(self, params: dict, grads: dict, velocity, lr: float, momentum: float, clip: float):
        """Clipped SGD in place (PyTorch's momentum convention), skipped where the norm is not finite; the norm.

        Written with array expressions only, so on a GPU nothing is read back:
        the skip is a select on the device.
        """
        self._check_sgd_update(params, grads, velocity, momentum)
        xp, dtype = self.xp, self.dtype
        norm = self._global_norm(grads)
        finite = xp.isfinite(norm)
        norm64 = xp.asarray(norm, dtype=np.float64)
        scale = xp.asarray(clip / xp.maximum(norm64, clip), dtype=dtype)   # 1 unless the norm exceeds clip
        zero, one = xp.zeros((), dtype), xp.ones((), dtype)
        scale = xp.where(finite, scale, one)
        with np.errstate(invalid="ignore", over="ignore"):              # inf * 0 where the step is skipped
            for name, p in params.items():
                g = grads[name]
                g *= scale                                             # the clip, in place
                step = xp.where(finite, g, zero)                       # a NaN gradient moves nothing
                if momentum:
                    v = velocity[name]
                    v[...] = xp.where(finite, momentum * v + step, v)
                    step = v
                p -= xp.where(finite, lr * step, zero)
        return norm

    # ------------------------------------------------------------ validation
    # Every operation calls one of these first, so each checks its arguments once per call.

    def _check(self, name: str, a, shape: tuple | None, dtype=None) -> tuple:
        """a's shape, once a is a non-empty C-contiguous array of this backend with that shape and dtype.

        ``shape`` may hold None for any extent; ``dtype`` defaults to ``self.dtype``.
        """
        found = check_array(name, a, shape, self.dtype if dtype is None else dtype, self.xp.ndarray)
        self._check_device(name, a)
        return found

    def _check_device(self, name: str, a) -> None:
        """Raise ValueError unless ``a`` lives where this backend computes (a hook for multi-device backends)."""

    def _check_ids(self, name: str, ids, V: int, shape: tuple | None) -> tuple:
        """(ids on this backend, their shape), once ids has that shape and every id lies in [0, V).

        ids is an int64 array of this backend, or a host (NumPy) one, which is
        checked on the host and then uploaded (no device read on a GPU).
        """
        if isinstance(ids, np.ndarray) and self.xp is not np:
            found = check_ids(name, ids, V, shape, np.ndarray)
            return self.asarray(ids), found
        found = check_ids(name, ids, V, shape, self.xp.ndarray)
        self._check_device(name, ids)
        return ids, found

    def _check_lstm_forward(self, xs, h0, c0, Wx, Wh, b) -> tuple[int, int, int, int]:
        """(T, B, D, H) of ``lstm_forward``'s arguments, once they fit together."""
        T, B, D = self._check("xs", xs, (None, None, None))
        H = self._check("Wh", Wh, (None, None))[0]
        return (T, B) + self._check_lstm_state_and_weights(h0, c0, Wx, Wh, b, B, D, H)

    def _check_embedding_lstm_forward(self, E, x, h0, c0, Wx, Wh, b) -> tuple:
        """(x on this backend, T, B, V, D, H) of ``embedding_lstm_forward``'s arguments, once they fit together."""
        x, T, B, V, D = self._check_embedding_forward(E, x)
        H = self._check("Wh", Wh, (None, None))[0]
        return (x, T, B, V) + self._check_lstm_state_and_weights(h0, c0, Wx, Wh, b, B, D, H)

    def _check_lstm_state_and_weights(self, h0, c0, Wx, Wh, b, B: int, D: int, H: int) -> tuple[int, int]:
        self._check("h0", h0, (B, H))
        self._check("c0", c0, (B, H))
        self._check("Wx", Wx, (D, 4 * H))
        self._check("Wh", Wh, (H, 4 * H))
        self._check("b", b, (4 * H,))
        return D, H

    def _check_lstm_backward(self, dhs, dhT, dcT, T: int, B: int, H: int) -> None:
        """The gradients ``lstm_backward`` gets, for a layer of that (T, B, H)."""
        self._check("dhs", dhs, (T, B, H))
        self._check("dhT", dhT, (B, H))
        self._check("dcT", dcT, (B, H))

    def _check_embedding_forward(self, E, x) -> tuple:
        """(x on this backend, T, B, V, D) of ``embedding_forward(E, x)``."""
        V, D = self._check("E", E, (None, None))
        x, (T, B) = self._check_ids("x", x, V, (None, None))
        return x, T, B, V, D

    def _check_embedding_backward(self, dxs, x, V: int) -> tuple:
        """(x on this backend, T, B, D) of ``embedding_backward(dxs, x, V)``."""
        T, B, D = self._check("dxs", dxs, (None, None, None))
        x = self._check_ids("x", x, check_int("V", V, minimum=1), (T, B))[0]
        return x, T, B, D

    def _check_linear(self, hs, W, b=None, dlogits=None) -> tuple[int, int, int, int]:
        """(T, B, H, V) of ``linear_forward(hs, W, b)`` or ``linear_backward(dlogits, hs, W)``."""
        T, B, H = self._check("hs", hs, (None, None, None))
        V = self._check("W", W, (H, None))[1]
        if b is not None:
            self._check("b", b, (V,))
        if dlogits is not None:
            self._check("dlogits", dlogits, (T, B, V))
        return T, B, H, V

    def _check_softmax_xent(self, logits, y, mask) -> tuple:
        """(y on this backend, T, B, V) of ``softmax_xent(logits, y, mask)``."""
        T, B, V = self._check("logits", logits, (None, None, None))
        y = self._check_ids("y", y, V, (T, B))[0]
        self._check("mask", mask, (T, B))
        return y, T, B, V

    def _check_arrays(self, name: str, arrays: dict, like: dict | None = None) -> None:
        """Every ``arrays[key]``: an array of this backend (with the shape of ``like[key]``, if given)."""
        for key, a in arrays.items():
            self._check(f"{name}[{key!r}]", a, None if like is None else tuple(like[key].shape))

    def _check_sgd_update(self, params: dict, grads: dict, velocity, momentum: float) -> None:
        self._check_arrays("params", params)
        self._check_arrays("grads", {name: grads[name] for name in params}, like=params)
        if momentum:
            self._check_arrays("velocity", {name: velocity[name] for name in params}, like=params)
