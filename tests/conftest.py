"""Test options (``--gradcheck`` turns on the finite-difference gradient checks) and shared fixtures.

The markers (``gradcheck``, ``gpu``) are registered in pyproject.toml, where
``--strict-markers`` makes any other marker an error.
"""

import os
import tempfile
import types

import pytest

# The tuner remembers its choices in a file in the user's cache folder; the tests (and the processes they
# start, which inherit the environment) keep theirs in a folder of their own instead.
os.environ["LTEXEC_TUNE_CACHE"] = os.path.join(tempfile.mkdtemp(prefix="ltexec-tests-"), "tuning.json")


def pytest_addoption(parser):
    parser.addoption("--gradcheck", action="store_true", default=False,
                     help="also run the float64 finite-difference gradient checks (slow)")
    parser.addoption("--device-examples", type=int, default=None, metavar="N",
                     help="draw at most N examples per property test for the conformance suite's GPU makers "
                          "(benchmarks/gpu_check.py passes this to fit its time budget)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--gradcheck"):
        return
    skip = pytest.mark.skip(reason="finite-difference gradient check: run with pytest --gradcheck")
    for item in items:
        if "gradcheck" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def compile_ptx():
    """``compile_ptx(kernel, signature, cc)`` -> PTX text, or skip when NVVM cannot be found.

    Device functions are compiled for the current device's compute capability,
    which numba asks the driver for; without a device the fake device below
    answers with the capability being compiled for.
    """
    cuda = pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
    if getattr(cuda, "implementation", None) != "NVIDIA":
        pytest.skip("numba-cuda is not installed (only numba's built-in numba.cuda)")
    from numba.cuda import dispatcher

    def compile_for(kernel, signature, cc):
        original = dispatcher.get_current_device
        dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
        try:
            return cuda.compile_ptx(kernel.py_func, signature, cc=cc)[0]
        finally:
            dispatcher.get_current_device = original

    def probe(x):
        x[0] = 1.0

    try:
        cuda.compile_ptx(probe, "void(float32[::1])", cc=(8, 0))
    except Exception as exc:
        pytest.skip(f"numba-cuda cannot compile here (NVVM/libdevice missing?): {type(exc).__name__}: {exc}")
    return compile_for
