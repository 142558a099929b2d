"""The persistent LSTM kernels without a GPU or the simulator: geometry, co-residency, a multi-block
emulation and real compiles.

* Geometry and co-residency are plain functions of the shapes and of an
  injected ``max_cooperative_grid_blocks``; checked here, including the
  paper's size (H = 400, B = 100) on an A100 (sm_80, 108 SMs) and an
  H100/H200 (sm_90, 132 SMs) in both dtypes.
* The backend's plan per layer shape (:func:`persistent_plan`): one
  persistent launch where the grid fits, else per-step launches with the
  reason (or a ValueError with ``persistent=True``), from an injected SM
  count and ``max_cooperative_grid_blocks``; and the ``persistent`` option's
  values, also through ``LTEXEC_NUMBA_CUDA_PERSISTENT``.
* Several blocks, emulated: the simulator runs grids of one block only
  (tests/backends/numba_cuda/test_numba_cuda_device_persistent.py), so here the kernels' per-item
  functions (their own source, as plain Python: ``step_functions``) run for
  every block of a several-block grid, phase by phase: the shared-memory
  load, then each time step for every block, then (backward) dh0, which is
  what the grid barrier between phases guarantees. Items run in a random
  order within a phase, and every array access is recorded.
  What this proves: every unit belongs to exactly one block (ragged last
  block included); the shared-memory layouts and indexing with a block
  offset j0 > 0, which a one-block run never exercises; every index is
  inside its array; every element is written by one work item only; and
  within a phase no item reads an element another item writes, so one
  barrier per step (and none inside a step) suffices; the results match the
  reference. What it does not prove: that the compiled kernel behaves like
  this Python (the simulator run and the compiles below cover that part),
  that the hardware grid barrier orders memory between blocks, that the
  grid fits on a device (co-residency), or anything about warps and timing:
  only a GPU shows those.
* Real compiles: both kernels to PTX for sm_80 and sm_90 in both dtypes,
  with the dynamic shared array, the grid barrier, no local memory, no
  non-coherent loads (h_{t-1} and dA_{t+1} are written by other blocks
  during the launch) and no float64 instruction in float32 kernels; ptxas
  (relocatable: the grid barrier is a call into the device runtime) reports
  no spills and few enough registers for MAX_THREADS threads per block.
"""

import re
import subprocess
from collections import defaultdict

import numpy as np
import pytest
from cuda_toolkit import toolkit_program

from ltexec.testing import assert_relative_error_below
from ltexec.backends.numba_cuda.backend import (PERSISTENT_ENV, TURNED_OFF, NumbaCudaBackend, persistent_plan,
                                        persistent_requested)
from ltexec.backends.numpy.backend import cell_backward, cell_forward
from ltexec.backends.persistent_plan import DIRECTIONS, persistent_geometry, residency_problem

P = pytest.importorskip("ltexec.backends.numba_cuda.persistent", reason="numba-cuda is not installed")

DTYPES = [np.float32, np.float64]
TOLERANCE = {np.float32: 1e-4, np.float64: 1e-10}
KB = 1024


# ------------------------------------------------------------------- geometry

@pytest.mark.parametrize("H, B, max_blocks", [(400, 100, 132), (37, 5, 6), (1, 1, 1), (3000, 600, 300)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_kernels_take_the_shared_plan_with_padded_backward_rows(H, B, max_blocks, dtype):
    assert P.launch_geometry(H, B, dtype, max_blocks) == persistent_geometry(
        H, B, np.dtype(dtype).itemsize, max_blocks, max_threads=P.MAX_THREADS, backward_row_pitch=4 * H + 1)


def test_geometry_refuses_bad_arguments():
    with pytest.raises(ValueError, match="H must be a positive integer, got 0"):
        P.launch_geometry(0, 2, np.float32, 4)
    with pytest.raises(ValueError, match="dtype must be float32 or float64, got float16"):
        P.launch_geometry(5, 2, np.float16, 4)


def test_shared_memory_limits():
    assert P.DEFAULT_SHARED_BYTES == 48 * KB
    assert P.shared_memory_limit((8, 0)) == 163 * KB and P.shared_memory_limit((9, 0)) == 227 * KB
    assert P.shared_memory_limit((8, 6)) == 99 * KB
    assert P.shared_memory_limit((12, 7)) == 48 * KB                       # unknown: no opt-in assumed


def modelled_occupancy(shared_per_sm: int, sms: int, calls: list):
    """max_cooperative_grid_blocks of a device with ``sms`` SMs limited by shared memory (1 KB reserved
    per block) and 2048 threads per SM; registers are checked by the compile tests."""
    def max_blocks(direction, threads, nbytes):
        calls.append((direction, threads, nbytes))
        return min(shared_per_sm // (nbytes + KB), 2048 // threads, 32) * sms
    return max_blocks


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cc, sms, shared_per_sm", [((8, 0), 108, 164 * KB), ((9, 0), 132, 228 * KB)])
def test_paper_size_fits_with_every_block_resident(dtype, cc, sms, shared_per_sm):
    """H = 400, B = 100, one block per SM: 4 units per block, 100 blocks of 416 threads."""
    g = P.launch_geometry(400, 100, dtype, max_blocks=sms)
    assert (g.units_per_block, g.grid, g.threads) == (4, 100, 416)
    itemsize = np.dtype(dtype).itemsize
    assert g.forward_shared_bytes == 400 * 16 * itemsize and g.backward_shared_bytes == 4 * 1601 * itemsize
    assert (g.forward_shared_bytes > P.DEFAULT_SHARED_BYTES) == (dtype == np.float64)   # float64 needs the opt-in
    calls = []
    assert residency_problem(g, P.shared_memory_limit(cc), modelled_occupancy(shared_per_sm, sms, calls)) is None
    assert calls == [(direction, 416, g.shared_bytes(direction)) for direction in DIRECTIONS]


# -------------------------------------------------------- the backend's plan

def device(cc, sms, shared_per_sm, calls=None):
    """A device's residency_problem(geometry), as the backend asks it, from the occupancy model above."""
    max_blocks = modelled_occupancy(shared_per_sm, sms, [] if calls is None else calls)
    return lambda g: residency_problem(g, P.shared_memory_limit(cc), max_blocks)


H100 = ((9, 0), 132, 228 * KB)


@pytest.mark.parametrize("setting, requested", [(None, None), ("auto", None), (" Auto ", None), (True, True),
                                                ("1", True), (1, True), ("on", True), ("TRUE", True), ("yes", True),
                                                (False, False), ("0", False), (0, False), ("off", False),
                                                ("false", False), ("no", False)])
def test_persistent_settings(setting, requested):
    assert persistent_requested(setting) is requested


def test_a_bad_persistent_setting_is_refused_naming_the_variable_before_any_device_is_asked(monkeypatch):
    message = r"LTEXEC_NUMBA_CUDA_PERSISTENT must be auto, 1/true/yes/on or 0/false/no/off, got 'x'"
    with pytest.raises(ValueError, match=message):
        persistent_requested("x")
    with pytest.raises(ValueError, match=message):
        NumbaCudaBackend(np.float32, persistent="x")
    monkeypatch.setenv(PERSISTENT_ENV, "x")
    with pytest.raises(ValueError, match=message):
        NumbaCudaBackend(np.float32)


@pytest.mark.parametrize("requested", [None, True])
def test_the_paper_size_plans_one_persistent_launch(requested):
    calls = []
    geometry, reason = persistent_plan(requested, 100, 400, np.float32, 132, device(*H100, calls))
    assert reason is None and (geometry.grid, geometry.units_per_block, geometry.threads) == (100, 4, 416)
    assert [direction for direction, *_ in calls] == list(DIRECTIONS)


def test_a_shape_that_does_not_fit_falls_back_with_the_reason_or_is_refused():
    """H = 2000 over 132 SMs: 16 units per block need 500 KiB of Wh columns forward; on a device holding 64
    co-resident blocks the paper's 100 do not fit."""
    too_wide = ("the forward kernel needs 512000 B of shared memory per block (H=2000, 16 units per block), "
                "above the 232448 B a block may have")
    assert persistent_plan(None, 100, 2000, np.float32, 132, device(*H100)) == (
        None, f"persistent kernels do not fit at B=100, H=2000: {too_wide}")
    with pytest.raises(ValueError, match=re.escape(
            f"persistent=True, but the persistent kernels cannot run a layer of B=100, H=2000: {too_wide}")):
        persistent_plan(True, 100, 2000, np.float32, 132, device(*H100))
    too_many = ("the forward kernel needs 100 co-resident blocks of 416 threads with 25600 B of shared memory "
                "each, but the device holds 64 at once")
    holding_64 = lambda g: residency_problem(g, 227 * KB, lambda direction, threads, nbytes: 64)   # noqa: E731
    assert persistent_plan(None, 100, 400, np.float32, 132, holding_64) == (
        None, f"persistent kernels do not fit at B=100, H=400: {too_many}")


def test_persistent_false_plans_per_step_launches_without_asking_the_device():
    def unasked(geometry):
        raise AssertionError("the device was asked")
    assert persistent_plan(False, 100, 400, np.float32, 132, unasked) == (None, TURNED_OFF)
    assert TURNED_OFF == "persistent kernels turned off: persistent=False or LTEXEC_NUMBA_CUDA_PERSISTENT=0"


# --------------------------------------------------------- several blocks

class Recorder:
    """Every access to the tracked arrays: who (block, item) read or wrote which element in which phase."""

    def __init__(self):
        self.phase, self.who = None, None
        self.writers = defaultdict(set)                  # (array, index) -> {who}
        self.phase_writers = defaultdict(set)            # (phase, array, index) -> {who}
        self.phase_readers = defaultdict(set)

    def check_races(self):
        """One writer per element; within a phase, no item reads what another item writes."""
        for key, who in self.writers.items():
            assert len(who) == 1, f"{key} written by {sorted(who)}"
        for key, readers in self.phase_readers.items():
            writers = self.phase_writers.get(key, set())
            assert not writers or readers <= writers, f"{key}: read by {sorted(readers)}, written by {sorted(writers)}"


class Tracked:
    """An array whose element reads and writes go to a Recorder (indices must be in bounds, no wrapping)."""

    def __init__(self, name, array, recorder):
        self.name, self.array, self.recorder = name, array, recorder
        self.shape = array.shape

    def _key(self, index):
        index = index if isinstance(index, tuple) else (index,)
        assert len(index) == self.array.ndim and all(0 <= i < n for i, n in zip(index, self.shape)), \
            f"{self.name}[{index}] outside {self.shape}"
        return self.name, tuple(int(i) for i in index)

    def __getitem__(self, index):
        key = self._key(index)
        self.recorder.phase_readers[(self.recorder.phase, *key)].add(self.recorder.who)
        return self.array[index]

    def __setitem__(self, index, value):
        key = self._key(index)
        rec = self.recorder
        rec.writers[key].add(rec.who)
        rec.phase_writers[(rec.phase, *key)].add(rec.who)
        self.array[index] = value


def emulate(geometry, dtype, arrays: dict, backward: bool, seed: int) -> Recorder:
    """One launch of the forward or backward kernel, block by block and phase by phase, as the grid barrier
    orders them; mirrors the kernels' loops around their per-item functions."""
    fn, g = P.step_functions(dtype), geometry
    rng, rec = np.random.default_rng(seed), Recorder()
    tracked = {name: Tracked(name, a, rec) for name, a in arrays.items()}
    blocks = [fn.block_units(blk, g.units_per_block, g.H) for blk in range(g.grid)]
    shared = [Tracked(f"w_s{blk}", np.full(g.shared_bytes(DIRECTIONS[backward]) // g.itemsize, np.nan, dtype),
                      rec) for blk in range(g.grid)]

    def phase(name, count, work):
        """Every block's items of one phase, in a random order (count(n) items for a block of n units)."""
        rec.phase = name
        order = [(blk, e) for blk, (_, n) in enumerate(blocks) for e in range(count(n))]
        for k in rng.permutation(len(order)):
            blk, e = order[k]
            rec.who = (blk, e)
            j0, n = blocks[blk]
            work(e, j0, n, shared[blk])

    a, H, T, B = tracked, g.H, arrays["dhs" if backward else "hs"].shape[0], g.B
    if not backward:
        phase("load", lambda n: H * 4 * n, lambda e, j0, n, w_s: fn.forward_load(e, j0, n, a["Wh"], w_s))
        for t in range(T):
            phase(t, lambda n: n * B, lambda e, j0, n, w_s, t=t: fn.forward_item(
                t, e, j0, n, w_s, a["xproj"], a["h0"], a["c0"], a["b"], a["hs"], a["cs"], a["gates"]))
        return rec
    phase("load", lambda n: n * 4 * H, lambda e, j0, n, w_s: fn.backward_load(e, j0, a["Wh"], w_s))
    for t in reversed(range(T)):
        phase(t, lambda n: n * B, lambda e, j0, n, w_s, t=t: fn.backward_item(
            t, e, j0, n, w_s, a["gates"], a["cs"], a["c0"], a["dhs"], a["dhT"], a["dcT"], a["dA"], a["dc0"]))
    phase("dh0", lambda n: n * B, lambda e, j0, n, w_s: fn.dh0_item(e, j0, n, w_s, a["dA"], a["dh0"]))
    return rec


def random_inputs(rng, dtype, T, B, H) -> dict:
    def uniform(shape, scale=1.0):
        return rng.uniform(-scale, scale, shape).astype(dtype)

    return dict(xproj=uniform((T, B, 4 * H)), h0=uniform((B, H)), c0=uniform((B, H)), Wh=uniform((H, 4 * H), 0.7),
                b=uniform((4 * H,), 0.5), dhs=uniform((T, B, H)), dhT=uniform((B, H)), dcT=uniform((B, H)))


def forward_reference(x: dict) -> dict:
    """hs, cs, gates of the reference's cells in float64."""
    f64 = {name: a.astype(np.float64) for name, a in x.items()}
    h, c, out = f64["h0"], f64["c0"], defaultdict(list)
    for t in range(len(f64["xproj"])):
        h, c, cache = cell_forward(f64["xproj"][t], h, c, f64["Wh"], f64["b"])
        out["hs"].append(h)
        out["cs"].append(c)
        out["gates"].append(np.concatenate(cache[:4], axis=1))
    return {name: np.stack(values) for name, values in out.items()}


def backward_reference(x: dict, gates, cs) -> dict:
    """dA, dh0, dc0 of the reference's cells in float64, from the given activations and cells."""
    f64 = {name: a.astype(np.float64) for name, a in x.items()}
    gates, cs = gates.astype(np.float64), cs.astype(np.float64)
    c_prev = np.concatenate([f64["c0"][None], cs[:-1]])
    dh, dc, dA = f64["dhT"], f64["dcT"], [None] * len(cs)
    for t in reversed(range(len(cs))):
        cache = (*np.split(gates[t], 4, axis=1), c_prev[t], np.tanh(cs[t]), f64["Wh"])
        dA[t], dh, dc = cell_backward(f64["dhs"][t] + dh, dc, cache)
    return {"dA": np.stack(dA), "dh0": dh, "dc0": dc}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T, B, H, max_blocks, units", [(4, 3, 10, 3, [4, 4, 2]), (4, 3, 10, 4, [3, 3, 3, 1]),
                                                        (3, 2, 7, 7, [1] * 7), (2, 1, 9, 2, [5, 4]),
                                                        (3, 2, 5, 1, [5])])
def test_several_blocks_emulated_phase_by_phase(dtype, T, B, H, max_blocks, units):
    x = random_inputs(np.random.default_rng(T * B * H + max_blocks), dtype, T, B, H)
    g = P.launch_geometry(H, B, dtype, max_blocks)
    fn = P.step_functions(dtype)
    assert [fn.block_units(blk, g.units_per_block, H) for blk in range(g.grid)] == \
        [(sum(units[:blk]), n) for blk, n in enumerate(units)]

    def poisoned(shape):
        return np.full(shape, np.nan, dtype)

    fwd = {name: x[name] for name in ("xproj", "h0", "c0", "Wh", "b")}
    fwd.update(hs=poisoned((T, B, H)), cs=poisoned((T, B, H)), gates=poisoned((T, B, 4 * H)))
    emulate(g, dtype, fwd, backward=False, seed=1).check_races()
    for name, expected in forward_reference(x).items():
        assert_relative_error_below(name, fwd[name], expected, TOLERANCE[dtype])

    bwd = {name: x[name] for name in ("c0", "Wh", "dhs", "dhT", "dcT")}
    bwd.update(gates=fwd["gates"], cs=fwd["cs"], dA=poisoned((T, B, 4 * H)), dh0=poisoned((B, H)),
               dc0=poisoned((B, H)))
    emulate(g, dtype, bwd, backward=True, seed=2).check_races()
    for name, expected in backward_reference(x, fwd["gates"], fwd["cs"]).items():
        assert_relative_error_below(name, bwd[name], expected, TOLERANCE[dtype])


def test_the_race_check_catches_a_read_of_this_steps_output():
    """The recorder flags an item reading an element another item writes in the same phase."""
    rec = Recorder()
    a = Tracked("h", np.zeros(2), rec)
    rec.phase = 0
    rec.who = (0, 0)
    a[0] = 1.0
    rec.who = (1, 0)
    a[0]
    with pytest.raises(AssertionError, match="read by"):
        rec.check_races()


# -------------------------------------------------------------------- compile



def ptxas_report(ptx_file, arch: str) -> str:
    """ptxas's resource report, compiling relocatable code (-c): the grid barrier calls the device runtime."""
    ptxas = toolkit_program("ptxas")
    if ptxas is None:
        pytest.skip("ptxas is not installed (pip install nvidia-cuda-nvcc, or a CUDA toolkit on PATH)")
    report = subprocess.run([ptxas, f"-arch={arch}", "-c", "-v", str(ptx_file), "-o", str(ptx_file) + ".o"],
                            capture_output=True, text=True, timeout=300)
    too_new = re.search(r"Unsupported \.version (\S+); current version is '(\S+)'", report.stderr)
    if too_new:
        pytest.skip(f"{ptxas} reads PTX ISA up to {too_new[2]}, NVVM wrote {too_new[1]}")
    assert report.returncode == 0, report.stderr
    return report.stderr


@pytest.mark.parametrize("cc", [(8, 0), (9, 0)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernels_compile_without_spills(compile_ptx, dtype, cc, tmp_path):
    kernels, signatures = P.kernels(dtype), P.signatures(dtype)
    assert tuple(kernels) == tuple(signatures) == tuple(P.KERNEL_NAMES.values())
    for name, kernel in kernels.items():
        ptx = compile_ptx(kernel, signatures[name], cc)
        assert f".target sm_{cc[0]}{cc[1]}" in ptx and ".entry" in ptx, name
        assert re.search(r"\.extern \.shared \.align \d+ \.b8 \w+\[\]", ptx), f"{name}: no dynamic shared array"
        assert not re.search(r"\.shared \.align \d+ \.b8 \w+\[\d+\]", ptx), f"{name}: static shared memory"
        assert "cudaCGSynchronize" in ptx, f"{name}: no grid barrier"
        assert ".local" not in ptx, f"{name}: uses local memory"
        assert "ld.global.nc" not in ptx, f"{name}: non-coherent loads"
        if dtype == np.float32:
            doubles = sorted(set(re.findall(r"\b[\w.]+\.f64\b", ptx)))
            assert not doubles, f"{name}: float64 instructions in a float32 kernel: {doubles}"
        source = tmp_path / f"{name}.ptx"
        source.write_text(ptx)
        report = ptxas_report(source, f"sm_{cc[0]}{cc[1]}")
        assert "0 bytes spill stores, 0 bytes spill loads" in report, f"{name}: {report}"
        registers = int(re.search(r"Used (\d+) registers", report)[1])
        assert registers * P.MAX_THREADS <= 64 * KB, f"{name}: {registers} registers x {P.MAX_THREADS} threads"
        print(f"{name} {np.dtype(dtype).name} sm_{cc[0]}{cc[1]}: {registers} registers, no spills")
