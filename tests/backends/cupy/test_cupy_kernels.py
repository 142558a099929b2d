"""The CUDA C kernels of kernels/*.cu: they compile for real, and compute the reference's numbers.

* Compilation: every source goes through NVRTC (the compiler CuPy uses) for
  sm_80 and sm_90 with exactly the options and name expressions the CuPy
  backend uses, and every instantiation must come out. Where nvcc is
  installed (the compile and cuda13 extras bring one), ptxas's resource report is
  recorded and must show no spills.
* Arithmetic: the same source text runs on the CPU through the C++ emulation
  in tests/cuda_emulation (itself checked first on kernels with known
  results) and is compared with the NumPy reference of
  ltexec.backends.numpy.backend on fresh random inputs, for shapes that are
  and are not multiples of the block size. The cases (inputs, launch,
  reference) are benchmarks/kernel_cases.py's, which benchmarks/kernel_check.py
  runs on a GPU: pure outputs are poisoned with NaN before the launch, every
  argument is an allocation of its own between guard cells, and inputs must
  come out unchanged, so an element left unwritten, written out of bounds or
  written where it is read-only fails the test.

Error measure per output array: ``max|kernel - ref| / max|ref|``, with the
reference in float64 on the kernel's own (rounded) inputs. One step must be
below 1e-5 for float32 kernels and below 1e-12 for float64 ones.
"""

import contextlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cuda_emulation as emulation
from cuda_toolkit import toolkit_program
from ltexec.backends.cupy import backend as cupy_backend

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

from kernel_cases import (Guarded, Shape, cell_backward_case, cell_forward_case,  # noqa: E402
                          softmax_xent_case)

DTYPES = [np.float32, np.float64]
ARCHES = ["sm_80", "sm_90"]
SOURCES = sorted(cupy_backend.KERNELS)
SETTINGS = settings(max_examples=12, deadline=None)
NVCC = toolkit_program("nvcc")
DEVICE = emulation.EmulatedDevice(resident_per_sm=64)
"""The device layer the kernels run on here; room for every grid the tests launch (their geometry is
chosen by the tests, not planned against the device's limits)."""

needs_gxx = pytest.mark.skipif(emulation.gxx_missing_reason() is not None,
                               reason=emulation.gxx_missing_reason() or "")


def assert_matches_reference(case) -> dict:
    """One launch of ``case`` on the emulation: no argument broken (guards, poison, inputs), every output
    within the case's tolerance of the float64 reference. Returns the outputs."""
    outputs = case.run(DEVICE)
    errors = case.errors(outputs)
    assert not case.failures(errors), errors
    return outputs


# ------------------------------------------------------------ compilation

def nvrtc_or_skip():
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:
        pytest.skip(f"cuda-bindings is not installed ({exc})")
    try:
        nvrtc.nvrtcVersion()
    except Exception as exc:   # the bindings load libnvrtc on first use
        pytest.skip(f"NVRTC is not installed (pip install nvidia-cuda-nvrtc): {exc}")
    return nvrtc


def nvrtc_check(nvrtc, result, program=None):
    """Raise with NVRTC's log unless ``result`` (a bindings return tuple) reports success."""
    status = result[0]
    if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise AssertionError(f"NVRTC: {status}\n{'' if program is None else nvrtc_log(nvrtc, program)}")
    return result[1:]


def nvrtc_log(nvrtc, program) -> str:
    """What NVRTC said compiling ``program``."""
    (size,) = nvrtc_check(nvrtc, nvrtc.nvrtcGetProgramLogSize(program))
    buffer = b" " * size
    nvrtc.nvrtcGetProgramLog(program, buffer)
    return buffer.decode(errors="replace")


@contextlib.contextmanager
def nvrtc_compiled(nvrtc, source: str, *options: str):
    """``source`` compiled by NVRTC as the backend compiles it (its options and name expressions), plus
    ``options``: yields (program, {name expression: lowered name}); the program is destroyed after."""
    text = cupy_backend.kernel_source(source).encode()
    (program,) = nvrtc_check(nvrtc, nvrtc.nvrtcCreateProgram(text, source.encode(), 0, [], []))
    try:
        expressions = cupy_backend.name_expressions(source)
        for expr in expressions:
            nvrtc_check(nvrtc, nvrtc.nvrtcAddNameExpression(program, expr.encode()))
        flags = [option.encode() for option in (*cupy_backend.NVRTC_OPTIONS, *options)]
        nvrtc_check(nvrtc, nvrtc.nvrtcCompileProgram(program, len(flags), flags), program)
        yield program, {expr: nvrtc_check(nvrtc, nvrtc.nvrtcGetLoweredName(program, expr.encode()))[0]
                        for expr in expressions}
    finally:
        nvrtc.nvrtcDestroyProgram(program)


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("source", SOURCES)
def test_every_source_compiles_with_nvrtc(source, arch):
    nvrtc = nvrtc_or_skip()
    with nvrtc_compiled(nvrtc, source, f"--gpu-architecture={arch}") as (program, lowered):
        for expr, name in lowered.items():
            assert name.startswith(b"_Z"), f"{expr} was not instantiated"
        (size,) = nvrtc_check(nvrtc, nvrtc.nvrtcGetCUBINSize(program))
        assert size > 0


def test_every_source_is_listed_and_compiles_as_one_string():
    on_disk = sorted(p.name for p in emulation.KERNEL_DIR.glob("*.cu"))
    assert on_disk == SOURCES
    header = (emulation.KERNEL_DIR / "device_math.cuh").read_text()
    assert "#include" not in header
    for source in SOURCES:
        text = (emulation.KERNEL_DIR / source).read_text()
        assert "#include" not in text
        assert "real_exp(float x)" not in text and "sigmoid(real x)" not in text   # the helpers live in the header
        assert cupy_backend.kernel_source(source).startswith(header)


def test_softmax_block_limit_matches_the_source():
    text = (emulation.KERNEL_DIR / "softmax_xent.cu").read_text()
    assert int(re.search(r"#define SOFTMAX_MAX_BLOCK (\d+)", text).group(1)) == cupy_backend.SOFTMAX_MAX_BLOCK


def test_kernel_sources_ship_in_the_package():
    try:
        from ltexec import kernels
    except ImportError as exc:
        pytest.fail(f"ltexec.kernels is not importable ({exc}): setup.py must map the package "
                    "'ltexec.kernels' to the kernels/ folder with *.cu as package data, then reinstall")
    assert kernels.source_names() == SOURCES
    for source in SOURCES:
        assert kernels.file_text(source) == (emulation.KERNEL_DIR / source).read_text(encoding="utf-8")
        assert kernels.source(source) == f"{kernels.file_text(kernels.HEADER)}\n// ---- {source}\n" \
                                         f"{kernels.file_text(source)}"
    assert kernels.file_text(kernels.HEADER) == (emulation.KERNEL_DIR / "device_math.cuh").read_text(encoding="utf-8")
    for bad in (kernels.source, kernels.file_text):
        with pytest.raises(ValueError, match="no kernel source 'missing.cu'"):
            bad("missing.cu")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed (pip install nvidia-cuda-nvcc)")
@pytest.mark.parametrize("source", SOURCES)
def test_no_register_spills(source, tmp_path, record_property):
    expressions = cupy_backend.name_expressions(source)
    wrapper = tmp_path / f"instantiate_{source}"
    (tmp_path / source).write_text(cupy_backend.kernel_source(source))
    wrapper.write_text(f'#include "{tmp_path / source}"\n'
                       "void instantiate()\n{\n" + "".join(f"    (void)&{e};\n" for e in expressions) + "}\n")
    result = subprocess.run([NVCC, "-cubin", "-arch=sm_90", "--resource-usage", *cupy_backend.NVRTC_OPTIONS,
                             "-o", str(tmp_path / "out.cubin"), str(wrapper)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = result.stdout + result.stderr
    entries = re.findall(r"Compiling entry function '(\w+)'.*?(\d+) bytes stack frame, (\d+) bytes spill stores, "
                         r"(\d+) bytes spill loads.*?Used (\d+) registers", report, re.S)
    assert len(entries) == len(expressions), report
    for name, stack, stores, loads, registers in entries:
        record_property(f"registers {name}", int(registers))
        print(f"{name}: {registers} registers, {stack} bytes stack")
        assert (int(stack), int(stores), int(loads)) == (0, 0, 0), f"{name} spills:\n{report}"


# ------------------------------------------------------- the emulation itself

@needs_gxx
@pytest.mark.parametrize("n, block", [(13, 5), (32, 32), (1, 64), (70, 16)])
def test_emulation_runs_every_thread_with_its_coordinates(n, block):
    grid, block = cupy_backend.launch_geometry(n, block)
    index = Guarded.output(DEVICE, "index", n, np.int32)
    coords = Guarded.output(DEVICE, "coords", (n, 4), np.int32)
    emulation.kernels().launch("thread_coordinates", grid, block, (index.array, coords.array, np.int32(n)))
    k = np.arange(n)
    np.testing.assert_array_equal(index.check(), k)
    np.testing.assert_array_equal(coords.check(), np.stack([k % block, k // block,
                                                            np.full(n, block), np.full(n, grid)], axis=1))


@needs_gxx
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, block", [(37, 8), (256, 256), (1000, 64), (5, 32)])
def test_emulation_barriers_and_shared_memory(dtype, n, block):
    rng = np.random.default_rng(n)
    x = rng.integers(-1000, 1000, n).astype(dtype)    # integers: every summation order is exact
    grid, block = cupy_backend.launch_geometry(n, block)
    sums = Guarded.output(DEVICE, "sums", grid, dtype)
    emulation.kernels().launch(f"block_sums<{cupy_backend.REAL_TYPES[np.dtype(dtype)]}>", grid, block,
                               (x, sums.array, np.int32(n)))
    np.testing.assert_array_equal(sums.check(), np.add.reduceat(x, np.arange(0, n, block)))


@needs_gxx
def test_emulation_rejects_unknown_kernels():
    with pytest.raises(KeyError, match="no kernel"):
        emulation.kernels().launch("lstm_cell_forward<int>", 1, 1, ())


# ------------------------------------------------------------- LSTM cell

cell_shapes = st.tuples(st.integers(1, 9), st.integers(1, 70), st.sampled_from([32, 64, 256]))
CELL_CASES = [cell_forward_case, cell_backward_case]


@needs_gxx
@pytest.mark.parametrize("build", CELL_CASES, ids=lambda build: build.__name__)
@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(shape=cell_shapes, seed=st.integers(0, 2**32 - 1))
def test_cell_kernel_matches_reference(build, dtype, shape, seed):
    B, H, block = shape
    assert_matches_reference(build(DEVICE, Shape(B=B, H=H), dtype, block, seed))


@needs_gxx
@pytest.mark.parametrize("build", CELL_CASES, ids=lambda build: build.__name__)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, H, block", [(5, 67, 32), (3, 100, 256), (1, 1, 32), (7, 37, 64)])
def test_cell_kernel_with_a_ragged_last_block(build, dtype, B, H, block):
    assert (B * H) % block != 0
    assert_matches_reference(build(DEVICE, Shape(B=B, H=H), dtype, block, seed=7 * B + H))


# ------------------------------------------------------------ softmax + loss

@needs_gxx
@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(N=st.integers(1, 24), V=st.sampled_from([1, 2, 5, 31, 51, 64, 100, 300, 700]),
       seed=st.integers(0, 2**32 - 1))
def test_softmax_xent_matches_reference(dtype, N, V, seed):
    # dlogits, the summed loss, and each row's correct flag and their count (exactly)
    case = softmax_xent_case(DEVICE, Shape(N=N, V=V), dtype, cupy_backend.softmax_block(V), seed)
    assert {"dlogits", "loss", "row_correct", "correct"} <= set(case.expected)
    assert_matches_reference(case)


@needs_gxx
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_flags_ids_outside_the_vocabulary(dtype):
    N, V = 6, 51
    case = softmax_xent_case(DEVICE, Shape(N=N, V=V), dtype, cupy_backend.softmax_block(V), seed=3,
                             targets={1: -1, 4: V})
    out = case.run(DEVICE)
    dlogits, row_loss, row_correct = out["dlogits"], out["row_loss"], out["row_correct"]
    assert list(row_correct[[1, 4]]) == [-1, -1]
    assert (row_correct[[0, 2, 3, 5]] >= 0).all()
    assert (row_loss[[1, 4]] == 0).all() and (dlogits[[1, 4]] == 0).all()
