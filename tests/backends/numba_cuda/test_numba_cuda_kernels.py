"""The numba_cuda backend without a GPU: simulator runs, real compiles, selection and launch geometry.

* The kernel tests of this folder's ``test_numba_cuda_device_*`` files and the conformance suite
  (tests/backends/test_conformance.py, which then runs only this backend)
  run here in a subprocess on numba's CUDA simulator: ``NUMBA_ENABLE_CUDASIM=1``
  has to be set before ``numba.cuda`` is first imported, and this process
  must keep the real ``numba.cuda`` so that backend selection never sees a
  simulated device.
* Every kernel is compiled for real to PTX for sm_80 and sm_90 (NVVM, no
  driver needed), in both dtypes: float32 kernels must not contain float64
  instructions, static shared memory must fit the 48 KiB a block gets without
  opting in, the register tiles must stay out of local memory, and ptxas of
  NVVM's CUDA release (the compile extra installs it) must assemble every
  kernel for sm_90 without spilling registers.
* Selection: the registry lists ``numba_cuda`` with its reason, ``auto``
  passes over it, asking for it by name raises ``BackendUnavailable`` naming
  what is missing, and the module imports without numba-cuda or CuPy.
* The launch geometry (pure functions of the shapes) covers every element
  with blocks inside the tile limits and grids inside CUDA's limits, also for
  windows of more than 65535 x 64 rows (T x B), and refuses a grid.y above
  65535 with a ValueError before any launch.
"""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from cuda_toolkit import run_ptxas
from hypothesis import given, settings
from hypothesis import strategies as st

from ltexec.backends import BACKENDS, BackendUnavailable, available_backends, get_backend
from ltexec.backends.numba_cuda.backend import INSTALL_HINT, NumbaCudaBackend

ROOT = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
DTYPES = [np.float32, np.float64]


def numba_cuda():
    """The real numba.cuda from numba-cuda, or skip."""
    cuda = pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
    if getattr(cuda, "implementation", None) != "NVIDIA":
        pytest.skip("numba-cuda is not installed (only numba's built-in numba.cuda)")
    return cuda


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env})


# ----------------------------------------------------------------- simulator

def test_kernels_and_backend_match_the_reference_on_the_simulator():
    """Runs the device test files and the conformance suite on the CUDA simulator; all must pass, none be skipped."""
    numba_cuda()
    device_tests = sorted(str(path.relative_to(ROOT)) for path in HERE.glob("test_numba_cuda_device_*.py"))
    assert len(device_tests) == 3, device_tests
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *device_tests,
                             "tests/backends/test_conformance.py"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"})
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    output = result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode == 0, output
    assert re.fullmatch(r"\d+ passed in [\d.]+s( \(.*\))?", summary), f"unexpected summary {summary!r}\n{output}"


# -------------------------------------------------------------------- compile



@pytest.mark.parametrize("cc", [(8, 0), (9, 0)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_kernel_compiles_to_ptx(compile_ptx, dtype, cc):
    from ltexec.backends.numba_cuda import kernels as nk
    kernels, signatures = nk.kernels(dtype), nk.signatures(dtype)
    assert kernels.keys() == signatures.keys()
    for name, kernel in kernels.items():
        ptx = compile_ptx(kernel, signatures[name], cc)
        assert f".target sm_{cc[0]}{cc[1]}" in ptx and ".entry" in ptx, name
        shared = sum(int(n) for n in re.findall(r"\.shared \.align \d+ \.b8 \S+\[(\d+)\]", ptx))
        assert 0 < shared <= 48 * 1024 or (shared == 0 and name.startswith("embedding")), \
            f"{name}: {shared} bytes of static shared memory"
        assert ".local" not in ptx, f"{name}: uses local memory"
        if dtype == np.float32:
            doubles = sorted(set(re.findall(r"\b[\w.]+\.f64\b", ptx)))
            assert not doubles, f"{name}: float64 instructions in a float32 kernel: {doubles}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_kernel_spills_registers_on_sm90(compile_ptx, dtype, tmp_path):
    """ptxas (of NVVM's CUDA release, from the compile extra) assembles every kernel without spilling."""
    from ltexec.backends.numba_cuda import kernels as nk
    for name, kernel in nk.kernels(dtype).items():
        source = tmp_path / f"{name}.ptx"
        source.write_text(compile_ptx(kernel, nk.signatures(dtype)[name], (9, 0)))
        report = run_ptxas(source, "sm_90", tmp_path / f"{name}.cubin")
        assert "0 bytes spill stores, 0 bytes spill loads" in report, f"{name}: {report}"


# ------------------------------------------------------------------ selection

def test_registry_lists_numba_cuda_with_its_reason():
    reason = available_backends()["numba_cuda"]
    assert BACKENDS.index("numba_cuda") < BACKENDS.index("cpu")
    if reason is None:                                   # a GPU with numba-cuda and CuPy
        backend = get_backend("numba_cuda")
        assert backend.name == "numba_cuda" and "simulator" not in backend.device_name()
        return
    assert reason.strip() and "\n" not in reason
    assert get_backend("auto").name != "numba_cuda"
    with pytest.raises(BackendUnavailable, match=re.escape(f"backend 'numba_cuda' is unavailable: {reason}")):
        get_backend("numba_cuda")
    with pytest.raises(BackendUnavailable, match=re.escape(reason)):
        NumbaCudaBackend(np.float32)


def test_without_a_driver_the_reason_names_the_device():
    cuda = numba_cuda()
    pytest.importorskip("cupy", reason="CuPy is not installed")
    if cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    assert NumbaCudaBackend.unavailable_reason().startswith("no CUDA device: ")


def test_missing_cupy_or_builtin_numba_cuda_is_named(monkeypatch):
    cuda = numba_cuda()
    monkeypatch.setitem(sys.modules, "cupy", None)       # import cupy now raises ImportError
    assert NumbaCudaBackend.unavailable_reason() == f"needs CuPy: {INSTALL_HINT}"
    monkeypatch.setattr(cuda, "implementation", "Built-in")
    assert NumbaCudaBackend.unavailable_reason() == (
        f"needs numba-cuda (numba's built-in numba.cuda is not supported) and CuPy: {INSTALL_HINT}")


def test_module_imports_and_explains_without_numba_cuda_or_cupy():
    result = run_python("""
        import importlib.abc, sys

        class Missing(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in ("cupy", "numba_cuda") or name.startswith("numba.cuda"):
                    raise ModuleNotFoundError(f"No module named {name!r}")

        sys.meta_path.insert(0, Missing())
        import numpy as np
        from ltexec.backends import BackendUnavailable, available_backends, get_backend
        from ltexec.backends.numba_cuda.backend import NumbaCudaBackend
        print(available_backends()["numba_cuda"])
        print(get_backend("auto").name)
        for make in (lambda: get_backend("numba_cuda"), lambda: NumbaCudaBackend(np.float32)):
            try:
                make()
            except BackendUnavailable as exc:
                print(exc)
    """)
    assert result.returncode == 0, result.stderr
    reason, auto, *errors = result.stdout.splitlines()
    assert reason == f"needs numba-cuda and CuPy: {INSTALL_HINT}"
    assert auto in BACKENDS and auto != "numba_cuda"
    assert errors == [f"backend 'numba_cuda' is unavailable: {reason}"] * 2


def test_simulator_flag_needs_the_simulator():
    numba_cuda()
    with pytest.raises(RuntimeError, match="NUMBA_ENABLE_CUDASIM=1"):
        NumbaCudaBackend(np.float32, simulator=True)


# ------------------------------------------------------------------- geometry

def covers(grid: int, block: int, extent: int) -> bool:
    """grid blocks of block threads cover extent, and the last block is not empty."""
    return grid * block >= extent > (grid - 1) * block


sizes = st.integers(1, 5000)


@settings(max_examples=200, deadline=None)
@given(B=sizes, H=sizes, M=sizes, N=sizes, V=st.integers(1, 300))
def test_launch_geometry_covers_every_element_within_the_tiles(B, H, M, N, V):
    nk = pytest.importorskip("ltexec.backends.numba_cuda.kernels", reason="numba.cuda is not importable")

    (grid_b, grid_h), (tile_h, tile_b) = nk.recurrent_geometry(B, H)
    assert tile_h == min(nk.RECURRENT_TILE_H, H) and tile_b == min(nk.RECURRENT_TILE_B, B)
    assert covers(grid_h, tile_h, H) and covers(grid_b, tile_b, B)

    (grid_m, grid_n), (threads_n, threads_m) = nk.gemm_geometry(M, N)
    assert 1 <= threads_n <= nk.GEMM_THREADS and 1 <= threads_m <= nk.GEMM_THREADS
    assert covers(grid_n, threads_n * nk.GEMM_MICRO, N) and covers(grid_m, threads_m * nk.GEMM_MICRO, M)
    assert threads_n == nk.GEMM_THREADS or threads_n * nk.GEMM_MICRO < N + nk.GEMM_MICRO   # no idle thread column

    grid, (lanes, rows) = nk.softmax_geometry(M, V)
    assert lanes & (lanes - 1) == 0 and min(V, nk.SOFTMAX_LANES) <= lanes <= nk.SOFTMAX_LANES and lanes < 2 * V
    assert lanes * rows <= nk.BLOCK_THREADS and covers(grid, rows, M)

    grid, (columns, partials) = nk.column_sums_geometry(M, N)
    assert columns == min(nk.COLUMN_TILE, N) and 1 <= partials <= M
    assert columns * partials <= nk.BLOCK_THREADS and covers(grid, columns, N)

    grid, threads = nk.elementwise_geometry(M * V)
    assert threads <= nk.BLOCK_THREADS and covers(grid, threads, M * V)


GRID_X_LIMIT = 2**31 - 1


def test_a_window_of_millions_of_rows_stays_inside_the_grid_limits():
    """T x B = 5 million rows (grid.y would need 78,125 blocks of 64 rows): every launch of a training step
    at that size puts the rows along grid.x."""
    nk = pytest.importorskip("ltexec.backends.numba_cuda.kernels", reason="numba.cuda is not importable")
    T, B, H, V = 50, 100_000, 400, 51
    rows = T * B
    grids = [nk.recurrent_geometry(B, H)[0], nk.gemm_geometry(rows, 4 * H)[0], nk.gemm_geometry(rows, V)[0],
             nk.gemm_geometry(rows, H)[0], nk.gemm_geometry(H, 4 * H)[0], nk.column_sums_geometry(rows, 4 * H)[0],
             nk.softmax_geometry(rows, V)[0], nk.elementwise_geometry(rows * H)[0]]
    assert nk.gemm_geometry(rows, 4 * H)[0][0] == rows // 64 > nk.MAX_GRID_Y
    for grid in grids:
        x, *y = grid if isinstance(grid, tuple) else (grid,)
        assert x <= GRID_X_LIMIT and all(extent <= nk.MAX_GRID_Y for extent in y), grid


def test_a_grid_y_above_the_limit_is_refused_before_launch():
    nk = pytest.importorskip("ltexec.backends.numba_cuda.kernels", reason="numba.cuda is not importable")
    assert nk.MAX_GRID_Y == 65535
    assert nk.gemm_geometry(3, 64 * 65535)[0] == (1, 65535)
    with pytest.raises(ValueError, match=r"^a product with N=4194241 columns \(64 per block\) needs 65536 blocks "
                                         r"along grid.y, above CUDA's limit of 65535$"):
        nk.gemm_geometry(3, 64 * 65535 + 1)
    assert nk.recurrent_geometry(1, 32 * 65535)[0] == (1, 65535)
    with pytest.raises(ValueError, match=r"^a launch of the LSTM step kernels at H=2097121 \(32 units per block\) "
                                         r"needs 65536 blocks along grid.y"):
        nk.recurrent_geometry(1, 32 * 65535 + 1)
