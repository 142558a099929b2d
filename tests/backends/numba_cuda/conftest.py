"""The ``test_numba_cuda_device_*`` files run on the CUDA simulator or on a GPU, never on anything else.

``test_numba_cuda_kernels.py`` (here, in the main suite) runs them and the
conformance suite (for this backend) in a subprocess with
``NUMBA_ENABLE_CUDASIM=1``: the simulator has to be chosen before
``numba.cuda`` is first imported, and the rest of the suite must not see a
simulated device (``auto`` would then have to tell it apart). On a machine
with a GPU, numba-cuda and CuPy, the main suite collects this folder too and
the same tests run on the device with CuPy arrays. Anywhere else nothing
here is collected. Run by hand:
``NUMBA_ENABLE_CUDASIM=1 pytest tests/backends/numba_cuda/test_numba_cuda_device_*.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def _mode() -> str | None:
    """'simulator', 'device', or None when neither can run the kernels here."""
    try:
        from ltexec.backends.numba_cuda.backend import NumbaCudaBackend, _simulator_active
    except ImportError:
        return None
    if _simulator_active():
        return "simulator"
    return "device" if NumbaCudaBackend.unavailable_reason() is None else None


DEVICE_TESTS = "test_numba_cuda_device_*.py"
"""The files that need the simulator or a device."""
MODE = _mode()
if MODE is None:
    collect_ignore_glob = [DEVICE_TESTS]


def pytest_collection_modifyitems(config, items):
    """On a device, the tests of this folder carry the ``gpu`` marker (on the simulator they do not)."""
    if MODE == "device":
        here = Path(__file__).parent
        for item in items:
            if Path(item.path).parent == here and Path(item.path).match(DEVICE_TESTS):
                item.add_marker(pytest.mark.gpu)


@pytest.fixture(scope="session")
def make_backend():
    """``make_backend(dtype, gemm="tiled", persistent=None)``: the backend on the simulator or on the device."""
    from ltexec.backends.numba_cuda.backend import NumbaCudaBackend

    def make(dtype, gemm="tiled", persistent=None):
        return NumbaCudaBackend(dtype, gemm=gemm, persistent=persistent, simulator=MODE == "simulator")

    return make

