"""Plumbing the backends share: array and id checks, the buffer pool, the LSTM layer's cache, ``ceil_div``.

Each piece works on NumPy and CuPy arrays alike (and on whatever array module
a test injects), so a backend module only adds its arithmetic.
"""

from __future__ import annotations

import sys

import numpy as np


def ceil_div(a: int, b: int) -> int:
    """The smallest integer >= a / b (blocks that cover a items, b per block), for positive b."""
    return -(-a // b)


def check_array(name: str, a, shape: tuple | None, dtype, array_type) -> tuple:
    """a's shape, once a is a non-empty C-contiguous ``array_type`` of that dtype and shape.

    ``shape`` may hold None for "any extent" (or be None for any shape).
    Raises TypeError for the wrong type or dtype, ValueError for the rest,
    each naming ``name``.
    """
    if not isinstance(a, array_type):
        raise TypeError(f"{name} must be a {_type_name(array_type)}, got {_type_name(type(a))}")
    if a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype).name}, got {a.dtype}")
    found = tuple(a.shape)
    if shape is not None and (len(found) != len(shape)
                              or any(s is not None and s != n for s, n in zip(shape, found))):
        wanted = ", ".join("any" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "")
        raise ValueError(f"{name} has shape {found}, expected ({wanted})")
    if 0 in found:
        raise ValueError(f"{name} must not be empty, got shape {found}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    return found


def check_ids(name: str, ids, V: int, shape: tuple | None, array_type) -> tuple:
    """ids' shape, once ids is an int64 array as :func:`check_array` wants with every id in [0, V).

    An id outside raises ValueError naming it (the smallest, if one is
    negative, else the largest). On a device this is two small reductions.
    """
    found = check_array(name, ids, shape, np.int64, array_type)
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= V:
        raise ValueError(f"{name} holds ids outside [0, {V}): {low if low < 0 else high}")
    return found


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__name__}"


# ---------------------------------------------------------------- buffers

def _unheld_refcount() -> int:
    """What ``sys.getrefcount`` reports, inside :meth:`BufferPool.take`'s loop, for an array nothing else holds."""
    for array in [object()]:
        return sys.getrefcount(array)


_UNHELD = _unheld_refcount()


class BufferPool:
    """Buffers reused across calls: per (shape, dtype), the first one no one else holds.

    A buffer is free when only the pool refers to it, directly or through a
    view (a view holds its base, in CuPy as in NumPy), so arrays the caller
    still holds (results, caches) are never handed out again, while a
    training loop that drops each window's arrays gets the same buffers
    every window: no allocation (and no zero-filling by the OS) after the
    first, and on a GPU the same addresses every window.
    ``allocate(shape, dtype)`` makes a new uninitialised buffer.
    """

    def __init__(self, allocate=np.empty):
        self._allocate = allocate
        self._pools: dict[tuple, list] = {}

    def take(self, shape: tuple, dtype):
        """An uninitialised C-contiguous buffer that no one else holds."""
        pool = self._pools.setdefault((tuple(shape), np.dtype(dtype)), [])
        for array in pool:
            if sys.getrefcount(array) == _UNHELD:
                return array
        array = self._allocate(tuple(shape), np.dtype(dtype))
        pool.append(array)
        return array


# ------------------------------------------------------------ LSTM cache

class LstmCache:
    """What the backward pass needs from one layer's forward pass; the backward pass consumes it.

    The fast backends keep the gate activations in ``gates`` and turn them
    into the gate gradients in place, so a cache can go through backward once.
    Backends subclass it to keep more (slots of their own).
    """

    __slots__ = ("xs", "Wx", "Wh", "gates", "hs", "cs", "used")

    def __init__(self, xs, Wx, Wh, gates, hs, cs):
        self.xs, self.Wx, self.Wh = xs, Wx, Wh   # the layer's input (T,B,D) and weights
        self.gates = gates                       # (T,B,4H) activations i, f, g, o; da after backward
        self.hs, self.cs = hs, cs                # (T+1,B,H): h_{t-1}, c_{t-1} at index t
        self.used = False

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(T, B, D, H) of the layer."""
        T, B = self.gates.shape[:2]
        return T, B, self.Wx.shape[0], self.Wh.shape[0]

    @classmethod
    def check(cls, cache, owner: str) -> tuple[int, int, int, int]:
        """The layer's (T, B, D, H), once ``cache`` is an unused cache of this class (from ``owner``)."""
        if not isinstance(cache, cls):
            raise TypeError(f"cache must come from {owner}.lstm_forward(training=True), got {type(cache).__name__}")
        if cache.used:
            raise ValueError("this cache was already used by lstm_backward (which overwrites it)")
        return cache.shape
