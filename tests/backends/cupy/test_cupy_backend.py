"""What only the CuPy backend has: launch geometry, the persistent/per-step choice, the probe; without a GPU.

Every operation against the NumPy reference, in both recurrence modes on the
emulated device and on a real one, is in tests/backends/test_conformance.py.
Here:

* Pure logic: launch geometry, the persistent kernels' geometry and every
  reason it gives for not fitting, the on/off options, the device check,
  and the availability probe with fake CuPy modules (not installed, no
  driver, no device, ROCm, no cuBLAS, kernels that do not compile); the
  device layer's limits, occupancy query and cooperative launch against a
  fake CuPy.
* Registry: here ``cupy`` is listed as unavailable with its reason, asking
  for it raises BackendUnavailable, ``auto`` passes it over.
* The backend on the CPU: ``CupyBackend`` with the emulated device layer of
  tests/cuda_emulation runs its real window logic (buffers, the choice per
  layer shape, the launches and products) with the real kernels compiled by
  g++: the persistent kernels as one cooperative launch of several blocks
  (H = 37 over the emulated device's 6 SMs: 6 blocks of 7 units, the last
  of 2), and the per-step kernels. Checked: the numbers against the NumPy
  reference, which launches and products run, ``launch_mode`` and its
  reasons, the fallback where the emulated device's limits or occupancy do
  not fit, and that the persistent recurrence makes no cuBLAS call (the emulated stream capture
  refuses one as CuPy does, which the per-step recurrence cannot pass).
  Pool buffers are poisoned with NaN whenever they are handed out. Error
  measure ``max|x - ref| / max|ref|``: below 2e-5 in float32 (a window of
  several steps; one step is held to 1e-5 in test_cupy_kernels.py) and
  below 1e-12 in float64.
* On a CUDA device (skipped elsewhere, with the reason): whole training
  windows in both modes, and the paper's layer size persistent on a device
  with enough SMs.
"""

import subprocess
import sys
import types
import warnings

import numpy as np
import pytest

import cuda_emulation as emulation
from ltexec.testing import relative_error as rel_error
from ltexec.backends import BackendUnavailable, available_backends, get_backend
from ltexec.backends.common import BufferPool
from ltexec.backends.cupy import backend as cupy_backend
from ltexec.backends.cupy.backend import (GRAPHS_ENV, PERSISTENT_ENV, TURNED_OFF, CudaDevice, CupyBackend,
                                          DeviceLimits, check_on_device, launch_geometry, plan_persistent, probe,
                                          softmax_block, switch)
from ltexec.backends.persistent_plan import (DIRECTIONS, PER_STEP, PERSISTENT, UNDECIDED, PersistentGeometry,
                                             PersistentUnfit)
from ltexec.backends.numpy.backend import NumpyBackend
from ltexec.config import TrainConfig
from ltexec.model import LSTMModel
from ltexec.progress import Reporter

TOLERANCE = {np.float32: 2e-5, np.float64: 1e-12}
DTYPES = [np.float32, np.float64]
DEVICE_REASON = cupy_backend.probe()
A100 = DeviceLimits(sms=108, shared_per_block=163 * 1024, cooperative=True)
H100 = DeviceLimits(sms=132, shared_per_block=227 * 1024, cooperative=True)

needs_gxx = pytest.mark.skipif(emulation.gxx_missing_reason() is not None,
                               reason=emulation.gxx_missing_reason() or "")
needs_device = pytest.mark.skipif(DEVICE_REASON is not None, reason=f"no CUDA device: {DEVICE_REASON}")


@pytest.fixture(autouse=True)
def poisoned_pool(monkeypatch):
    """Every pool buffer is handed out full of NaN, so anything the backend forgets to write shows."""
    take = BufferPool.take

    def poisoned(self, shape, dtype):
        array = take(self, shape, dtype)
        if isinstance(array, np.ndarray):   # not the CuPy arrays on unowned memory below
            array.fill(np.nan)
        return array

    monkeypatch.setattr(BufferPool, "take", poisoned)


@pytest.fixture(autouse=True)
def no_options_from_the_environment(monkeypatch):
    """The options' environment variables are unset unless a test sets them."""
    monkeypatch.delenv(PERSISTENT_ENV, raising=False)
    monkeypatch.delenv(GRAPHS_ENV, raising=False)


class RecordingDevice(emulation.EmulatedDevice):
    """The emulated device, noting every product ("gemm"), launch (its kernel) and occupancy query."""

    def __init__(self, **options):
        super().__init__(**options)
        self.calls = []

    def gemm(self, *args, **kwargs):
        self.calls.append("gemm")
        super().gemm(*args, **kwargs)

    def launch(self, kernel, grid, block, args):
        self.calls.append(kernel)
        super().launch(kernel, grid, block, args)

    def launch_cooperative(self, kernel, grid, block, shared_bytes, args):
        self.calls.append((kernel, grid, block, shared_bytes))
        super().launch_cooperative(kernel, grid, block, shared_bytes, args)

    def resident_blocks(self, kernel, block, shared_bytes):
        self.calls.append(("resident", kernel, block, shared_bytes))
        return super().resident_blocks(kernel, block, shared_bytes)


def emulated(dtype, persistent=None, **device_options):
    return CupyBackend(dtype, persistent=persistent, device=RecordingDevice(**device_options))


# ---------------------------------------------------------- launch geometry

@pytest.mark.parametrize("threads, block, grid", [(1, 256, 1), (256, 256, 1), (257, 256, 2),
                                                  (335, 32, 11), (40000, 256, 157), (7, 1, 7)])
def test_launch_geometry(threads, block, grid):
    assert launch_geometry(threads, block) == (grid, block)


@pytest.mark.parametrize("threads, block", [(0, 256), (-3, 32), (10, 0), (10, 2048), (2**40, 1)])
def test_launch_geometry_rejects(threads, block):
    with pytest.raises(ValueError):
        launch_geometry(threads, block)


@pytest.mark.parametrize("V, block", [(1, 32), (32, 32), (33, 64), (51, 64), (128, 128), (129, 256),
                                      (256, 256), (300, 256), (100000, 256)])
def test_softmax_block(V, block):
    assert softmax_block(V) == block


def test_softmax_block_rejects_an_empty_vocabulary():
    with pytest.raises(ValueError, match="at least one"):
        softmax_block(0)


def test_name_expressions_cover_every_kernel_and_dtype():
    assert cupy_backend.name_expression("lstm_cell_forward", np.float32) == "lstm_cell_forward<float>"
    assert cupy_backend.name_expression("softmax_xent", np.float64) == "softmax_xent<double>"
    assert cupy_backend.name_expressions("lstm_cell.cu") == [
        "lstm_cell_forward<float>", "lstm_cell_forward<double>",
        "lstm_cell_backward<float>", "lstm_cell_backward<double>"]


# ------------------------------------------------- persistent kernels' geometry

def one_per_sm(direction, threads, shared_bytes):
    return 1


@pytest.mark.parametrize("limits", [A100, H100], ids=["A100", "H100"])
@pytest.mark.parametrize("itemsize", [4, 8])
def test_paper_size_runs_one_block_of_four_units_per_sm(limits, itemsize):
    """H = 400, B = 100: 100 blocks of 4 units, 416 threads, 25.6 KB (float) or 51.2 KB (double) of W_h."""
    assert plan_persistent(50, 100, 400, itemsize, limits, one_per_sm) == \
        PersistentGeometry(H=400, B=100, itemsize=itemsize, units_per_block=4, grid=100, threads=416,
                           forward_shared_bytes=4 * 400 * 4 * itemsize, backward_shared_bytes=4 * 400 * 4 * itemsize)


@pytest.mark.parametrize("T, B, H, sms, geometry", [
    (7, 5, 37, 6, (7, 6, 64, 4 * 37 * 7 * 4)),      # ragged: five blocks of 7 units, the last of 2
    (1, 1, 1, 6, (1, 1, 32, 16)),                    # one unit, one row: one warp
    (3, 2, 5, 132, (1, 5, 32, 80)),                  # fewer units than SMs: one unit per block
    (2, 300, 400, 132, (4, 100, 608, 25600)),        # B * units = 1200 pairs: two passes of 608 threads
    (2, 13, 13, 6, (3, 5, 64, 624)),                 # 39 pairs: the next multiple of 32
])
def test_persistent_geometry(T, B, H, sms, geometry):
    limits = DeviceLimits(sms=sms, shared_per_block=48 * 1024, cooperative=True)
    asked = []
    found = plan_persistent(T, B, H, 4, limits, lambda *query: asked.append(query) or 1)
    units, grid, threads, shared = geometry
    assert (found.units_per_block, found.grid, found.threads) == (units, grid, threads)
    assert found.forward_shared_bytes == found.backward_shared_bytes == shared     # both hold 4H values a unit
    assert found.threads % 32 == 0 and found.grid <= sms
    assert asked == [(direction, threads, shared) for direction in DIRECTIONS]


@pytest.mark.parametrize("T, B, H, limits, resident, fragment", [
    (5, 4, 16, DeviceLimits(8, 48 * 1024, cooperative=False), 1, "cannot launch cooperative kernels"),
    (5, 100, 2000, H100, 1, "the forward kernel needs 512000 B of shared memory per block (H=2000, 16 units per "
                            "block), above the 232448 B a block may have"),
    (5, 4, 400, H100, 0, "the forward kernel needs 100 co-resident blocks of 32 threads with 25600 B of shared "
                         "memory each, but the device holds 0 at once"),
    (50000, 100, 400, H100, 1, "T*B*4H = 8000000000 values, more than the kernels' 32-bit indexing allows"),
])
def test_persistent_geometry_says_why_it_does_not_fit(T, B, H, limits, resident, fragment):
    with pytest.raises(PersistentUnfit) as unfit:
        plan_persistent(T, B, H, 4, limits, lambda *query: resident)
    assert fragment in str(unfit.value)


@pytest.mark.parametrize("setting, value", [(None, None), (True, True), (False, False), ("auto", None),
                                            (" AUTO ", None), ("1", True), ("yes", True), (" On ", True),
                                            ("0", False), ("false", False), ("OFF", False)])
def test_switch(setting, value):
    assert switch(setting, PERSISTENT_ENV) is value


def test_switch_rejects_other_values_naming_the_option():
    with pytest.raises(ValueError, match=f"{PERSISTENT_ENV} must be auto, 1/true/yes/on or 0/false/no/off, "
                                         f"got 'maybe'"):
        switch("maybe", PERSISTENT_ENV)


# ------------------------------------------------------------------ checks

def test_check_on_device():
    on = types.SimpleNamespace(device=types.SimpleNamespace(id=1))
    check_on_device("x", on, 1)
    with pytest.raises(ValueError, match="x is on CUDA device 1, the backend runs on device 0"):
        check_on_device("x", on, 0)


# ------------------------------------------------------------ availability

class FakeKernel:
    """A RawKernel stand-in: its shared memory limit, its function pointer, the launches it was given."""

    def __init__(self, name, cooperative):
        self.name, self.cooperative = name, cooperative
        self.max_dynamic_shared_size_bytes = 48 * 1024
        self.kernel = types.SimpleNamespace(ptr=1000 + len(name))
        self.launches = []

    def __call__(self, grid, block, args, **options):
        self.launches.append((grid, block, args, options))


def fake_cupy(devices=1, is_hip=False, runtime_error=None, compile_error=None):
    """A stand-in for the cupy module with what the probe and the device layer's persistent part touch."""
    def device_count():
        if runtime_error:
            raise runtime_error
        return devices

    class RawModule:
        def __init__(self, code, options, name_expressions, enable_cooperative_groups):
            self.cooperative = enable_cooperative_groups

        def get_function(self, name):
            if compile_error:
                raise compile_error
            return FakeKernel(name, self.cooperative)

    class Device:
        def __init__(self, device_id):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    attributes = {16: 132, 97: 227 * 1024, 95: 1}   # CUDA's numbers for these attributes
    cupy = types.ModuleType("cupy")   # hashable, as compiled_kernels' cache needs
    cupy.__version__, cupy.RawModule = "99.0", RawModule
    cupy.occupancy_queries = []
    runtime = types.SimpleNamespace(
        is_hip=is_hip, getDeviceCount=device_count, getDevice=lambda: 0,
        deviceGetAttribute=lambda attribute, device: attributes[attribute], cudaDevAttrMultiProcessorCount=16,
        cudaDevAttrMaxSharedMemoryPerBlockOptin=97, cudaDevAttrCooperativeLaunch=95)
    driver = types.SimpleNamespace(occupancyMaxActiveBlocksPerMultiprocessor=lambda *query:
                                   cupy.occupancy_queries.append(query) or 2)
    cupy.cuda = types.SimpleNamespace(runtime=runtime, driver=driver, Device=Device)
    return cupy


@pytest.fixture
def fake_device():
    """CudaDevice on a fake CuPy (its kernels cached apart from real ones, and forgotten after)."""
    cupy_backend.compiled_kernels.cache_clear()
    yield CudaDevice(fake_cupy())
    cupy_backend.compiled_kernels.cache_clear()


def test_device_layer_compiles_only_the_persistent_kernels_for_cooperative_launches(fake_device):
    cooperative = {name for name, kernel in fake_device._kernels.items() if kernel.cooperative}
    assert cooperative == set(cupy_backend.name_expressions("lstm_persistent.cu"))


def test_device_layer_reads_the_limits_and_raises_the_shared_memory_limit_before_asking_for_occupancy(fake_device):
    assert fake_device.persistent_limits() == DeviceLimits(sms=132, shared_per_block=227 * 1024, cooperative=True)
    name = "lstm_persistent_forward<double>"
    kernel = fake_device._kernels[name]
    assert fake_device.resident_blocks(name, 416, 25600) == 2
    assert kernel.max_dynamic_shared_size_bytes == 48 * 1024          # within the default: left alone
    assert fake_device.resident_blocks(name, 416, 51200) == 2
    assert kernel.max_dynamic_shared_size_bytes == 51200              # above it: raised first
    fake_device.resident_blocks(name, 416, 25600)
    assert kernel.max_dynamic_shared_size_bytes == 51200              # never lowered
    assert fake_device.xp.occupancy_queries == [(kernel.kernel.ptr, 416, 25600), (kernel.kernel.ptr, 416, 51200),
                                                (kernel.kernel.ptr, 416, 25600)]


def test_device_layer_launches_cooperatively_with_dynamic_shared_memory(fake_device):
    fake_device.launch_cooperative("lstm_persistent_backward<float>", 100, 416, 25600, ("args",))
    assert fake_device._kernels["lstm_persistent_backward<float>"].launches == \
        [((100,), (416,), ("args",), {"shared_mem": 25600})]


def importer(module=None, error=None, cublas_error=None):
    def import_module(name):
        if name == "cupy.cublas":
            if cublas_error:
                raise cublas_error
            return types.ModuleType(name)
        assert name == "cupy"
        if error:
            raise error
        return module
    return import_module


class CUDARuntimeError(RuntimeError):
    """Named like CuPy's, which is what a machine without a driver raises."""


@pytest.mark.parametrize("import_module, fragments", [
    (importer(error=ImportError("No module named 'cupy'")), ["CuPy is not installed", "ltexec[cuda12]"]),
    (importer(error=OSError("libcudart.so.13: cannot open")), ["CuPy fails to import", "OSError"]),
    (importer(fake_cupy(runtime_error=CUDARuntimeError("cudaErrorInsufficientDriver"))),
     ["no CUDA driver/device is usable", "CUDARuntimeError: cudaErrorInsufficientDriver"]),
    (importer(fake_cupy(devices=0)), ["there is no CUDA device"]),
    (importer(fake_cupy(is_hip=True)), ["ROCm"]),
    (importer(fake_cupy(), cublas_error=ImportError('Failure finding "libcublasLt.so.13"')),
     ["finds no cuBLAS", "libcublasLt.so.13", "[ctk]"]),
    (importer(fake_cupy(compile_error=RuntimeError("nvrtc: error: identifier undefined"))),
     ["do not compile", "identifier undefined"]),
])
def test_probe_names_what_is_missing(import_module, fragments):
    reason = probe(import_module)
    for fragment in fragments:
        assert fragment in reason


def test_probe_passes_a_working_setup():
    cupy_backend.compiled_kernels.cache_clear()   # the fake's kernels must not be mistaken for real ones
    try:
        assert probe(importer(fake_cupy())) is None
    finally:
        cupy_backend.compiled_kernels.cache_clear()


def test_module_imports_without_cupy():
    code = ("import sys; sys.modules['cupy'] = None\n"
            "from ltexec.backends import available_backends\n"
            "print(available_backends()['cupy'])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "CuPy is not installed" in result.stdout


@pytest.mark.skipif(DEVICE_REASON is None, reason="a CUDA device is usable here")
def test_registry_lists_cupy_as_unavailable_with_its_reason():
    assert available_backends()["cupy"] == DEVICE_REASON
    with pytest.raises(BackendUnavailable, match="backend 'cupy' is unavailable: .*CuPy"):
        get_backend("cupy")
    assert get_backend("auto").name != "cupy"


@pytest.mark.skipif(DEVICE_REASON is None, reason="a CUDA device is usable here")
def test_cupy_without_a_driver_is_reported_as_such():
    cupy = pytest.importorskip("cupy")   # installed but no driver: what CI machines with the extra look like
    assert f"CuPy {cupy.__version__} is installed but no CUDA driver/device is usable" in DEVICE_REASON


# --------------------------------------------- the backend on the emulation

def random_layer(rng, T, B, D, H, dtype):
    """Inputs xs, h0, c0 and weights Wx, Wh, b of one layer, rounded to ``dtype``."""
    xs, h0, c0 = rng.standard_normal((T, B, D)), rng.standard_normal((B, H)) * 0.5, rng.standard_normal((B, H))
    Wx, Wh = rng.uniform(-0.5, 0.5, (D, 4 * H)), rng.uniform(-0.5, 0.5, (H, 4 * H))
    b = rng.uniform(-0.5, 0.5, 4 * H)
    return [a.astype(dtype) for a in (xs, h0, c0, Wx, Wh, b)]


class LayerCheck:
    """Forward and backward of one layer on a backend against the float64 reference, call after call.

    Like a training loop, it keeps the weights and the gradient buffer dhs
    (refilled in place) from call to call and draws fresh values otherwise.
    """

    def __init__(self, backend, T, B, D, H, dtype, seed):
        self.backend, self.dtype, self.rng = backend, dtype, np.random.default_rng(seed)
        self.weights = random_layer(self.rng, T, B, D, H, dtype)[3:]
        self.dhs = np.empty((T, B, H), dtype)

    def __call__(self):
        rng, dtype, tol = self.rng, self.dtype, TOLERANCE[self.dtype]
        T, B, H = self.dhs.shape
        D = self.weights[0].shape[0]
        inputs = random_layer(rng, T, B, D, H, dtype)[:3] + self.weights
        ref = NumpyBackend(np.float64)
        hs, hT, cT, cache = self.backend.lstm_forward(*inputs, training=True)
        hs_ref, hT_ref, cT_ref, cache_ref = ref.lstm_forward(*[a.astype(np.float64) for a in inputs],
                                                             training=True)
        for got, want in zip((hs, hT, cT), (hs_ref, hT_ref, cT_ref)):
            assert rel_error(got, want) < tol
        self.dhs[...] = rng.standard_normal((T, B, H))
        dhT, dcT = (rng.standard_normal((B, H)).astype(dtype) for _ in range(2))
        grads_ref = ref.lstm_backward(self.dhs.astype(np.float64), dhT.astype(np.float64),
                                      dcT.astype(np.float64), cache_ref)
        grads = self.backend.lstm_backward(self.dhs, dhT, dcT, cache)
        for name, got, want in zip(("dxs", "dWx", "dWh", "db", "dh0", "dc0"), grads, grads_ref):
            assert got.dtype == dtype and got.shape == want.shape, name
            assert rel_error(got, want) < tol, name


def per_step(reason):
    return f"{PER_STEP} ({reason})"


@needs_gxx
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T, B, D, H", [(1, 1, 1, 1), (5, 3, 4, 37), (3, 2, 11, 12)])
def test_persistent_layer_is_one_launch_each_way_and_matches_reference(dtype, T, B, D, H):
    backend = emulated(dtype)
    device = backend._device
    assert backend.launch_mode == UNDECIDED
    check = LayerCheck(backend, T, B, D, H, dtype, seed=T * 1000 + B * 100 + D * 10 + H)
    check()
    geometry = plan_persistent(T, B, H, np.dtype(dtype).itemsize, emulation.EMULATED_LIMITS, one_per_sm)
    shared = geometry.shared_bytes("forward")
    launch = (geometry.grid, geometry.threads, shared)
    real = cupy_backend.REAL_TYPES[np.dtype(dtype)]
    forward, backward = (f"lstm_persistent_{way}<{real}>" for way in ("forward", "backward"))
    queries = guards = [("resident", kernel, geometry.threads, shared) for kernel in (forward, backward)]
    assert device.calls == ["gemm", *queries, guards[0], (forward, *launch),     # each launch checked first
                            guards[1], (backward, *launch), "gemm", "gemm", "gemm"]
    assert backend.launch_mode == PERSISTENT and backend.persistent_fallback_reason is None
    np.testing.assert_array_equal(backend._barrier, [0, 2 * T - 1])   # forward T-1 barriers, backward T
    device.calls.clear()
    check()                                                           # planned once per shape
    assert [call for call in device.calls if call[0] == "resident"] == guards


@needs_gxx
@pytest.mark.parametrize("dtype", DTYPES)
def test_per_step_layer_is_a_product_and_a_cell_kernel_per_step_and_matches_reference(dtype):
    T = 4
    backend = emulated(dtype, persistent=False)
    assert backend.launch_mode == per_step(TURNED_OFF) == backend.launch_mode
    LayerCheck(backend, T, 3, 4, 37, dtype, seed=7)()
    real = cupy_backend.REAL_TYPES[np.dtype(dtype)]
    assert backend._device.calls == ["gemm", *[f"lstm_cell_forward<{real}>", "gemm"][::-1] * T,
                                     *[f"lstm_cell_backward<{real}>", "gemm"] * T, "gemm", "gemm", "gemm"]
    assert backend.launch_mode == per_step(TURNED_OFF) and backend.persistent_fallback_reason == TURNED_OFF


@needs_gxx
@pytest.mark.parametrize("device_options, fragment", [
    ({"resident_per_sm": 0}, "needs 6 co-resident blocks of 32 threads with 4144 B of shared memory each, but the "
                             "device holds 0 at once"),
    ({"limits": DeviceLimits(sms=6, shared_per_block=1024, cooperative=True)},
     "needs 4144 B of shared memory per block (H=37, 7 units per block), above the 1024 B a block may have"),
    ({"limits": DeviceLimits(sms=6, shared_per_block=48 * 1024, cooperative=False)},
     "the device cannot launch cooperative kernels"),
])
def test_a_shape_that_does_not_fit_runs_per_step_and_says_why(device_options, fragment):
    backend = emulated(np.float32, **device_options)
    LayerCheck(backend, 5, 3, 4, 37, np.float32, seed=8)()
    reason = "persistent kernels do not fit at T=5, B=3, H=37: "
    assert backend.persistent_fallback_reason.startswith(reason) and fragment in backend.persistent_fallback_reason
    assert backend.launch_mode == per_step(backend.persistent_fallback_reason)
    assert all(not isinstance(call, tuple) or call[0] == "resident" for call in backend._device.calls)


def test_a_warning_from_cupys_cooperative_launch_is_an_error_not_a_smaller_grid():
    """CuPy shrinks a 1-D cooperative grid that does not fit, with only a warning: the launch raises it instead."""
    device = object.__new__(CudaDevice)                  # no GPU needed: the launch itself is stood in for

    def shrinking_launch(grid, block, args, shared_mem):
        warnings.warn(f"The grid size will be reduced from {grid[0]} to 12, as the specified grid size exceeds "
                      f"the limit.", stacklevel=2)

    device._kernels = {"k": shrinking_launch}
    with pytest.raises(UserWarning, match="reduced from 13 to 12"):
        device.launch_cooperative("k", 13, 64, 0, ())


@needs_gxx
@pytest.mark.parametrize("dtype", [np.float64])
def test_a_launch_the_device_can_no_longer_hold_falls_back_to_per_step_in_auto_mode(dtype):
    """Planned persistent, refused at launch (the occupancy now lower): per step, right, and said why."""
    backend = emulated(dtype)
    check = LayerCheck(backend, 3, 2, 4, 13, dtype, seed=5)
    check()
    assert backend.launch_mode == PERSISTENT
    backend._device.resident_per_sm = 0                                # e.g. another context took the SMs
    backend._device.calls.clear()
    check()                                                            # still against the reference
    assert backend.launch_mode.startswith(f"{PER_STEP} (persistent launch refused at T=3, B=2, H=13: ")
    assert "but the device holds 0 at once" in backend.persistent_fallback_reason
    launched = [call for call in backend._device.calls if isinstance(call, str) and "persistent" in call]
    assert launched == []                                              # no cooperative launch was tried
    check()                                                            # the shape stays per step
    assert backend.launch_mode.startswith(PER_STEP)


@needs_gxx
def test_persistent_true_refuses_a_launch_the_device_can_no_longer_hold():
    backend = emulated(np.float32, persistent=True)
    check = LayerCheck(backend, 2, 3, 4, 13, np.float32, seed=2)
    check()
    backend._device.resident_per_sm = 0
    with pytest.raises(ValueError, match=r"persistent=True, but the persistent kernels cannot run a layer of "
                                         r"T=2, B=3, H=13: .* holds 0 at once"):
        check()


@needs_gxx
def test_persistent_true_refuses_a_shape_that_does_not_fit():
    backend = emulated(np.float32, persistent=True, resident_per_sm=0)
    assert backend.launch_mode == PERSISTENT
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"persistent=True, but the persistent kernels cannot run a layer of "
                                         r"T=2, B=3, H=37: .* but the device holds 0 at once"):
        backend.lstm_forward(*random_layer(rng, 2, 3, 4, 37, np.float32), training=True)


@needs_gxx
def test_the_mode_follows_the_latest_layer_shape():
    """One shape fits, a wider one does not: each runs its own way, decided once, and launch_mode follows."""
    limits = DeviceLimits(sms=6, shared_per_block=4 * 12 * 2 * 8, cooperative=True)   # H = 12: 2 units fit
    backend = emulated(np.float64, limits=limits)
    narrow, wide = (LayerCheck(backend, 3, 2, 4, H, np.float64, seed=H) for H in (12, 13))
    narrow()
    assert backend.launch_mode == PERSISTENT
    wide()
    assert backend.launch_mode.startswith(f"{PER_STEP} (persistent kernels do not fit at T=3, B=2, H=13: ")
    narrow()
    assert backend.launch_mode == PERSISTENT
    queries = sum(call[0] == "resident" for call in backend._device.calls if isinstance(call, tuple))
    assert queries == 2 + 2 * 2       # planned once (both kernels), then each of the 2 x 2 launches checked first


@needs_gxx
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("persistent", [True, False])
def test_caches_held_across_calls_keep_their_buffers(dtype, persistent):
    """Caches held across calls and two layers with equal shapes: the pool never hands out a held buffer."""
    rng = np.random.default_rng(11)
    T, B, H = 4, 2, 5
    backend = emulated(dtype, persistent=persistent)
    ref = NumpyBackend(np.float64)
    layers = [random_layer(rng, T, B, H, H, dtype)[3:] for _ in range(2)]   # (Wx, Wh, b) of two layers
    held = []
    for call in range(6):
        Wx, Wh, b = layers[call % 2]
        xs, h0, c0 = (rng.standard_normal(s).astype(dtype) for s in ((T, B, H), (B, H), (B, H)))
        hs, _, _, cache = backend.lstm_forward(xs, h0, c0, Wx, Wh, b, training=True)
        hs_ref, _, _, cache_ref = ref.lstm_forward(*[a.astype(np.float64) for a in (xs, h0, c0, Wx, Wh, b)],
                                                   training=True)
        assert rel_error(hs, hs_ref) < TOLERANCE[dtype]
        if call % 3 == 0:
            held.append((hs, hs_ref, cache, cache_ref))   # kept alive: its buffers must stay untouched
    for hs, hs_ref, cache, cache_ref in held:
        assert rel_error(hs, hs_ref) < TOLERANCE[dtype]
        dhs = rng.standard_normal((T, B, H)).astype(dtype)
        zeros = np.zeros((B, H), dtype)
        dxs = backend.lstm_backward(dhs.copy(), zeros, zeros, cache)[0]
        dxs_ref = ref.lstm_backward(dhs.astype(np.float64), zeros.astype(np.float64), zeros.astype(np.float64),
                                    cache_ref)[0]
        assert rel_error(dxs, dxs_ref) < TOLERANCE[dtype]


def assert_training_windows_match_reference(backend, hidden, windows, T, B, tolerance, seed):
    """Whole training windows (2 layers, carried state) through the public model API against the reference."""
    rng = np.random.default_rng(seed)
    model = LSTMModel(51, hidden=hidden, layers=2, backend=backend, seed=seed)
    reference = LSTMModel(51, hidden=hidden, layers=2, backend=NumpyBackend(np.float64), seed=seed)
    host = backend.to_numpy
    state = state_ref = None
    for _ in range(windows):
        x, y = rng.integers(0, 51, (T, B)), rng.integers(0, 51, (T, B))
        mask = rng.random((T, B)) < 0.4
        result = model.loss_and_grads(x, y, mask, state)
        expected = reference.loss_and_grads(x, y, mask, state_ref)
        state, state_ref = result.state, expected.state
        assert abs(result.loss - expected.loss) < tolerance * abs(expected.loss)
        assert result.correct == expected.correct and result.count == expected.count
        for name in expected.grads:
            assert rel_error(host(result.grads[name]), expected.grads[name]) < tolerance, name
        for (h, c), (h_ref, c_ref) in zip(result.dstate, expected.dstate):
            assert rel_error(host(h), h_ref) < tolerance and rel_error(host(c), c_ref) < tolerance


@needs_gxx
@pytest.mark.parametrize("dtype", DTYPES)
def test_training_windows_run_persistent_and_match_reference(dtype):
    backend = emulated(dtype)
    assert_training_windows_match_reference(backend, hidden=9, windows=3, T=6, B=4, tolerance=TOLERANCE[dtype],
                                            seed=3)
    assert backend.launch_mode == PERSISTENT


# ------------------------------------------------------------------ graphs (removed)

def test_the_removed_graphs_variable_is_an_error_naming_it(monkeypatch):
    monkeypatch.setenv(GRAPHS_ENV, "1")
    with pytest.raises(ValueError, match=f"{GRAPHS_ENV} is set \\('1'\\), but the option it set was removed"):
        emulated(np.float32)


def test_the_emulated_capture_refuses_cublas_as_cupy_does():
    device = emulation.EmulatedDevice()
    a, out = np.ones((2, 3)), np.empty((2, 2))
    with device.capturing():
        with pytest.raises(NotImplementedError, match=emulation.CUBLAS_CAPTURE_ERROR):
            device.gemm(a, a, out, transpose_b=True)
    device.gemm(a, a, out, transpose_b=True)
    np.testing.assert_array_equal(out, np.full((2, 2), 3.0))


@needs_gxx
@pytest.mark.parametrize("persistent", [True, False])
def test_only_the_persistent_recurrence_could_be_captured(monkeypatch, persistent):
    """Everything between the window's products runs while the stream captures: no cuBLAS call may happen there.

    The persistent recurrence passes (and still matches the reference); the
    per-step one calls cuBLAS every step and is refused, as CuPy refuses it,
    which is why the backend never tries to capture it.
    """
    backend = emulated(np.float64, persistent=persistent)
    device = backend._device
    def captured(recurrence):
        def run(*args):
            with device.capturing():
                return recurrence(*args)
        return run

    for name in ("_forward_recurrence", "_backward_recurrence"):
        monkeypatch.setattr(backend, name, captured(getattr(backend, name)))
    check = LayerCheck(backend, 4, 3, 2, 37, np.float64, seed=6)
    if persistent:
        check()
    else:
        with pytest.raises(NotImplementedError, match=emulation.CUBLAS_CAPTURE_ERROR):
            check()


def test_the_emulated_device_refuses_a_cooperative_launch_that_does_not_fit():
    device = emulation.EmulatedDevice(resident_per_sm=1)
    with pytest.raises(RuntimeError, match="cudaErrorCooperativeLaunchTooLarge: 7 blocks"):
        device.launch_cooperative("lstm_persistent_forward<float>", 7, 32, 64, ())


# ------------------------------------------------------------------ options

@pytest.mark.parametrize("persistent, env, mode", [
    (None, None, UNDECIDED), (None, "auto", UNDECIDED), (None, "1", PERSISTENT), (None, "off", per_step(TURNED_OFF)),
    (True, "0", PERSISTENT), (False, "1", per_step(TURNED_OFF)), ("auto", "0", UNDECIDED)])
def test_persistent_option_and_its_environment_variable(monkeypatch, persistent, env, mode):
    if env is not None:
        monkeypatch.setenv(PERSISTENT_ENV, env)
    assert emulated(np.float32, persistent=persistent).launch_mode == mode


def test_bad_option_values_are_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv(PERSISTENT_ENV, "sometimes")
    with pytest.raises(ValueError, match=f"{PERSISTENT_ENV} must be auto"):
        emulated(np.float32)


def test_the_start_up_line_shows_the_launch_mode():
    lines = []
    Reporter(lines.append, live=None).started(TrainConfig(task="addition", length=3), 0.25,
                                              emulated(np.float32, persistent=False))
    assert lines[0].endswith(f"backend cupy (CPU emulation of the CUDA kernels; {per_step(TURNED_OFF)})")


# ------------------------------------------------------ on a CUDA device

@pytest.mark.gpu
@needs_device
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("persistent", [None, False])
def test_device_training_steps_match_reference(dtype, persistent):
    backend = CupyBackend(dtype, persistent=persistent)
    assert_training_windows_match_reference(backend, hidden=64, windows=4, T=20, B=16, tolerance=1e-4, seed=1)
    assert backend.launch_mode == (PERSISTENT if persistent is None else per_step(TURNED_OFF))


@pytest.mark.gpu
@needs_device
@pytest.mark.parametrize("dtype", DTYPES)
def test_device_runs_the_paper_size_persistent(dtype):
    backend = CupyBackend(dtype)
    if backend._limits.sms < 100:
        pytest.skip(f"{backend._limits.sms} SMs: H = 400 needs more than 4 units per block")
    LayerCheck(backend, 10, 100, 51, 400, dtype, seed=2)()
    assert backend.launch_mode == PERSISTENT


@pytest.mark.gpu
@needs_device
def test_device_is_named():
    assert "CUDA device" in CupyBackend(np.float32).device_name()
