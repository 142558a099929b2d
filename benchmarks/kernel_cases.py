"""One case per CUDA C kernel of kernels/: random inputs, one launch through a device layer, the float64 reference.

Shared by ``benchmarks/kernel_check.py`` (one kernel against its reference across block sizes, timed on a GPU)
and the kernel tests (``tests/backends/cupy/test_cupy_kernels.py``, ``test_cupy_persistent_kernels.py``), so
both check the same launches against the same numbers. A builder (one per kernel: :data:`BUILDERS`) draws
inputs for a :class:`Shape`, dtype and seed, rounds them to the dtype, and returns a :class:`KernelCase`:

* every array argument in an allocation of its own on the device layer, between :data:`GUARD` cells of
  :data:`CANARY` on each side, so a write out of bounds shows (:class:`Guarded`);
* before every launch the outputs are poisoned again (NaN; integers: their minimum) and the arguments a
  kernel updates in place restored, so an element left unwritten shows and a launch can be repeated on the
  same inputs; after it, every input must hold what it held (:class:`KernelFault` otherwise);
* the float64 reference of every output (and of what the host computes from them), from the NumPy
  reference backend on the kernel's own rounded inputs, computed on first use, with the tolerance of
  :func:`ltexec.testing.relative_error` against it: one step 1e-5 in float32 and 1e-12 in float64, a
  persistent kernel's whole window 1e-4 and 1e-10. Counts and the grid barrier's state must match exactly.

The device layer is the CuPy backend's interface (``xp``, ``empty``, ``launch``, ``launch_cooperative``):
:class:`~ltexec.backends.cupy.backend.CudaDevice` on a GPU, the tests' C++ emulation
(``tests/cuda_emulation``: ``EmulatedDevice``) on the CPU.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ltexec.backends.base import Backend
from ltexec.backends.common import ceil_div
from ltexec.backends.cupy.backend import launch_geometry, name_expression
from ltexec.backends.numpy.backend import NumpyBackend, cell_backward, cell_forward
from ltexec.testing import relative_error

GUARD = 4          # guard cells on each side of every kernel argument
CANARY = 12345     # their value
STEP_TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
"""Largest relative error of one step's kernel (cell, softmax) against the float64 reference."""
WINDOW_TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}
"""Largest relative error of a persistent kernel, whose rounding errors build up over the window's steps."""
WINDOW_INPUT = 6   # D, the layer input size of the persistent cases (only the host's products see it)


@dataclass(frozen=True)
class Shape:
    """What a case is built for: T steps of a layer of batch B and H hidden units; the loss over N rows of V."""

    T: int = 1
    B: int = 1
    H: int = 1
    N: int = 1
    V: int = 1


class KernelFault(AssertionError):
    """A launch broke its arguments: wrote outside an array, left output elements unwritten, changed an input."""


def poison(dtype):
    """What an output holds before a launch: NaN for floats, the minimum for integers."""
    dtype = np.dtype(dtype)
    return np.nan if dtype.kind == "f" else np.iinfo(dtype).min


def to_host(array) -> np.ndarray:
    """A host copy of a device array: CuPy's ``get``, or a copy of a NumPy array."""
    return np.array(array) if isinstance(array, np.ndarray) else array.get()


def random_normal(rng, shape, scale=1.0):
    return rng.standard_normal(shape) * scale


# ------------------------------------------------------------ arguments

class Guarded:
    """One kernel argument in an allocation of its own on ``device``, between GUARD cells of CANARY.

    ``values`` (host) is what it holds before every launch (:meth:`reset`). ``written``: the kernel writes
    it (an output, or an input updated in place), else it must come out unchanged; ``poisoned``: it is a
    pure output, whose every element the kernel must write.
    """

    def __init__(self, device, name: str, values, *, written: bool = False, poisoned: bool = False):
        values = np.asarray(values)
        self.name, self.written, self.poisoned, self.shape = name, written, poisoned, values.shape
        self._host = np.full(values.size + 2 * GUARD, CANARY, values.dtype)
        self._host[GUARD:GUARD + values.size] = values.ravel()
        self._initial = device.xp.asarray(self._host)    # on the device: resets copy from here, not the host
        self._buffer = device.empty(self._host.shape, self._host.dtype)
        self.array = self._buffer[GUARD:GUARD + values.size].reshape(values.shape)   # what the kernel gets
        self.reset()

    @classmethod
    def output(cls, device, name: str, shape, dtype) -> Guarded:
        """A pure output, poisoned before every launch."""
        return cls(device, name, np.full(shape, poison(dtype), dtype), written=True, poisoned=True)

    def reset(self) -> None:
        """Back to the values before any launch (outputs poisoned again), guard cells included."""
        self._buffer[...] = self._initial

    def fault(self, host: np.ndarray) -> str | None:
        """What the launch did wrong to this argument (``host``: its buffer read back), or None."""
        if not ((host[:GUARD] == CANARY).all() and (host[-GUARD:] == CANARY).all()):
            return f"{self.name}: written outside the array (its guard cells changed)"
        values = host[GUARD:-GUARD]
        if not self.written:
            changed = np.count_nonzero(values != self._host[GUARD:-GUARD])
            return f"{self.name}: an input, but {changed} of its {values.size} elements changed" if changed else None
        if values.dtype.kind == "f":          # NaN: the poison left, or a NaN the kernel computed
            left = np.count_nonzero(np.isnan(values))
        else:
            left = np.count_nonzero(values == poison(values.dtype)) if self.poisoned else 0
        return f"{self.name}: {left} of {values.size} elements left unwritten (poison or NaN)" if left else None

    def check(self) -> np.ndarray:
        """The values on the host, once :meth:`fault` finds nothing (else KernelFault)."""
        host = to_host(self._buffer)
        fault = self.fault(host)
        if fault is not None:
            raise KernelFault(fault)
        return host[GUARD:-GUARD].reshape(self.shape)


# ------------------------------------------------------------ one launch

@dataclass(frozen=True)
class Expected:
    """What one checked value should be: float64 ``values``, within the case's tolerance of
    :func:`relative_error` (with ``floor``), or equal when ``exact`` (counts, the barrier's state)."""

    values: np.ndarray
    floor: float = 0.0
    exact: bool = False


@dataclass
class KernelCase:
    """One launch of one kernel: its arguments and geometry, and what its outputs should be.

    ``args``: Guarded arrays and NumPy scalars in the kernel's order. ``reference()``: the Expected value of
    every output by name, and of every value ``derive(outputs)`` computes from them on the host (called on
    first use: :attr:`expected`). ``shared_bytes``: the dynamic shared memory of a cooperative launch (all
    blocks resident at once); None for a plain launch.
    """

    kernel: str
    dtype: np.dtype
    grid: int
    block: int
    args: tuple
    reference: Callable[[], dict[str, Expected]]
    tolerance: float
    shared_bytes: int | None = None
    derive: Callable[[dict], dict] | None = None

    @property
    def name_expression(self) -> str:
        """The instantiation launched, e.g. ``lstm_cell_forward<float>``."""
        return name_expression(self.kernel, self.dtype)

    @functools.cached_property
    def expected(self) -> dict[str, Expected]:
        return self.reference()

    def arrays(self) -> list[Guarded]:
        return [arg for arg in self.args if isinstance(arg, Guarded)]

    def reset(self) -> None:
        """Every written argument back to its values before any launch."""
        for array in self.arrays():
            if array.written:
                array.reset()

    def start(self, device) -> None:
        """The launch alone, on the arguments as they are (queued on a GPU)."""
        args = tuple(arg.array if isinstance(arg, Guarded) else arg for arg in self.args)
        if self.shared_bytes is None:
            device.launch(self.name_expression, self.grid, self.block, args)
        else:
            device.launch_cooperative(self.name_expression, self.grid, self.block, self.shared_bytes, args)

    def run(self, device) -> dict[str, np.ndarray]:
        """One launch on fresh arguments; its outputs on the host (KernelFault if it broke an argument)."""
        self.reset()
        self.start(device)
        return self.outputs()

    def outputs(self) -> dict[str, np.ndarray]:
        """Every written argument on the host by name, once no argument shows a fault (else KernelFault naming
        every fault)."""
        checked, faults = {}, []
        for array in self.arrays():
            try:
                values = array.check()
            except KernelFault as fault:
                faults.append(str(fault))
                continue
            if array.written:
                checked[array.name] = values
        if faults:
            raise KernelFault("; ".join(faults))
        return checked

    def errors(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """Per checked value: its relative error against the reference (exact ones: 0, or inf where they differ)."""
        values = {**outputs, **(self.derive(outputs) if self.derive else {})}
        return {name: (0.0 if np.array_equal(values[name], want.values) else math.inf) if want.exact
                else relative_error(values[name], want.values, want.floor)
                for name, want in self.expected.items()}

    def failures(self, errors: dict[str, float]) -> list[str]:
        """One line per checked value outside the tolerance (or, exact, not equal), naming it."""
        lines = []
        for name, error in errors.items():
            if self.expected[name].exact and error != 0:
                lines.append(f"{name}: differs from the expected values")
            elif not error < self.tolerance:
                lines.append(f"{name}: relative error {error:.3g}, above the tolerance {self.tolerance:g}")
        return lines


# ------------------------------------------------------------- LSTM cell

def cell_inputs(rng, B: int, H: int, dtype):
    """Random forward inputs rounded to ``dtype`` (pre-activations of order 1-3, not saturated)."""
    xproj = random_normal(rng, (B, 4 * H), 1.5).astype(dtype)
    h_prev = random_normal(rng, (B, H), 0.5).astype(dtype)
    c_prev = random_normal(rng, (B, H), 1.0).astype(dtype)
    Wh = random_normal(rng, (H, 4 * H), 1.0 / np.sqrt(H)).astype(dtype)
    b = random_normal(rng, 4 * H, 0.5).astype(dtype)
    return xproj, h_prev, c_prev, Wh, b


def cell_forward_case(device, shape: Shape, dtype, block: int, seed: int) -> KernelCase:
    """``lstm_cell_forward``: one step of B x H cells, one thread per (b, j); the product h_{t-1} Wh is
    the host's (cuBLAS on a GPU), in the kernel's dtype."""
    B, H, dtype = shape.B, shape.H, np.dtype(dtype)
    xproj, h_prev, c_prev, Wh, b = cell_inputs(np.random.default_rng(seed), B, H, dtype)
    grid, block = launch_geometry(B * H, block)
    args = (Guarded(device, "gates", xproj, written=True), Guarded(device, "rec", h_prev @ Wh),
            Guarded(device, "b", b), Guarded(device, "c_prev", c_prev),
            Guarded.output(device, "c", (B, H), dtype), Guarded.output(device, "h", (B, H), dtype),
            np.int32(B), np.int32(H))

    def reference():
        h, c, (i, f, g, o, *_) = cell_forward(*(a.astype(np.float64) for a in (xproj, h_prev, c_prev, Wh, b)))
        return {"gates": Expected(np.concatenate([i, f, g, o], axis=1)), "c": Expected(c), "h": Expected(h)}

    return KernelCase("lstm_cell_forward", dtype, grid, block, args, reference, STEP_TOLERANCE[dtype])


def cell_backward_case(device, shape: Shape, dtype, block: int, seed: int) -> KernelCase:
    """``lstm_cell_backward``: one step back through B x H cells, on the activations and cell states a
    float64 forward step leaves, rounded to ``dtype`` (what the forward kernel keeps)."""
    B, H, dtype = shape.B, shape.H, np.dtype(dtype)
    rng = np.random.default_rng(seed)
    xproj, h_prev, c_prev, Wh, b = (a.astype(np.float64) for a in cell_inputs(rng, B, H, dtype))
    _, c, (i, f, g, o, *_) = cell_forward(xproj, h_prev, c_prev, Wh, b)
    acts = np.concatenate([i, f, g, o], axis=1).astype(dtype)
    c = c.astype(dtype)
    dh_out, dh_next, dc_in = (random_normal(rng, (B, H)).astype(dtype) for _ in range(3))
    grid, block = launch_geometry(B * H, block)
    args = (Guarded(device, "gates", acts, written=True), Guarded(device, "c_prev", c_prev.astype(dtype)),
            Guarded(device, "c", c), Guarded(device, "dh_out", dh_out), Guarded(device, "dh_next", dh_next),
            Guarded(device, "dc", dc_in, written=True), np.int32(B), np.int32(H))

    def reference():
        step_cache = (*np.split(acts.astype(np.float64), 4, axis=1), c_prev, np.tanh(c.astype(np.float64)), Wh)
        da, _, dc = cell_backward(dh_out.astype(np.float64) + dh_next.astype(np.float64),
                                  dc_in.astype(np.float64), step_cache)
        return {"gates": Expected(da), "dc": Expected(dc)}

    return KernelCase("lstm_cell_backward", dtype, grid, block, args, reference, STEP_TOLERANCE[dtype])


# ------------------------------------------------------------ softmax + loss

def softmax_inputs(rng, N: int, V: int, dtype):
    """Logits rounded to ``dtype``, target ids and a 0/1 mask; one row (N > 1) has a tie for the maximum."""
    logits = random_normal(rng, (N, V), 3.0).astype(dtype)
    y = rng.integers(0, V, N)
    mask = (rng.random(N) < 0.6).astype(dtype)
    if N > 1:   # a tie for the maximum: the first one counts, whether or not it is the target
        row = rng.integers(N)
        first, second = sorted(rng.choice(V, 2, replace=False)) if V > 1 else (0, 0)
        logits[row, [first, second]] = logits[row].max() + 1
        y[row], mask[row] = rng.choice([first, second]), 1
    return logits, y, mask


def softmax_xent_case(device, shape: Shape, dtype, block: int, seed: int,
                      targets: dict[int, int] | None = None) -> KernelCase:
    """``softmax_xent``: one block per row of the (N, V) logits. ``targets``: rows whose drawn target id is
    replaced (by an id outside the vocabulary, say; the reference then refuses them, so leave it unasked)."""
    N, V, dtype = shape.N, shape.V, np.dtype(dtype)
    logits, y, mask = softmax_inputs(np.random.default_rng(seed), N, V, dtype)
    for row, target in (targets or {}).items():
        y[row] = target
    args = (Guarded(device, "logits", logits), Guarded(device, "y", y.astype(np.int64)), Guarded(device, "mask", mask),
            Guarded.output(device, "dlogits", (N, V), dtype), Guarded.output(device, "row_loss", N, dtype),
            Guarded.output(device, "row_correct", N, np.int32), np.int32(N), np.int32(V))

    def reference():
        loss, dlogits, correct = Backend(np.float64).softmax_xent(logits.astype(np.float64)[None], y[None],
                                                                  mask.astype(np.float64)[None])
        return {"dlogits": Expected(dlogits[0]),
                "row_correct": Expected((logits.argmax(axis=1) == y) & (mask != 0), exact=True),
                "loss": Expected(np.float64(loss), floor=1.0),     # the sum, as the host takes it
                "correct": Expected(correct, exact=True)}

    def derive(outputs):
        return {"loss": outputs["row_loss"].astype(np.float64).sum(), "correct": outputs["row_correct"].sum()}

    return KernelCase("softmax_xent", dtype, N, block, args, reference, STEP_TOLERANCE[dtype], derive=derive)


# ------------------------------------------------------- persistent kernels

def persistent_grid(H: int, units: int) -> int:
    """Blocks of a persistent launch: one per slice of ``units`` hidden units."""
    return ceil_div(H, units)


def persistent_shared_bytes(H: int, units: int, dtype) -> int:
    """Dynamic shared memory per block, both directions: the block's part of W_h (4H values per unit)."""
    return 4 * H * units * np.dtype(dtype).itemsize


class Window:
    """Random inputs of one layer window, rounded to ``dtype``, and the float64 reference on them (on first use)."""

    def __init__(self, shape: Shape, dtype, seed: int):
        rng = np.random.default_rng(seed)
        T, B, H, dtype = shape.T, shape.B, shape.H, np.dtype(dtype)
        self.T, self.B, self.H, self.dtype = T, B, H, dtype
        self.xs = rng.standard_normal((T, B, WINDOW_INPUT)).astype(dtype)
        self.Wx = (rng.standard_normal((WINDOW_INPUT, 4 * H)) / np.sqrt(WINDOW_INPUT)).astype(dtype)
        self.Wh = (rng.standard_normal((H, 4 * H)) / np.sqrt(H)).astype(dtype)
        self.b = (rng.standard_normal(4 * H) * 0.5).astype(dtype)
        self.h0 = (rng.standard_normal((B, H)) * 0.5).astype(dtype)
        self.c0 = rng.standard_normal((B, H)).astype(dtype)
        self.dhs = rng.standard_normal((T, B, H)).astype(dtype)
        self.dhT = rng.standard_normal((B, H)).astype(dtype)
        self.dcT = rng.standard_normal((B, H)).astype(dtype)

    def xproj(self) -> np.ndarray:
        """x_t Wx for every step, in the kernel's dtype (cuBLAS's part on the GPU)."""
        return (self.xs.reshape(self.T * self.B, WINDOW_INPUT) @ self.Wx).reshape(self.T, self.B, 4 * self.H)

    @functools.cached_property
    def forward(self) -> dict[str, np.ndarray]:
        """The reference forward: gates (activations), hs, cs per step, and its cache for the backward."""
        f64 = {name: getattr(self, name).astype(np.float64) for name in ("xs", "h0", "c0", "Wx", "Wh", "b")}
        hs, _, cT, cache = NumpyBackend(np.float64).lstm_forward(**f64, training=True)
        steps = cache[4]                                 # (i, f, g, o, c_prev, tanh_c, Wh) per step
        return {"gates": np.stack([np.concatenate(step[:4], axis=1) for step in steps]), "hs": hs,
                "cs": np.stack([step[4] for step in steps[1:]] + [cT]), "cache": cache}

    @functools.cached_property
    def backward(self) -> dict[str, np.ndarray]:
        """The reference backward: every step's da, and the layer's gradients (dxs, dWx, dWh, db, dh0, dc0)."""
        dhs, dhT, dcT = (a.astype(np.float64) for a in (self.dhs, self.dhT, self.dcT))
        cache = self.forward["cache"]
        grads = NumpyBackend(np.float64).lstm_backward(dhs.copy(), dhT, dcT, cache)
        das = np.empty((self.T, self.B, 4 * self.H))
        dh, dc = dhT, dcT
        for t in reversed(range(self.T)):
            das[t], dh, dc = cell_backward(dhs[t] + dh, dc, cache[4][t])
        return {"dA": das, **dict(zip(("dxs", "dWx", "dWh", "db", "dh0", "dc0"), grads))}

    def host_gradients(self, dA: np.ndarray) -> dict[str, np.ndarray]:
        """What the host computes from the kernel's dA after the launch (cuBLAS on a GPU), in float64."""
        T, B, H = self.T, self.B, self.H
        dA2 = dA.astype(np.float64).reshape(T * B, 4 * H)
        h_prevs = np.concatenate([self.h0[None], self.forward["hs"][:-1]]).astype(np.float64).reshape(T * B, H)
        return {"dxs": (dA2 @ self.Wx.astype(np.float64).T).reshape(T, B, WINDOW_INPUT),
                "dWx": self.xs.astype(np.float64).reshape(T * B, WINDOW_INPUT).T @ dA2,
                "dWh": h_prevs.T @ dA2, "db": dA2.sum(axis=0)}


def barrier(device, start: int) -> Guarded:
    """A grid barrier's state: no arrivals, generation ``start`` (any value: it counts modulo 2^32)."""
    return Guarded(device, "barrier", np.array([0, start], np.uint32), written=True)


def barrier_after(start: int, barriers: int) -> Expected:
    """The barrier's state after ``barriers`` grid barriers: no arrivals left, the generation moved on."""
    return Expected(np.array([0, (start + barriers) % 2**32]), exact=True)


def persistent_forward_case(device, shape: Shape, dtype, block: int, seed: int, *, units: int,
                            start: int = 0) -> KernelCase:
    """``lstm_persistent_forward``: a window of T steps in one cooperative launch, ``units`` hidden units per
    block; ``start`` is the barrier's generation before it."""
    window = Window(shape, dtype, seed)
    T, B, H, dtype = window.T, window.B, window.H, window.dtype
    args = (Guarded(device, "gates", window.xproj(), written=True), Guarded(device, "Wh", window.Wh),
            Guarded(device, "b", window.b), Guarded(device, "h0", window.h0), Guarded(device, "c0", window.c0),
            Guarded.output(device, "hs", (T, B, H), dtype), Guarded.output(device, "cs", (T, B, H), dtype),
            barrier(device, start), np.int32(T), np.int32(B), np.int32(H), np.int32(units))

    def reference():
        return {**{name: Expected(window.forward[name]) for name in ("gates", "hs", "cs")},
                "barrier": barrier_after(start, T - 1)}

    return KernelCase("lstm_persistent_forward", dtype, persistent_grid(H, units), block, args, reference,
                      WINDOW_TOLERANCE[dtype], shared_bytes=persistent_shared_bytes(H, units, dtype))


def persistent_backward_case(device, shape: Shape, dtype, block: int, seed: int, *, units: int, start: int = 0,
                             activations: tuple | None = None) -> KernelCase:
    """``lstm_persistent_backward``: the window's T steps back in one cooperative launch, on ``activations``
    (gates, cs) as a forward launch leaves them (default: the float64 reference's, rounded to ``dtype``).
    Besides its outputs (dA in gates, dh0, dc0), the gradients the host computes from dA are checked."""
    window = Window(shape, dtype, seed)
    T, B, H, dtype = window.T, window.B, window.H, window.dtype
    gates, cs = activations if activations is not None else (window.forward["gates"], window.forward["cs"])
    args = (Guarded(device, "gates", gates.astype(dtype), written=True), Guarded(device, "cs", cs.astype(dtype)),
            Guarded(device, "c0", window.c0), Guarded(device, "Wh", window.Wh), Guarded(device, "dhs", window.dhs),
            Guarded(device, "dhT", window.dhT), Guarded(device, "dcT", window.dcT),
            Guarded.output(device, "dh0", (B, H), dtype), Guarded.output(device, "dc0", (B, H), dtype),
            barrier(device, start), np.int32(T), np.int32(B), np.int32(H), np.int32(units))

    def reference():
        ref = window.backward
        return {"gates": Expected(ref["dA"]), "dh0": Expected(ref["dh0"]), "dc0": Expected(ref["dc0"]),
                "barrier": barrier_after(start, T),
                **{name: Expected(ref[name]) for name in ("dxs", "dWx", "dWh", "db")}}

    return KernelCase("lstm_persistent_backward", dtype, persistent_grid(H, units), block, args, reference,
                      WINDOW_TOLERANCE[dtype], shared_bytes=persistent_shared_bytes(H, units, dtype),
                      derive=lambda outputs: window.host_gradients(outputs["gates"]))


BUILDERS = {
    "lstm_cell_forward": cell_forward_case,
    "lstm_cell_backward": cell_backward_case,
    "lstm_persistent_forward": persistent_forward_case,
    "lstm_persistent_backward": persistent_backward_case,
    "softmax_xent": softmax_xent_case,
}
"""Every kernel the CuPy backend compiles -> its builder: ``builder(device, shape, dtype, block, seed)``; the
persistent ones also take ``units`` (hidden units per block), which sets their grid."""
