"""The fast CPU backend: the reference's arithmetic, arranged around the BLAS and the cores.

On a CPU a training step is matrix products plus a little pointwise work, so
this backend makes the products as large and as few as the recurrence allows
and keeps everything else out of their way:

* Input projections are one product per layer and window (``X Wx`` for all T
  steps); only ``h_{t-1} Wh`` and, backwards, ``da_t Wh^T`` remain per step.
  The weight gradients and ``dxs`` are one product each over the whole window
  (``dA^T X``, ``dA^T H_prev``, ``dA Wx^T``): the forward pass stores h_{t-1}
  for every t in one (T+1,B,H) buffer, so H_prev is a contiguous slice.
* The layer fed by the embedding (``embedding_lstm_forward``) gets its input
  rows from E: ``X Wx`` is ``(E Wx)[x]``, ``X^T dA`` is ``E^T S`` with S the
  rows of dA summed per token, and the embedding's gradient (the rows of
  ``dA Wx^T`` summed per token) is ``S Wx^T``: three (T*B, D, 4H) products
  replaced by (V, D, 4H) ones, where that is less work (``2 V <= T B``).
* The gate math of a step is one Numba pass (:mod:`.kernels`) that reads
  the two products and writes the activations over the projection in place;
  backwards, one pass turns them into ``da`` in place and accumulates ``db``.
  Softmax, loss, argmax and the logits gradient are one pass as well.
* The per-step products (``h_{t-1} Wh``, ``da_t Wh^T``) take ~50 rows per
  lane, a shape the BLAS runs far below the core's peak, repacking the weight
  matrix on every call. With ``step_products="tiled"`` the matrix is packed
  once per window and a register-blocked Numba kernel
  (:mod:`.step_kernels`) runs each step's product; ``"blas"`` calls
  ``np.matmul``.
* The cores work in :class:`Lanes`: a layer's recurrence is split by batch
  columns (independent sequences, so lanes never wait for each other inside
  a window) and large products by rows, each lane with a single-threaded BLAS;
  or, with one lane, the caller's thread runs everything with the BLAS's own threads.
* Which per-step products and how many lanes is measured, not ruled: with
  ``"auto"`` (the default for both) the backend times the candidates at the
  workload's shapes the first time it runs (or when :meth:`CpuBackend.tune`
  is called) and keeps the fastest, remembered per machine
  (:mod:`ltexec.tuning`). On a Zen 4 the tiled kernel wins; on an Intel Xeon
  with two 512-bit FMA units OpenBLAS's own kernels beat it.
* Products write into preallocated buffers (``np.matmul(..., out=...)``),
  reused from a pool keyed by shape and dtype (:class:`~.common.BufferPool`),
  so a step allocates (and the OS zero-fills) no new memory after the first one.

float32 uses a rational tanh (a few ulp from libm's) so the gate loops
vectorize; float64 uses libm and matches the reference to rounding.
Every public entry point validates its arrays once, with the base class's
checks, so bad input raises ValueError/TypeError instead of reaching a kernel
that does not check.
"""

from __future__ import annotations

import ctypes
import functools
import os
import queue
import threading
import time

import numpy as np

from ltexec.backends.base import Backend
from ltexec.backends.common import BufferPool, LstmCache, ceil_div
from ltexec.machine import usable_cores
from ltexec.validation import check_choice, check_int

STEP_PRODUCTS = ("auto", "blas", "tiled")
"""How the recurrence's per-step products run: timed (auto), the BLAS, or the tiled kernel."""

TUNING_STEPS = 16
"""Most steps of the window the tuner times: enough that the per-step work weighs as in training (at 4 steps
the window-wide products weigh so much that one lane with the BLAS's threads looked as fast as two lanes,
and was 20% slower over 50 steps at the paper's size)."""

SETTLE_S = 0.1
"""Pause before timing a candidate with lanes after one without: OpenBLAS's idle threads spin for up to ~0.1 s
after its last multi-threaded product and would take the cores from the lanes."""

TILE_ROWS = 5
"""Rows of a tile of the tiled per-step product (5 x 64 or 5 x 80 floats: 20 or 25 AVX-512 registers)."""

MIN_LANE_ROWS = 32
"""Fewest batch columns per lane in the recurrence: thinner per-step products lose too much speed."""

MIN_SPLIT_FLOPS = 2e7
"""Smallest product worth splitting between lanes (~0.1 ms on one core; a hand-off costs ~0.02 ms)."""

ROW_ALIGN = 8
"""Lanes split rows at multiples of this where they can: OpenBLAS's float32 kernels work in blocks
of 16 rows, and on one AVX2 core a (50,128)x(128,512) product takes 90 us, a (48,128)x(128,512) one 81 us."""


@functools.cache
def _openblas_thread_setter():
    """OpenBLAS's ``openblas_set_num_threads_local`` (sets the thread count, returns the old one), or None.

    Despite its name, OpenBLAS's pthreads builds (NumPy's wheels) apply it to
    the whole process; builds on OpenMP apply it to the calling thread.
    :meth:`Lanes.run` is written to be right under either reading.
    """
    try:
        if "openblas" not in np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]:
            return None                            # NumPy multiplies with another BLAS
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.rsplit("/", 1)[-1].lower()}
    except (OSError, KeyError, TypeError):         # no /proc (not Linux) or an older NumPy
        return None
    numpy_dir = os.path.dirname(os.path.dirname(np.__file__))
    for path in sorted(paths, key=lambda p: not p.startswith(numpy_dir)):   # NumPy's own BLAS first
        try:
            setter = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        setter.argtypes, setter.restype = [ctypes.c_int], ctypes.c_int
        return setter
    return None


class Lanes:
    """Threads that each take one block of a job: a range of batch columns, rows or work.

    A multi-threaded BLAS synchronises its threads at the end of every
    product; the recurrence makes hundreds of small products per step, and
    whenever the OS preempts one BLAS thread (another process wants the core)
    every other one waits. Lanes synchronise once per job instead: each lane
    runs its whole block with a single-threaded BLAS, so a preempted lane
    delays only the final join. The Numba kernels release the GIL and so
    does NumPy inside a product, so the lanes run in parallel.

    While a job runs, the BLAS is set to one thread (OpenBLAS; the previous
    count is restored when the job ends, so other NumPy code keeps its
    threads). Without OpenBLAS's setter there is a single lane, run on the
    calling thread with the BLAS's own threads; so is ``count=1``. The
    calling thread is lane 0; the other lanes are threads shared by the
    process, so jobs are not meant to be started from several threads at once
    (nor from inside a job).

    ``count`` is the most lanes (default: one per usable core). It is an
    upper bound: where the BLAS cannot be set to one thread, any count gives
    one lane (earlier versions raised ``ValueError`` for more than one there;
    a cap is what callers such as a sweep's workers mean by it).
    """

    _threads: list[_LaneThread] = []
    """The process's lane threads (lanes 1, 2, ...; lane 0 is the caller), started as needed."""

    def __init__(self, count: int | None = None):
        self._set_blas_threads = _openblas_thread_setter()
        if count is None:
            count = usable_cores()
        if count < 1:
            raise ValueError(f"lanes must be at least 1, got {count}")
        self.count = count if self._set_blas_threads else 1

    def blocks(self, n: int, minimum: int = 1) -> list[tuple[int, int]]:
        """Split range(n) into at most ``count`` near-equal ranges [lo, hi) of at least ``minimum``.

        Ranges of 32 or more rows get inner edges on multiples of :data:`ROW_ALIGN`
        (moving an edge by at most 4 rows) where every range keeps ``minimum``.
        """
        k = max(1, min(self.count, n // minimum))
        edges = [n * j // k for j in range(k + 1)]
        if n // k >= 4 * ROW_ALIGN:
            aligned = [0] + [round(e / ROW_ALIGN) * ROW_ALIGN for e in edges[1:-1]] + [n]
            if all(hi - lo >= minimum for lo, hi in zip(aligned[:-1], aligned[1:])):
                edges = aligned
        return list(zip(edges[:-1], edges[1:]))

    def run(self, job, blocks: list[tuple[int, int]]) -> None:
        """job(lane, lo, hi) for every block at once; returns when all are done (exceptions re-raised)."""
        if self.count == 1:
            for lane, (lo, hi) in enumerate(blocks):
                job(lane, lo, hi)
            return
        previous = self._set_blas_threads(1)
        try:
            others = self._lane_threads(len(blocks) - 1)
            for thread, (lane, (lo, hi)) in zip(others, enumerate(blocks[1:], start=1)):
                thread.inbox.put((job, lane, lo, hi))
            try:
                job(0, *blocks[0])                     # the calling thread is lane 0
            finally:
                errors = [thread.outbox.get() for thread in others]   # never leave a lane running
            for error in errors:
                if error is not None:
                    raise error
        finally:
            self._set_blas_threads(previous)

    def _lane_threads(self, n: int) -> list[_LaneThread]:
        while len(Lanes._threads) < n:
            Lanes._threads.append(_LaneThread(f"ltexec-lane-{len(Lanes._threads) + 1}", self._set_blas_threads))
        return Lanes._threads[:n]

    def matmul(self, *products) -> None:
        """``out = a @ b`` for every ``(a, b, out)`` given, all at once.

        The products' rows, taken in the order given, are dealt out to the
        lanes in contiguous shares of equal work, so a lane computes whole
        products where it can and only products at share boundaries are
        split, by rows of ``a`` (order them so that those split well), at
        multiples of :data:`ROW_ALIGN` rows.
        """
        row_flops = [2 * a.shape[1] * b.shape[1] for a, b, _ in products]
        starts = np.cumsum([0] + [f * a.shape[0] for f, (a, _, _) in zip(row_flops, products)])
        total = int(starts[-1])
        lanes = self.count if total >= MIN_SPLIT_FLOPS else 1
        cuts = [total * k // lanes for k in range(lanes + 1)]

        def row(cut, a, f, start):                     # the row of a where the share boundary cut falls
            r, rows = (cut - start) / f, a.shape[0]
            if r <= 0 or r >= rows:
                return 0 if r <= 0 else rows
            return min(round(r / ROW_ALIGN) * ROW_ALIGN, rows)

        def share(lane, lo, hi):                       # the rows whose work lies in [lo, hi)
            for (a, b, out), f, start in zip(products, row_flops, starts):
                r0, r1 = row(lo, a, f, start), row(hi, a, f, start)
                if r0 < r1:
                    np.matmul(a[r0:r1], b, out=out[r0:r1])

        self.run(share, list(zip(cuts[:-1], cuts[1:])))


class _LaneThread:
    """A daemon thread that runs each ``(job, lane, lo, hi)`` put in its inbox with a one-thread BLAS.

    It answers every job in its outbox: None, or the exception the job raised.
    Two queues and no futures keep a hand-off to ~6 us each way.
    """

    def __init__(self, name: str, set_blas_threads):
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._set_blas_threads = set_blas_threads
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def _serve(self) -> None:
        while True:
            job, lane, lo, hi = self.inbox.get()
            try:
                self._set_blas_threads(1)     # for OpenMP builds, where the count is per thread
                job(lane, lo, hi)
            except BaseException as error:    # handed to the caller, which re-raises it
                self.outbox.put(error)
            else:
                self.outbox.put(None)


_NO_IDS = np.zeros((0, 0), np.int64)
"""The kernel's ids for a layer whose ``x_t Wx`` is already in the gates buffer."""


class CpuLstmCache(LstmCache):
    """:class:`~.common.LstmCache` plus tanh(c_t), and E and the ids for a layer run on ``E Wx``."""

    __slots__ = ("tanh_c", "E", "x")

    def __init__(self, xs, Wx, Wh, gates, hs, cs, tanh_c, E=None, x=None):
        super().__init__(xs, Wx, Wh, gates, hs, cs)   # xs is None for a layer run on E Wx
        self.tanh_c = tanh_c                          # (T,B,H) tanh(c_t)
        self.E, self.x = E, x                         # copies of E (V,D) and the ids (T,B), or None


def per_step_product(W, how: str, take):
    """``step(a, out)``: ``out = a @ W`` for the ~50-row blocks of one lane and step, W fixed for the window.

    ``"blas"``: ``np.matmul`` on W, copied to be contiguous if it is not (a
    transposed view: the product runs faster on a contiguous copy).
    ``"tiled"``: W packed once into column panels for the register-blocked kernel.
    Copies and panels go into buffers from ``take(shape, dtype)`` (the backend's pool).
    """
    n = W.shape[1]
    if how == "blas":
        if not W.flags.c_contiguous:
            contiguous = take(W.shape, W.dtype)
            np.copyto(contiguous, W)
            W = contiguous
        return lambda a, out: np.matmul(a, W, out=out)
    from ltexec.backends.cpu.step_kernels import pack_columns, step_product
    width = 80 if n % 80 == 0 else 64                      # the faster tile where it leaves no padded panel
    panels = pack_columns(W, width, take((ceil_div(n, width), W.shape[0], width), W.dtype))
    product = step_product(TILE_ROWS, width)
    return lambda a, out: product(a, panels, out, n)


class CpuBackend(Backend):
    """NumPy arrays, BLAS products in lanes, Numba pointwise kernels.

    ``threads``: the most threads that share the work, i.e. the most lanes
    (default: one per usable core where the BLAS allows it, see
    :class:`Lanes`). ``lanes``: ``"auto"`` (default) or a count from 1 to
    that most; ``self.lanes`` is the resulting :class:`Lanes`.
    ``step_products``: ``"auto"`` (default), ``"blas"`` or ``"tiled"``, how
    the recurrence's per-step products run (the module docstring says why).
    An ``"auto"`` option is fixed by timing at the first layer's shapes, or
    by :meth:`tune` (``self.tuning`` says how; ``self.choices`` is what was
    fixed); a given one is never timed.

    ``embedding_lstm_forward`` computes with ``E Wx`` and ``E^T S`` where that
    is less work than with X; its cache keeps copies of E and x, so the
    backward pass computes with exactly the ``E[x]`` the forward pass saw.
    """

    name = "cpu"
    xp = np

    def __init__(self, dtype=np.float32, *, threads: int | None = None, step_products: str = "auto",
                 lanes: int | str = "auto"):
        super().__init__(dtype, threads=threads)
        self.step_products = check_choice("step_products", step_products, STEP_PRODUCTS)
        self.lanes = Lanes(self.threads)                 # the most lanes, until a choice says fewer
        self._most_lanes = self.lanes.count
        if lanes != "auto":
            most = self.threads or self.lanes.count
            if isinstance(lanes, str) and not lanes.strip().isdigit():
                raise ValueError(f"lanes must be 'auto' or an integer in 1..{most}, got {lanes!r}")
            self.lanes = Lanes(check_int("lanes", lanes, minimum=1, maximum=most))
        self._products_given, self._lanes_given = step_products != "auto", lanes != "auto"
        self.tuning = None
        from ltexec.backends.cpu import kernels as cpu_kernels   # compiles (or loads cached) kernels on first use
        self._k = cpu_kernels
        self._pool = BufferPool()

    def device_name(self) -> str:
        return f"{super().device_name()}, {self.lanes.count} lane{'s' if self.lanes.count > 1 else ''}"

    @property
    def choices(self) -> dict:
        if self.tuning is not None:
            return dict(self.tuning.choice)
        fixed = {}
        if self._products_given:
            fixed["step_products"] = self.step_products
        if self._lanes_given:
            fixed["lanes"] = self.lanes.count
        return fixed

    def tune(self, window: int, batch: int, hidden: int, refresh: bool = False):
        """Time every combination of the ``"auto"`` options on one layer at these shapes; keep the fastest.

        The candidates: per-step products blas and tiled; lanes the most and 1.
        Each times one layer's forward and backward over up to
        :data:`TUNING_STEPS` steps on random data.
        """
        if self.tuning is not None and not refresh:
            return self.tuning
        from ltexec.tuning import choose
        window = check_int("window", window, minimum=1)
        B, H = check_int("batch", batch, minimum=1), check_int("hidden", hidden, minimum=1)
        T = min(window, TUNING_STEPS)
        products = [self.step_products] if self._products_given else ["blas", "tiled"]
        lanes = [self.lanes.count] if self._lanes_given else sorted({self._most_lanes, 1}, reverse=True)
        # Lanes first, then one lane: a multi-threaded BLAS's idle threads spin after it (SETTLE_S).
        candidates = [{"step_products": p, "lanes": n} for n in lanes for p in products]
        workload = {"backend": self.name, "dtype": self.dtype.name, "window": T, "batch": B, "hidden": H,
                    "threads": self.threads}
        describe = f"one layer, {T} steps, batch {B}, {H} units, {self.dtype.name}"
        self.tuning = choose(candidates, self._tuning_run(T, B, H), workload, describe, refresh=refresh)
        self.step_products = self.tuning.choice["step_products"]
        self.lanes = Lanes(self.tuning.choice["lanes"])
        return self.tuning

    def _tuning_run(self, T: int, B: int, H: int):
        """``run(choice)``: one layer's forward and backward on a backend with those options, random data."""
        rng = np.random.default_rng(0)

        def draw(*shape):
            return (0.1 * rng.standard_normal(shape)).astype(self.dtype)

        xs, h0, c0, Wx, Wh, b, dhs = draw(T, B, H), draw(B, H), draw(B, H), draw(H, 4 * H), draw(H, 4 * H), \
            draw(4 * H), draw(T, B, H)
        dh, backends, previous = np.empty_like(dhs), {}, [None]

        def run(choice):
            key = tuple(choice.items())
            if key not in backends:
                backends[key] = CpuBackend(self.dtype, threads=self.threads, **choice)
            backend = backends[key]
            if previous[0] == 1 and backend.lanes.count > 1:
                time.sleep(SETTLE_S)
            previous[0] = backend.lanes.count
            _, hT, cT, cache = backend.lstm_forward(xs, h0, c0, Wx, Wh, b, True)
            np.copyto(dh, dhs)                             # the backward pass may overwrite its dhs
            backend.lstm_backward(dh, hT, cT, cache)

        return run

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            import numba  # noqa: F401
        except ImportError as exc:
            return f"needs numba ({exc})"
        return None

    # ------------------------------------------------------------ LSTM layer

    def lstm_forward(self, xs, h0, c0, Wx, Wh, b, training: bool):
        T, B, D, H = self._check_lstm_forward(xs, h0, c0, Wx, Wh, b)
        self.tune(T, B, H)
        return self._lstm_forward(xs, h0, c0, Wx, Wh, b, training, T, B, D, H)

    def embedding_lstm_forward(self, E, x, h0, c0, Wx, Wh, b, training: bool):
        """On ``E Wx`` where that is less work than a lookup and ``X Wx`` (2V <= T*B), else the same as those."""
        x, T, B, V, D, H = self._check_embedding_lstm_forward(E, x, h0, c0, Wx, Wh, b)
        self.tune(T, B, H)
        if 2 * V > T * B:
            xs = self._gather(E, x, D)
            return self._lstm_forward(xs, h0, c0, Wx, Wh, b, training, T, B, D, H)
        E, x = E.copy(), x.copy()                            # what the backward pass must see, whatever E becomes
        table = self._pool.take((V, 4 * H), self.dtype)
        self.lanes.matmul((E, Wx, table))                    # x_t Wx = (E Wx)[x_t], read by the kernel
        gates = self._pool.take((T, B, 4 * H), self.dtype)
        return self._recurrence(gates, h0, c0, Wx, Wh, b, training, table=table, E=E, x=x)

    def _lstm_forward(self, xs, h0, c0, Wx, Wh, b, training: bool, T: int, B: int, D: int, H: int):
        gates = self._pool.take((T, B, 4 * H), self.dtype)   # x_t Wx, then activations i, f, g, o
        self.lanes.matmul((xs.reshape(T * B, D), Wx, gates.reshape(T * B, 4 * H)))
        return self._recurrence(gates, h0, c0, Wx, Wh, b, training, xs=xs)

    def _recurrence(self, gates, h0, c0, Wx, Wh, b, training: bool, xs=None, table=None, E=None, x=None):
        """The layer's steps: ``(hs, hT, cT, cache)``.

        gates (T,B,4H) holds x_t Wx on entry, or, given the ids x, the kernel
        reads x_t Wx as ``table[x_t]`` (table = E Wx).
        """
        T, B, H = gates.shape[0], gates.shape[1], Wh.shape[0]
        table, ids = (Wx, _NO_IDS) if x is None else (table, x)
        take, dt, cell_forward = self._pool.take, self.dtype, self._k.cell_forward
        hs = take((T + 1, B, H), dt)                          # hs[t] = h_{t-1}
        cs = take((T + 1, B, H), dt)                          # cs[t] = c_{t-1}
        tanh_c = take((T, B, H), dt)                          # tanh(c_t)
        rec = take((B, 4 * H), dt)                            # h_{t-1} Wh
        hs[0], cs[0] = h0, c0
        times_Wh = per_step_product(Wh, self.step_products, take)

        def recurrence(lane, r0, r1):                         # columns r0..r1-1 over the window
            for t in range(T):
                times_Wh(hs[t, r0:r1], rec[r0:r1])
                cell_forward(gates, rec, b, cs, tanh_c, hs, t, r0, r1, table, ids)

        self.lanes.run(recurrence, self.lanes.blocks(B, MIN_LANE_ROWS))
        cache = CpuLstmCache(xs, Wx, Wh, gates, hs, cs, tanh_c, E, x) if training else None
        return hs[1:], hs[T].copy(), cs[T].copy(), cache

    def lstm_backward(self, dhs, dhT, dcT, cache):
        T, B, _, H = CpuLstmCache.check(cache, type(self).__name__)
        self._check_lstm_backward(dhs, dhT, dcT, T, B, H)
        return self._backward(dhs, dhT, dcT, cache, embedding_grad=False)

    def embedding_lstm_backward(self, dhs, dhT, dcT, cache, x, V: int):
        """dE = S Wx^T without dxs when the layer ran on E Wx with these ids (else the two-step default)."""
        on_table = isinstance(cache, CpuLstmCache) and cache.E is not None and len(cache.E) == V
        if not (on_table and isinstance(x, np.ndarray) and x.dtype == np.int64 and np.array_equal(cache.x, x)):
            return super().embedding_lstm_backward(dhs, dhT, dcT, cache, x, V)   # checks x itself
        T, B, _, H = CpuLstmCache.check(cache, type(self).__name__)            # x equals the checked ids
        self._check_lstm_backward(dhs, dhT, dcT, T, B, H)
        return self._backward(dhs, dhT, dcT, cache, embedding_grad=True)

    def _backward(self, dhs, dhT, dcT, cache, embedding_grad: bool):
        """BPTT of one layer; returns dE (embedding_grad, a cache with E) or dxs first."""
        T, B, D, H = cache.shape
        Wx, Wh, gates, cs, tanh_c = cache.Wx, cache.Wh, cache.gates, cache.cs, cache.tanh_c
        cache.used = True                                     # gates become da below
        take, dt, cell_backward = self._pool.take, self.dtype, self._k.cell_backward
        times_WhT = per_step_product(Wh.T, self.step_products, take)
        dh_next = take((B, H), dt)                            # h_t's gradient from step t+1
        dc = take((B, H), dt)                                 # c_t's gradient from step t+1
        dh_next[...], dc[...] = dhT, dcT
        blocks = self.lanes.blocks(B, MIN_LANE_ROWS)
        lane_db = np.zeros((len(blocks), 4 * H), np.float64)  # each lane's sum of da

        def recurrence(lane, r0, r1):                         # columns r0..r1-1, last step first
            for t in reversed(range(T)):
                cell_backward(gates, dhs, dh_next, dc, cs, tanh_c, lane_db[lane], t, r0, r1)
                times_WhT(gates[t, r0:r1], dh_next[r0:r1])            # da_t Wh^T

        self.lanes.run(recurrence, blocks)
        dA = gates.reshape(T * B, 4 * H)                       # every step's da
        dWx, dWh = take((D, 4 * H), dt), take((H, 4 * H), dt)
        if cache.E is not None:                               # dWx^T = S^T E, S: rows of dA summed per token
            E = cache.E
            S = self._sum_rows_by_id(dA, cache.x.reshape(-1), len(E))   # (V,4H)
            input_grad = (S.T, E, dWx.T)
        else:
            input_grad = (dA.T, cache.xs.reshape(T * B, D), dWx.T)     # dWx^T = dA^T X
        if embedding_grad:                                    # dE = S Wx^T: the rows of dxs summed per token
            grad_in = take((len(E), D), dt)
            input_side = (S, Wx.T, grad_in)
        else:                                                 # dxs = dA Wx^T (split best by rows)
            grad_in = take((T, B, D), dt)
            input_side = (dA, Wx.T, grad_in.reshape(T * B, D))
        self.lanes.matmul(input_grad, input_side,
                          (dA.T, cache.hs[:T].reshape(T * B, H), dWh.T))   # dWh^T = dA^T H_prev
        return grad_in, dWx, dWh, lane_db.sum(axis=0).astype(dt), dh_next, dc

    # ----------------------------------------------------- embedding, output

    def embedding_forward(self, E, x):
        x, _, _, _, D = self._check_embedding_forward(E, x)
        return self._gather(E, x, D)

    def _gather(self, E, x, D: int):
        """E[x] in a pool buffer (ids already checked)."""
        return np.take(E, x, axis=0, out=self._pool.take(x.shape + (D,), self.dtype), mode="clip")

    def embedding_backward(self, dxs, x, V: int):
        x, T, B, D = self._check_embedding_backward(dxs, x, V)
        return self._sum_rows_by_id(dxs.reshape(T * B, D), x.reshape(T * B), V)

    def _sum_rows_by_id(self, src, ids, V: int):
        """(V,K): the rows of src (N,K) summed per id, the columns shared out between lanes."""
        out = self._pool.take((V, src.shape[1]), self.dtype)
        kernel = self._k.sum_rows_by_id
        self.lanes.run(lambda lane, c0, c1: kernel(src, ids, out, c0, c1), self.lanes.blocks(src.shape[1], 64))
        return out

    def linear_forward(self, hs, W, b):
        T, B, H, V = self._check_linear(hs, W, b=b)
        logits = self._pool.take((T * B, V), self.dtype)
        self.lanes.matmul((hs.reshape(T * B, H), W, logits))
        logits += b
        return logits.reshape(T, B, V)

    def linear_backward(self, dlogits, hs, W):
        T, B, H, V = self._check_linear(hs, W, dlogits=dlogits)
        take, dt = self._pool.take, self.dtype
        dlogits2 = dlogits.reshape(T * B, V)
        dhs, dW = take((T * B, H), dt), take((H, V), dt)
        self.lanes.matmul((hs.reshape(T * B, H).T, dlogits2, dW), (dlogits2, W.T, dhs))
        dhs = dhs.reshape(T, B, H)
        db = take((V,), dt)
        self._k.column_sums(dlogits2, db)
        return dhs, dW, db

    def softmax_xent(self, logits, y, mask):
        y, T, B, V = self._check_softmax_xent(logits, y, mask)
        dlogits = self._pool.take((T, B, V), self.dtype)
        blocks = self.lanes.blocks(T * B, 256)
        sums = [None] * len(blocks)                           # each lane's (loss, correct)
        kernel, args = self._k.softmax_xent, (logits.reshape(T * B, V), y.reshape(T * B),
                                              mask.reshape(T * B), dlogits.reshape(T * B, V))

        def job(lane, lo, hi):
            sums[lane] = kernel(*args, lo, hi)

        self.lanes.run(job, blocks)
        return np.float64(sum(loss for loss, _ in sums)), dlogits, np.int64(sum(correct for _, correct in sums))

    # ------------------------------------------------------------- optimizer

    def _global_norm(self, grads: dict):
        return np.sqrt(sum(self._k.sum_of_squares(g.reshape(-1)) for g in grads.values()))

    def clipped_sgd_update_(self, params: dict, grads: dict, velocity, lr: float, momentum: float, clip: float):
        """The norm is on the host already, so the skip and the clip are plain branches."""
        self._check_sgd_update(params, grads, velocity, momentum)
        norm = self._global_norm(grads)
        if not np.isfinite(norm):
            return norm
        if norm > clip:
            factor = float(clip / norm)                       # a Python float: g keeps its dtype's arithmetic
            for g in grads.values():
                g *= factor
        for name, p in params.items():
            if momentum:
                self._k.sgd_momentum_update(p.reshape(-1), grads[name].reshape(-1), velocity[name].reshape(-1),
                                            lr, momentum)
            else:
                self._k.sgd_update(p.reshape(-1), grads[name].reshape(-1), lr)
        return norm
