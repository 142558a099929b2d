"""What only the CuPy backend has: launch geometry, the probe, CUDA graphs; without a GPU where possible.

Every operation against the NumPy reference (on the emulated device and on a
real one) is in tests/backends/test_conformance.py. Here:

* Pure logic: launch geometry, the device check, the graph policy
  (:class:`StepGraphs` with fake capture), and the availability probe with
  fake CuPy modules (not installed, no driver, no device, ROCm, no cuBLAS,
  kernels that do not compile).
* Registry: here ``cupy`` is listed as unavailable with its reason, asking
  for it raises BackendUnavailable, ``auto`` passes it over.
* Graphs on the CPU: ``CupyBackend`` with the emulated device layer of
  tests/cuda_emulation runs its real window logic (buffers, step loops,
  graph keys, products) with the real kernels compiled by g++, compared with
  the NumPy reference while graphs are run plainly, captured and replayed;
  the emulated capture replays recorded raw addresses, so a graph replayed
  on the wrong buffers gives wrong numbers. Pool buffers are poisoned with
  NaN whenever they are handed out. Error measure ``max|x - ref| /
  max|ref|``: below 2e-5 in float32 (a window of several steps; one step is
  held to 1e-5 in test_cupy_kernels.py) and below 1e-12 in float64.
* On a CUDA device (skipped elsewhere, with the reason): whole training
  windows with graphs on and off.
"""

import subprocess
import sys
import types

import numpy as np
import pytest

import cuda_emulation as emulation
from closeness import relative_error as rel_error
from ltexec.backends import BackendUnavailable, available_backends, get_backend
from ltexec.backends import cupy_backend
from ltexec.backends.common import BufferPool
from ltexec.backends.cupy_backend import (CupyBackend, StepGraphs, check_on_device, graph_key,
                                          graph_unavailable_reason, graphs_requested, launch_geometry, probe,
                                          softmax_block)
from ltexec.backends.numpy_backend import NumpyBackend
from ltexec.model import LSTMModel

TOLERANCE = {np.float32: 2e-5, np.float64: 1e-12}
DTYPES = [np.float32, np.float64]
DEVICE_REASON = cupy_backend.probe()

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


def emulated(dtype, **device_options):
    return CupyBackend(dtype, device=emulation.EmulatedDevice(**device_options))


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


# ------------------------------------------------------------------ checks

def test_check_on_device():
    on = types.SimpleNamespace(device=types.SimpleNamespace(id=1))
    check_on_device("x", on, 1)
    with pytest.raises(ValueError, match="x is on CUDA device 1, the backend runs on device 0"):
        check_on_device("x", on, 0)


# ------------------------------------------------------------- graph policy

@pytest.mark.parametrize("setting, wanted", [(None, True), ("", True), ("1", True), ("yes", True), (" On ", True),
                                             ("0", False), ("false", False), ("OFF", False), (True, True),
                                             (False, False)])
def test_graphs_requested(setting, wanted):
    assert graphs_requested(setting) is wanted


def test_graphs_requested_rejects_other_values():
    with pytest.raises(ValueError, match=cupy_backend.GRAPHS_ENV):
        graphs_requested("maybe")


@pytest.mark.parametrize("requested, is_hip, has_capture, fragment", [
    (True, False, True, None), (False, False, True, "turned off"), (True, True, True, "ROCm"),
    (True, False, False, "no stream capture"), (False, True, False, "turned off")])
def test_graph_unavailable_reason(requested, is_hip, has_capture, fragment):
    reason = graph_unavailable_reason(requested, is_hip, has_capture)
    assert reason is None if fragment is None else fragment in reason


def test_graph_key_tells_arrays_apart():
    a, b = np.zeros((2, 3)), np.zeros((2, 3))
    key = graph_key("forward", [a, b], lambda x: x.ctypes.data)
    assert key == graph_key("forward", [a, b], lambda x: x.ctypes.data)
    assert key != graph_key("forward", [b, a], lambda x: x.ctypes.data)
    assert key != graph_key("backward", [a, b], lambda x: x.ctypes.data)
    assert key != graph_key("forward", [a, b.reshape(3, 2)], lambda x: x.ctypes.data)
    assert key != graph_key("forward", [a, b.astype(np.float32)], lambda x: x.ctypes.data)


class FakeCapture:
    """Stream capture that logs what happens: records run plainly, captured, or graphs launched."""

    def __init__(self, error=None):
        self.log, self.capturing, self.error = [], False, error

    def record(self):
        self.log.append("capture" if self.capturing else "run")

    def capture(self, record):
        if self.error:
            raise self.error
        self.capturing = True
        record()
        self.capturing = False
        return f"graph{len(self.log)}"

    def launch(self, graph):
        self.log.append(graph)


def test_step_graphs_run_plain_then_capture_then_replay():
    fake = FakeCapture()
    graphs = StepGraphs(fake.capture, fake.launch)
    for _ in range(4):
        graphs.run(("a",), 50, fake.record)
    graphs.run(("b",), 50, fake.record)
    assert fake.log == ["run", "capture", "graph2", "graph2", "graph2", "run"]
    assert graphs.stats == {"plain": 2, "captured": 1, "replayed": 2}
    assert graphs.mode == "graph" and graphs.reason is None


def test_step_graphs_leave_short_windows_plain():
    fake = FakeCapture()
    graphs = StepGraphs(fake.capture, fake.launch, min_steps=4)
    for _ in range(3):
        graphs.run(("a",), 3, fake.record)
    assert fake.log == ["run"] * 3


def test_step_graphs_fall_back_for_good_when_capture_fails():
    fake = FakeCapture(error=RuntimeError("cudaErrorStreamCaptureUnsupported"))
    graphs = StepGraphs(fake.capture, fake.launch)
    for _ in range(3):
        graphs.run(("a",), 50, fake.record)
    assert fake.log == ["run"] * 3
    assert graphs.mode == "plain"
    assert "stream capture failed (RuntimeError: cudaErrorStreamCaptureUnsupported)" in graphs.reason


def test_step_graphs_turned_off_never_capture():
    fake = FakeCapture()
    graphs = StepGraphs(fake.capture, fake.launch, reason="turned off")
    for _ in range(3):
        graphs.run(("a",), 50, fake.record)
    assert fake.log == ["run"] * 3 and graphs.mode == "plain"


def test_step_graphs_forget_the_least_recently_used():
    fake = FakeCapture()
    graphs = StepGraphs(fake.capture, fake.launch, capacity=2)
    for key in ["a", "a", "b", "b", "a", "c", "c", "a", "b"]:
        graphs.run((key,), 50, fake.record)
    # a, b captured; a replayed; c captured evicts b (least recent); a replayed; b starts over
    assert fake.log == ["run", "capture", "graph2", "run", "capture", "graph5", "graph2",
                        "run", "capture", "graph9", "graph2", "run"]


# ------------------------------------------------------------ availability

def fake_cupy(devices=1, is_hip=False, runtime_error=None, compile_error=None):
    """A stand-in for the cupy module with just what the probe touches."""
    def device_count():
        if runtime_error:
            raise runtime_error
        return devices

    class RawModule:
        def __init__(self, code, options, name_expressions):
            self.code = code

        def get_function(self, name):
            if compile_error:
                raise compile_error
            return name

    class Device:
        def __init__(self, device_id):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    cupy = types.ModuleType("cupy")   # hashable, as compiled_kernels' cache needs
    cupy.__version__, cupy.RawModule = "99.0", RawModule
    runtime = types.SimpleNamespace(is_hip=is_hip, getDeviceCount=device_count, getDevice=lambda: 0)
    cupy.cuda = types.SimpleNamespace(runtime=runtime, Device=Device)
    return cupy


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


@needs_gxx
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T, B, D, H", [(1, 1, 1, 1), (5, 3, 4, 6), (6, 3, 11, 90), (4, 2, 51, 7)])
def test_step_loops_run_plain_then_captured_then_replayed_and_match_reference(dtype, T, B, D, H):
    backend = emulated(dtype)
    check = LayerCheck(backend, T, B, D, H, dtype, seed=T * 1000 + B * 100 + D * 10 + H)
    for _ in range(3):   # forward and backward: run plainly, captured, replayed (for T >= GRAPH_MIN_STEPS)
        check()
    graphed = T >= cupy_backend.GRAPH_MIN_STEPS
    assert backend.step_graphs.stats == ({"plain": 2, "captured": 2, "replayed": 2} if graphed
                                         else {"plain": 6, "captured": 0, "replayed": 0})


@needs_gxx
@pytest.mark.parametrize("dtype", DTYPES)
def test_graphs_replay_only_on_the_buffers_they_were_captured_on(dtype):
    """Caches held across calls and two layers with equal shapes: every replay must hit its own buffers."""
    rng = np.random.default_rng(11)
    T, B, H = 6, 2, 5
    backend = emulated(dtype)
    ref = NumpyBackend(np.float64)
    layers = [random_layer(rng, T, B, H, H, dtype)[3:] for _ in range(2)]   # (Wx, Wh, b) of two layers
    held = []
    for call in range(8):
        Wx, Wh, b = layers[call % 2]
        xs, h0, c0 = (rng.standard_normal(s).astype(dtype) for s in ((T, B, H), (B, H), (B, H)))
        hs, _, _, cache = backend.lstm_forward(xs, h0, c0, Wx, Wh, b, training=True)
        f64 = [a.astype(np.float64) for a in (xs, h0, c0, Wx, Wh, b)]
        hs_ref, _, _, cache_ref = ref.lstm_forward(*f64, training=True)
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
    assert backend.step_graphs.stats["replayed"] > 0


@needs_gxx
def test_graph_keys_cover_every_array_a_graph_touches(monkeypatch):
    """A graph may be replayed whenever its key matches, so the key must name all the memory it uses."""
    backend = emulated(np.float32)
    graphs, current_key, captured = backend.step_graphs, [], []
    run, capture = graphs.run, graphs._capture

    def run_noting_key(key, steps, record):
        current_key[:] = [key]
        run(key, steps, record)

    def capture_noting_key(record):
        graph = capture(record)
        captured.append((current_key[0], graph))
        return graph

    monkeypatch.setattr(graphs, "run", run_noting_key)
    monkeypatch.setattr(graphs, "_capture", capture_noting_key)
    check = LayerCheck(backend, 5, 2, 3, 4, np.float32, seed=4)
    for _ in range(3):
        check()
    assert {key[0] for key, _ in captured} == {"forward", "backward"}
    for key, graph in captured:
        extents = [(address, address + int(np.prod(shape)) * np.dtype(dtype).itemsize)
                   for address, shape, dtype, _ in key[1:]]
        for address, nbytes in graph.regions:
            assert any(low <= address and address + nbytes <= high for low, high in extents), \
                f"the {key[0]} graph touches memory outside its key"


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
def test_training_windows_reach_graph_steady_state_and_match_reference(dtype):
    backend = emulated(dtype)
    assert_training_windows_match_reference(backend, hidden=9, windows=5, T=6, B=4, tolerance=TOLERANCE[dtype],
                                            seed=3)
    assert backend.launch_mode == "graph" and backend.step_graphs.stats["replayed"] >= 4


@needs_gxx
def test_failed_capture_falls_back_to_plain_launches():
    backend = emulated(np.float64, capture_error=RuntimeError("operation not permitted when stream is capturing"))
    assert backend.launch_mode == "graph"
    check = LayerCheck(backend, 5, 2, 3, 4, np.float64, seed=2)
    for _ in range(3):
        check()
    assert backend.launch_mode == "plain"
    assert "operation not permitted" in backend.graph_fallback_reason
    assert backend.step_graphs.stats == {"plain": 6, "captured": 0, "replayed": 0}


@needs_gxx
@pytest.mark.parametrize("graphs, env, mode", [(False, None, "plain"), (None, "0", "plain"), (None, None, "graph"),
                                               (True, "0", "graph")])
def test_graphs_can_be_turned_off(monkeypatch, graphs, env, mode):
    if env is None:
        monkeypatch.delenv(cupy_backend.GRAPHS_ENV, raising=False)
    else:
        monkeypatch.setenv(cupy_backend.GRAPHS_ENV, env)
    backend = CupyBackend(np.float32, graphs=graphs, device=emulation.EmulatedDevice())
    assert backend.launch_mode == mode
    assert (backend.graph_fallback_reason is None) == (mode == "graph")


# ------------------------------------------------------ on a CUDA device

@pytest.mark.gpu
@needs_device
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("graphs", [True, False])
def test_device_training_steps_match_reference(dtype, graphs):
    backend = CupyBackend(dtype, graphs=graphs)
    assert_training_windows_match_reference(backend, hidden=64, windows=4, T=20, B=16, tolerance=1e-4, seed=1)
    assert backend.launch_mode == ("graph" if graphs else "plain"), backend.graph_fallback_reason
    if graphs:
        assert backend.step_graphs.stats["replayed"] > 0


@pytest.mark.gpu
@needs_device
def test_device_is_named():
    assert "CUDA device" in CupyBackend(np.float32).device_name()
