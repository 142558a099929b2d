"""The backends the conformance suite runs, each as a maker: how to build it here, or why it cannot run.

One :class:`Maker` per backend and kind of machine: the two CPU backends
(``cpu`` as the tuner sets it up here, and with each of the tuner's
candidates forced: two lanes, one lane, each way of running its per-step
products), ``cupy`` on the C++ emulation of its CUDA
kernels (tests/cuda_emulation, needs g++; persistent and per-step
recurrence), ``numba_cuda`` on numba's CUDA simulator (per-step and
persistent recurrence), and the real ``cupy`` and ``numba_cuda`` on a CUDA
device. A maker that cannot run here is skipped with its reason.

The simulator has to be chosen before ``numba.cuda`` is first imported, so
it runs in a subprocess of its own (tests/backends/numba_cuda/test_numba_cuda_kernels.py runs
this suite there with ``NUMBA_ENABLE_CUDASIM=1``); in that process the
simulator's makers are the only ones, everywhere else they are skipped.

Tolerances are each backend's own, as ``max|x - ref| / max|ref|`` per array
against the float64 reference on the same (rounded) numbers: float64 1e-12
everywhere; float32 1e-4 for ``cpu`` (a rational tanh and another summation
order move the last bits), 2e-5 for ``cupy`` (a window of several steps),
1e-5 for ``numba_cuda`` and for ``numpy`` itself.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import pytest

from ltexec.backends.numba_cuda.backend import _simulator_active


@dataclass(frozen=True)
class Maker:
    """One backend on one kind of machine, for the conformance suite."""

    id: str
    """The test id; it starts with the backend's registry name (``-k numba_cuda`` selects those)."""
    build: Callable
    """``build(dtype)`` -> a fresh backend."""
    float32_tolerance: float
    skip_reason: Callable[[], str | None] = lambda: None
    examples: int = 20
    """Drawn examples per property test (few where every CUDA thread is a host thread)."""
    small: bool = False
    """Only small shapes (the simulator runs every CUDA thread as a Python thread)."""
    consumes_cache: bool = True
    """Its lstm_backward turns the cache's activations into gradients, so a cache is good for one backward."""
    model_cases: tuple = field(default=((2, 9, 5, 7), (1, 3, 1, 1), (3, 16, 4, 3), (2, 8, 70, 3)))
    """(layers, hidden, batch, window) of the whole-model checks."""
    gpu: bool = False
    """It runs on a CUDA device: its tests carry the ``gpu`` marker."""

    def tolerance(self, dtype) -> float:
        return self.float32_tolerance if np.dtype(dtype) == np.float32 else 1e-12

    def backend(self, dtype):
        """A fresh backend whose new buffers (pooled or from its array module) start as NaN."""
        reason = self.skip_reason()
        if reason is not None:
            pytest.skip(reason)
        backend = self.build(dtype)
        backend.xp = PoisonedEmpty(backend.xp)
        return backend


class PoisonedEmpty:
    """An array module, except that ``empty`` hands out arrays full of NaN (integers: their minimum)."""

    def __init__(self, xp):
        self.xp = xp

    def __getattr__(self, name):
        return getattr(self.xp, name)

    def empty(self, shape, dtype):
        dtype = np.dtype(dtype)
        return self.xp.full(shape, np.nan if dtype.kind == "f" else np.iinfo(dtype).min, dtype)


# ------------------------------------------------------------------ the makers

def _numpy(dtype):
    from ltexec.backends.numpy.backend import NumpyBackend
    return NumpyBackend(dtype)


def _cpu(threads=None, step_products="auto", lanes="auto"):
    def build(dtype):
        from ltexec.backends.cpu.backend import CpuBackend
        return CpuBackend(dtype, threads=threads, step_products=step_products, lanes=lanes)
    return build


def _cpu_tuned(dtype):
    """The default ``cpu`` backend, its options fixed by the tuner once (at a small workload) before any
    example, so that every example runs one path and the suite's call counts see no tuning runs."""
    from ltexec.backends.cpu.backend import CpuBackend
    backend = CpuBackend(dtype)
    backend.tune(window=4, batch=8, hidden=8)
    return backend


def _cpu_reason() -> str | None:
    from ltexec.backends.cpu.backend import CpuBackend
    return CpuBackend.unavailable_reason()


def _two_lanes_reason() -> str | None:
    from ltexec.backends.cpu.backend import Lanes
    return _cpu_reason() or (None if Lanes(2).count == 2 else
                             "one lane only: the BLAS cannot be set to one thread (not OpenBLAS)")


def _emulated_cupy(persistent: bool):
    def build(dtype):
        import cuda_emulation
        from ltexec.backends.cupy.backend import CupyBackend
        return CupyBackend(dtype, persistent=persistent, device=cuda_emulation.EmulatedDevice())
    return build


def _gxx_reason() -> str | None:
    import cuda_emulation
    return cuda_emulation.gxx_missing_reason()


def _cupy_device(persistent: bool | None):
    def build(dtype):
        from ltexec.backends.cupy.backend import CupyBackend
        return CupyBackend(dtype, persistent=persistent)
    return build


def _numba_cuda(simulator: bool, gemm: str = "tiled", persistent: bool | None = None):
    def build(dtype):
        from ltexec.backends.numba_cuda.backend import NumbaCudaBackend
        return NumbaCudaBackend(dtype, gemm=gemm, persistent=persistent, simulator=simulator)
    return build


def _device_reason(name: str) -> Callable[[], str | None]:
    @functools.cache
    def reason() -> str | None:
        from ltexec.backends import _unavailable_reason
        why = _unavailable_reason(name)
        return None if why is None else f"no {name} device here: {why}"
    return reason


def _simulator_reason() -> str | None:
    return ("runs on numba's CUDA simulator, in the subprocess of tests/backends/numba_cuda/test_numba_cuda_kernels.py "
            "(NUMBA_ENABLE_CUDASIM=1)")


SIMULATOR = Maker("numba_cuda-simulator", _numba_cuda(simulator=True, persistent=False), 1e-5, examples=2,
                  small=True, model_cases=((2, 4, 2, 2),))
SIMULATORS = [SIMULATOR, replace(SIMULATOR, id="numba_cuda-simulator-persistent",
                                             build=_numba_cuda(simulator=True, persistent=True))]
"""Per-step and persistent recurrence; the simulator plans for one SM, so one block covers all units."""

MAKERS = SIMULATORS if _simulator_active() else [
    Maker("numpy", _numpy, 1e-5, examples=10, consumes_cache=False),
    Maker("cpu", _cpu_tuned, 1e-4, _cpu_reason),
    Maker("cpu-blas-2lanes", _cpu(threads=2, step_products="blas", lanes=2), 1e-4, _two_lanes_reason, examples=5),
    Maker("cpu-tiled-2lanes", _cpu(threads=2, step_products="tiled", lanes=2), 1e-4, _two_lanes_reason,
          examples=5),
    Maker("cpu-blas-1lane", _cpu(step_products="blas", lanes=1), 1e-4, _cpu_reason, examples=5),
    Maker("cpu-tiled-1lane", _cpu(step_products="tiled", lanes=1), 1e-4, _cpu_reason, examples=5),
    Maker("cupy-emulated-persistent", _emulated_cupy(persistent=True), 2e-5, _gxx_reason, examples=5,
          model_cases=((2, 9, 5, 7), (1, 3, 1, 1))),
    Maker("cupy-emulated-per-step", _emulated_cupy(persistent=False), 2e-5, _gxx_reason, examples=5,
          model_cases=((2, 9, 5, 7), (1, 3, 1, 1))),
    *(replace(maker, skip_reason=_simulator_reason) for maker in SIMULATORS),
    Maker("cupy-device", _cupy_device(persistent=None), 2e-5, _device_reason("cupy"), gpu=True),
    Maker("cupy-device-per-step", _cupy_device(persistent=False), 2e-5, _device_reason("cupy"), gpu=True),
    Maker("numba_cuda-device", _numba_cuda(simulator=False), 1e-5, _device_reason("numba_cuda"), gpu=True),
    Maker("numba_cuda-device-per-step", _numba_cuda(simulator=False, persistent=False), 1e-5,
          _device_reason("numba_cuda"), gpu=True),
    Maker("numba_cuda-device-cublas", _numba_cuda(simulator=False, gemm="cublas"), 1e-5,
          _device_reason("numba_cuda"), gpu=True),
]


def pytest_generate_tests(metafunc):
    if "maker" in metafunc.fixturenames:
        makers = device_examples(MAKERS, metafunc.config.getoption("--device-examples"))
        metafunc.parametrize("maker", [pytest.param(m, id=m.id, marks=[pytest.mark.gpu] if m.gpu else [])
                                       for m in makers])


def device_examples(makers, most: int | None) -> list:
    """``makers`` with the GPU ones drawing at most ``most`` examples per property test (None: their own count)."""
    if most is not None and most < 1:
        raise pytest.UsageError(f"--device-examples must be at least 1, got {most}")
    return [replace(m, examples=min(m.examples, most)) if m.gpu and most is not None else m
            for m in makers]
