"""The CUDA C kernels of kernels/*.cu: they compile for real, and compute the reference's numbers.

* Compilation: every source goes through NVRTC (the compiler CuPy uses) for
  sm_80 and sm_90 with exactly the options and name expressions the CuPy
  backend uses, and every instantiation must come out. Where nvcc is
  installed (the compile and cuda13 extras bring one), ptxas's resource report is
  recorded and must show no spills.
* Arithmetic: the same source text runs on the CPU through the C++ emulation
  in tests/cuda_emulation (itself checked first on kernels with known
  results) and is compared with the NumPy reference of
  ltexec.backends.numpy_backend on fresh random inputs, for shapes that are
  and are not multiples of the block size. Pure outputs are poisoned with NaN
  before the launch and every output sits between guard cells, so an element
  left unwritten or written out of bounds fails the test.

Error measure per output array: ``max|kernel - ref| / max|ref|``, with the
reference in float64 on the kernel's own (rounded) inputs. One step must be
below 1e-5 for float32 kernels and below 1e-12 for float64 ones.
"""

import re
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cuda_emulation as emulation
from ltexec.testing import relative_error as rel_error
from cuda_toolkit import toolkit_program
from ltexec.backends import cupy_backend
from ltexec.backends.base import Backend
from ltexec.backends.numpy_backend import cell_backward, cell_forward

TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}
DTYPES = [np.float32, np.float64]
ARCHES = ["sm_80", "sm_90"]
SOURCES = sorted(cupy_backend.KERNELS)
SETTINGS = settings(max_examples=12, deadline=None)
NVCC = toolkit_program("nvcc")
GUARD = 4          # guard cells on each side of every kernel argument
CANARY = 12345     # their value

needs_gxx = pytest.mark.skipif(emulation.gxx_missing_reason() is not None,
                               reason=emulation.gxx_missing_reason() or "")


class Guarded:
    """An array with CANARY cells before and after it, to catch out-of-bounds writes."""

    def __init__(self, values, dtype=None):
        values = np.asarray(values, dtype)
        self._buffer = np.full(values.size + 2 * GUARD, CANARY, values.dtype)
        self.array = self._buffer[GUARD:GUARD + values.size].reshape(values.shape)
        self.array[...] = values

    @classmethod
    def poisoned(cls, shape, dtype):
        dtype = np.dtype(dtype)
        return cls(np.full(shape, np.nan if dtype.kind == "f" else np.iinfo(dtype).min, dtype))

    def check(self) -> np.ndarray:
        """The array, after checking that the guard cells are intact and no poison is left."""
        assert (self._buffer[:GUARD] == CANARY).all() and (self._buffer[-GUARD:] == CANARY).all(), \
            "a kernel wrote outside its array"
        if self.array.dtype.kind == "f":
            assert not np.isnan(self.array).any(), "a kernel left output elements unwritten"
        else:
            assert (self.array != np.iinfo(self.array.dtype).min).all(), "a kernel left output elements unwritten"
        return self.array


def launch(kernel, dtype, grid, block, *args):
    """Run a backend kernel (by base name and dtype) in the emulation; arrays may be Guarded."""
    plain = tuple(a.array if isinstance(a, Guarded) else a for a in args)
    emulation.kernels().launch(cupy_backend.name_expression(kernel, dtype), grid, block, plain)


def random_normal(rng, shape, scale=1.0):
    return rng.standard_normal(shape) * scale


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
        log = ""
        if program is not None:
            size = nvrtc.nvrtcGetProgramLogSize(program)[1]
            buffer = b" " * size
            nvrtc.nvrtcGetProgramLog(program, buffer)
            log = buffer.decode(errors="replace")
        raise AssertionError(f"NVRTC: {status}\n{log}")
    return result[1:]


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("source", SOURCES)
def test_every_source_compiles_with_nvrtc(source, arch):
    nvrtc = nvrtc_or_skip()
    text = (emulation.KERNEL_DIR / source).read_bytes()
    (program,) = nvrtc_check(nvrtc, nvrtc.nvrtcCreateProgram(text, source.encode(), 0, [], []))
    try:
        expressions = cupy_backend.name_expressions(source)
        for expr in expressions:
            nvrtc_check(nvrtc, nvrtc.nvrtcAddNameExpression(program, expr.encode()))
        options = [o.encode() for o in cupy_backend.NVRTC_OPTIONS] + [f"--gpu-architecture={arch}".encode()]
        nvrtc_check(nvrtc, nvrtc.nvrtcCompileProgram(program, len(options), options), program)
        for expr in expressions:
            (lowered,) = nvrtc_check(nvrtc, nvrtc.nvrtcGetLoweredName(program, expr.encode()))
            assert lowered.startswith(b"_Z"), f"{expr} was not instantiated"
        (size,) = nvrtc_check(nvrtc, nvrtc.nvrtcGetCUBINSize(program))
        assert size > 0
    finally:
        nvrtc.nvrtcDestroyProgram(program)


def test_every_source_is_listed_and_self_contained():
    on_disk = sorted(p.name for p in emulation.KERNEL_DIR.glob("*.cu"))
    assert on_disk == SOURCES
    for source in SOURCES:
        assert "#include" not in (emulation.KERNEL_DIR / source).read_text()


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
        assert kernels.source(source) == (emulation.KERNEL_DIR / source).read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="no kernel source"):
        kernels.source("missing.cu")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed (pip install nvidia-cuda-nvcc)")
@pytest.mark.parametrize("source", SOURCES)
def test_no_register_spills(source, tmp_path, record_property):
    expressions = cupy_backend.name_expressions(source)
    wrapper = tmp_path / f"instantiate_{source}"
    wrapper.write_text(f'#include "{emulation.KERNEL_DIR / source}"\n'
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
    index = Guarded.poisoned(n, np.int32)
    coords = Guarded.poisoned((n, 4), np.int32)
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
    sums = Guarded.poisoned(grid, dtype)
    emulation.kernels().launch(f"block_sums<{cupy_backend.REAL_TYPES[np.dtype(dtype)]}>", grid, block,
                               (x, sums.array, np.int32(n)))
    np.testing.assert_array_equal(sums.check(), np.add.reduceat(x, np.arange(0, n, block)))


@needs_gxx
def test_emulation_rejects_unknown_kernels():
    with pytest.raises(KeyError, match="no kernel"):
        emulation.kernels().launch("lstm_cell_forward<int>", 1, 1, ())


# ------------------------------------------------------------- LSTM cell

cell_shapes = st.tuples(st.integers(1, 9), st.integers(1, 70), st.sampled_from([32, 64, 256]))


def cell_inputs(rng, B, H, dtype):
    """Random forward inputs rounded to ``dtype`` (pre-activations of order 1-3, not saturated)."""
    xproj = random_normal(rng, (B, 4 * H), 1.5).astype(dtype)
    h_prev = random_normal(rng, (B, H), 0.5).astype(dtype)
    c_prev = random_normal(rng, (B, H), 1.0).astype(dtype)
    Wh = random_normal(rng, (H, 4 * H), 1.0 / np.sqrt(H)).astype(dtype)
    b = random_normal(rng, 4 * H, 0.5).astype(dtype)
    return xproj, h_prev, c_prev, Wh, b


def run_cell_forward(B, H, block, dtype, seed):
    rng = np.random.default_rng(seed)
    xproj, h_prev, c_prev, Wh, b = cell_inputs(rng, B, H, dtype)
    rec = h_prev @ Wh                                   # the per-step product, in the kernel's dtype
    gates = Guarded(xproj)
    c, h = Guarded.poisoned((B, H), dtype), Guarded.poisoned((B, H), dtype)
    grid, block = cupy_backend.launch_geometry(B * H, block)
    launch("lstm_cell_forward", dtype, grid, block, gates, Guarded(rec), Guarded(b), Guarded(c_prev), c, h,
           np.int32(B), np.int32(H))
    f64 = [a.astype(np.float64) for a in (xproj, h_prev, c_prev, Wh, b)]
    return (gates.check(), c.check(), h.check()), cell_forward(*f64)


@needs_gxx
@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(shape=cell_shapes, seed=st.integers(0, 2**32 - 1))
def test_cell_forward_matches_reference(dtype, shape, seed):
    B, H, block = shape
    (gates, c, h), (h_ref, c_ref, (i, f, g, o, _, _, _)) = run_cell_forward(B, H, block, dtype, seed)
    tol = TOLERANCE[dtype]
    assert rel_error(gates, np.concatenate([i, f, g, o], axis=1)) < tol
    assert rel_error(c, c_ref) < tol
    assert rel_error(h, h_ref) < tol


@needs_gxx
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, H, block", [(5, 67, 32), (3, 100, 256), (1, 1, 32), (7, 37, 64)])
def test_cell_forward_with_a_ragged_last_block(dtype, B, H, block):
    assert (B * H) % block != 0
    (gates, c, h), (h_ref, c_ref, (i, f, g, o, _, _, _)) = run_cell_forward(B, H, block, dtype, B * H)
    tol = TOLERANCE[dtype]
    assert max(rel_error(gates, np.concatenate([i, f, g, o], axis=1)), rel_error(c, c_ref),
               rel_error(h, h_ref)) < tol


def run_cell_backward(B, H, block, dtype, seed):
    rng = np.random.default_rng(seed)
    xproj, h_prev, c_prev, Wh, b = (a.astype(np.float64) for a in cell_inputs(rng, B, H, dtype))
    _, c, (i, f, g, o, _, _, _) = cell_forward(xproj, h_prev, c_prev, Wh, b)
    acts = np.concatenate([i, f, g, o], axis=1).astype(dtype)            # what the forward kernel keeps
    c = c.astype(dtype)
    dh_out, dh_next, dc_in = (random_normal(rng, (B, H)).astype(dtype) for _ in range(3))
    gates, dc = Guarded(acts), Guarded(dc_in)
    grid, block = cupy_backend.launch_geometry(B * H, block)
    launch("lstm_cell_backward", dtype, grid, block, gates, Guarded(c_prev.astype(dtype)), Guarded(c),
           Guarded(dh_out), Guarded(dh_next), dc, np.int32(B), np.int32(H))
    acts64 = acts.astype(np.float64)
    step_cache = (*np.split(acts64, 4, axis=1), c_prev.astype(dtype).astype(np.float64),
                  np.tanh(c.astype(np.float64)), Wh)
    da_ref, _, dc_ref = cell_backward(dh_out.astype(np.float64) + dh_next.astype(np.float64),
                                      dc_in.astype(np.float64), step_cache)
    return (gates.check(), dc.check()), (da_ref, dc_ref)


@needs_gxx
@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(shape=cell_shapes, seed=st.integers(0, 2**32 - 1))
def test_cell_backward_matches_reference(dtype, shape, seed):
    B, H, block = shape
    (da, dc), (da_ref, dc_ref) = run_cell_backward(B, H, block, dtype, seed)
    assert rel_error(da, da_ref) < TOLERANCE[dtype]
    assert rel_error(dc, dc_ref) < TOLERANCE[dtype]


@needs_gxx
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, H, block", [(5, 67, 32), (3, 100, 256), (7, 37, 64)])
def test_cell_backward_with_a_ragged_last_block(dtype, B, H, block):
    assert (B * H) % block != 0
    (da, dc), (da_ref, dc_ref) = run_cell_backward(B, H, block, dtype, 7 * B + H)
    assert max(rel_error(da, da_ref), rel_error(dc, dc_ref)) < TOLERANCE[dtype]


# ------------------------------------------------------------ softmax + loss

def run_softmax_xent(logits, y, mask, dtype):
    N, V = logits.shape
    dlogits = Guarded.poisoned((N, V), dtype)
    row_loss = Guarded.poisoned(N, dtype)
    row_correct = Guarded.poisoned(N, np.int32)
    launch("softmax_xent", dtype, N, cupy_backend.softmax_block(V), Guarded(logits.astype(dtype)),
           Guarded(y.astype(np.int64)), Guarded(mask.astype(dtype)), dlogits, row_loss, row_correct,
           np.int32(N), np.int32(V))
    return dlogits.check(), row_loss.check(), row_correct.check()


def softmax_inputs(rng, N, V, dtype):
    logits = random_normal(rng, (N, V), 3.0).astype(dtype)
    y = rng.integers(0, V, N)
    mask = (rng.random(N) < 0.6).astype(dtype)
    if N > 1:   # a tie for the maximum: the first one counts, whether or not it is the target
        row = rng.integers(N)
        first, second = sorted(rng.choice(V, 2, replace=False)) if V > 1 else (0, 0)
        logits[row, [first, second]] = logits[row].max() + 1
        y[row], mask[row] = rng.choice([first, second]), 1
    return logits, y, mask


@needs_gxx
@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(N=st.integers(1, 24), V=st.sampled_from([1, 2, 5, 31, 51, 64, 100, 300, 700]),
       seed=st.integers(0, 2**32 - 1))
def test_softmax_xent_matches_reference(dtype, N, V, seed):
    logits, y, mask = softmax_inputs(np.random.default_rng(seed), N, V, dtype)
    dlogits, row_loss, row_correct = run_softmax_xent(logits, y, mask, dtype)
    loss_ref, dlogits_ref, correct_ref = Backend(np.float64).softmax_xent(
        logits.astype(np.float64)[None], y[None], mask.astype(np.float64)[None])
    tol = TOLERANCE[dtype]
    assert rel_error(dlogits, dlogits_ref[0]) < tol
    assert abs(row_loss.astype(np.float64).sum() - loss_ref) <= tol * max(abs(loss_ref), 1.0)
    np.testing.assert_array_equal(row_correct, (logits.argmax(axis=1) == y) & (mask != 0))
    assert row_correct.sum() == correct_ref


@needs_gxx
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_flags_ids_outside_the_vocabulary(dtype):
    rng = np.random.default_rng(3)
    N, V = 6, 51
    logits, y, mask = softmax_inputs(rng, N, V, dtype)
    y[1], y[4] = -1, V
    dlogits, row_loss, row_correct = run_softmax_xent(logits, y, mask, dtype)
    assert list(row_correct[[1, 4]]) == [-1, -1]
    assert (row_correct[[0, 2, 3, 5]] >= 0).all()
    assert (row_loss[[1, 4]] == 0).all() and (dlogits[[1, 4]] == 0).all()
