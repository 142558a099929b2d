"""benchmarks/kernel_check.py on the C++ emulation of the kernels (tests/cuda_emulation).

* Every kernel passes at the small size as a command (one process per kernel, all at once): exit 0, the
  table, the JSON record.
* A bad kernel, block list, dtype or size is a usage error (exit 2) naming the bad value; so is an
  emulation without g++.
* A kernel made wrong, through a device layer that breaks its launches in one way each (a wrong value,
  a block left out, a write past an output, other bits on a rerun), or through a wrong reference, fails
  the check (exit 1) with a line naming the kernel, dtype, block and output; so does a persistent block
  that cannot have the whole grid resident (not run).
* The GPU-only part, CUDA event timing, runs on a stand-in for a GPU device layer: the emulation with
  stand-ins for CuPy's events.
"""

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import cuda_emulation as emulation
from ltexec.backends.cupy import backend as cupy_backend

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "kernel_check.py"
sys.path.insert(0, str(REPO / "benchmarks"))

import kernel_check  # noqa: E402

needs_gxx = pytest.mark.skipif(emulation.gxx_missing_reason() is not None,
                               reason=emulation.gxx_missing_reason() or "")

SHORT_BLOCKS = {"lstm_cell_forward": ["--block", "32,64"], "lstm_cell_backward": ["--block", "32,64"],
                "softmax_xent": ["--block", "32,64"], "lstm_persistent_forward": [], "lstm_persistent_backward": []}
"""A short block list per kernel; the persistent kernels take their default, the plan's block and neighbours."""
COMMAND_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def command_runs(tmp_path_factory):
    """Every kernel's check as a command at the small size: kernel -> (exit status, stdout, stderr, record)."""
    reason = emulation.gxx_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("kernel_check")
    processes = {kernel: subprocess.Popen([sys.executable, str(SCRIPT), kernel, "--device", "emulated",
                                           "--json", str(folder / f"{kernel}.json"), *blocks],
                                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for kernel, blocks in SHORT_BLOCKS.items()}
    runs = {}
    for kernel, process in processes.items():
        out, err = process.communicate(timeout=COMMAND_TIMEOUT_S)
        path = folder / f"{kernel}.json"
        runs[kernel] = (process.returncode, out, err, json.loads(path.read_text()) if path.exists() else None)
    return runs


def test_short_block_lists_cover_every_kernel():
    assert sorted(SHORT_BLOCKS) == sorted(kernel_check.KERNELS) == sorted(kernel_check.BUILDERS)


@pytest.mark.parametrize("kernel", sorted(SHORT_BLOCKS))
def test_every_kernel_passes_on_the_emulation(command_runs, kernel):
    status, out, err, record = command_runs[kernel]
    assert status == 0, out + err
    assert "Traceback" not in err
    assert out.startswith(f"{kernel} on CPU emulation of the CUDA kernels (emulated); size small")
    assert "timing: none (emulation)" in out
    header = next(line for line in out.splitlines() if "max rel error" in line)
    assert header.split() == ["dtype", "block", "grid", "shared", "B", "resident/SM", "max", "rel", "error", "check"]
    assert f"{kernel}: passed" in out

    assert record["kernel"] == kernel and record["passed"] and record["failures"] == []
    assert record["device"] == {"kind": "emulated", "name": "CPU emulation of the CUDA kernels"}
    assert record["size"] == {"name": "small", "T": 7, "B": 5, "H": 37, "N": 37, "V": 51}
    assert record["timing"] == "none (emulation)" and record["dtypes"] == ["float32", "float64"]
    rows = record["rows"]
    blocks = [32, 64]   # the short lists, and the persistent plan's block (64 at this size) with its neighbour 32
    assert [(row["dtype"], row["block"]) for row in rows] == [(d, b) for d in ("float32", "float64") for b in blocks]
    for row in rows:
        assert row["failures"] == [] and row["bitwise_rerun"] is True and row["timing"] is None
        assert row["max_error"] < row["tolerance"] == (
            {"float32": 1e-4, "float64": 1e-10} if kernel in kernel_check.PERSISTENT
            else {"float32": 1e-5, "float64": 1e-12})[row["dtype"]]
        assert row["max_error"] == max(row["errors"].values())
        assert f"{row['dtype']:>7}  {row['block']:>5}  {row['grid']:>6}" in out
    assert len(out.splitlines()) == len(rows) + (4 if kernel in kernel_check.PERSISTENT else 2) + 2
    if kernel in kernel_check.PERSISTENT:
        plan = record["persistent_plans"]["float32"]
        assert (plan["units_per_block"], plan["grid"], plan["threads"]) == (7, 6, 64)
        assert all(row["grid"] == 6 and row["shared_bytes"] > 0 for row in rows)


# ------------------------------------------------------------------ usage errors

@pytest.mark.parametrize("arguments, named", [
    (["lstm_cell_sideways"], "invalid choice: 'lstm_cell_sideways'"),
    (["lstm_cell_forward", "--block", "64,abc"], "block size 'abc' is not a whole number"),
    (["lstm_cell_forward", "--block", "0"], "block size 0 is outside 1..1024"),
    (["lstm_cell_forward", "--block", "2048"], "block size 2048 is outside 1..1024"),
    (["lstm_cell_forward", "--block", "-32"], "block size -32 is outside 1..1024"),
    (["softmax_xent", "--block", "32,96"], "power-of-two block from 32 to 256 (SOFTMAX_MAX_BLOCK), got 96"),
    (["softmax_xent", "--block", "16"], "got 16"),
    (["softmax_xent", "--block", "512"], "got 512"),
    (["lstm_cell_forward", "--dtype", "float16"], "invalid choice: 'float16'"),
    (["lstm_cell_forward", "--size", "huge"], "invalid choice: 'huge'"),
    (["lstm_cell_forward", "--repeats", "0"], "0 is not positive"),
])
def test_bad_arguments_are_usage_errors_naming_the_value(arguments, named, capsys):
    with pytest.raises(SystemExit) as exit:
        kernel_check.main(arguments)
    assert exit.value.code == 2
    assert named in capsys.readouterr().err


def test_bad_kernel_from_the_command_line_exits_2_without_a_traceback():
    done = subprocess.run([sys.executable, str(SCRIPT), "lstm_cell", "--device", "emulated"], cwd=REPO,
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    assert done.returncode == 2
    assert "invalid choice: 'lstm_cell'" in done.stderr and "Traceback" not in done.stderr


def test_no_gxx_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setattr(emulation, "gxx_missing_reason", lambda: "g++ is not installed (for the test)")
    assert kernel_check.main(["lstm_cell_forward", "--device", "emulated"]) == 2
    assert "the emulation cannot run: g++ is not installed (for the test)" in capsys.readouterr().err


@needs_gxx
def test_auto_runs_on_the_emulation_where_the_cupy_backend_cannot_run(monkeypatch, capsys):
    monkeypatch.setattr("ltexec.backends.available_backends", lambda: {"cupy": "no GPU (for the test)"})
    device, kind = kernel_check.device_layer("auto")
    assert isinstance(device, emulation.EmulatedDevice) and kind == "emulated"
    assert "no usable GPU (no GPU (for the test)); running on the emulation" in capsys.readouterr().err


def test_gpu_without_one_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setattr("ltexec.backends.available_backends", lambda: {"cupy": "no GPU (for the test)"})
    assert kernel_check.main(["lstm_cell_forward", "--device", "gpu"]) == 2
    assert "no usable GPU: no GPU (for the test)" in capsys.readouterr().err


# ------------------------------------------------------------------ a kernel made wrong

def root(array: np.ndarray) -> np.ndarray:
    """The allocation a kernel argument views (its guard cells included)."""
    while array.base is not None:
        array = array.base
    return array


class BreakingDevice(emulation.EmulatedDevice):
    """The emulation, with ``breaks(launch, args)`` applied after each float32 launch (``launch``: 0, 1, ...)."""

    def __init__(self, breaks, grid_change: int = 0):
        super().__init__()
        self.breaks, self.grid_change, self.launches = breaks, grid_change, 0

    def launch(self, kernel, grid, block, args):
        float32 = kernel.endswith("<float>")
        super().launch(kernel, grid + self.grid_change if float32 else grid, block, args)
        if float32:
            self.breaks(self.launches, args)
            self.launches += 1


def add_one(launch, args):
    args[5][1, 2] += 1          # lstm_cell_forward's h


def write_past_h(launch, args):
    root(args[5])[-1] = 0       # the guard cell after h


def other_bits_on_reruns(launch, args):
    if launch % 2:              # the second run of each launch
        args[5][0, 0] = np.nextafter(args[5][0, 0], np.float32(np.inf))


@needs_gxx
@pytest.mark.parametrize("device, failure", [
    (BreakingDevice(add_one), "h: relative error"),
    (BreakingDevice(lambda launch, args: None, grid_change=-1), r"c: \d+ of 185 elements left unwritten"),
    (BreakingDevice(write_past_h), "h: written outside the array"),
    (BreakingDevice(other_bits_on_reruns), "h: a second run of the same launch gives other bits"),
], ids=["wrong value", "block left out", "write past an output", "other bits on a rerun"])
def test_a_kernel_made_wrong_fails_naming_kernel_dtype_block_and_output(device, failure, tmp_path, capsys):
    record_path = tmp_path / "record.json"
    status = kernel_check.main(["lstm_cell_forward", "--device", "emulated", "--block", "32,64", "--json",
                                str(record_path)], device=device)
    out = capsys.readouterr().out
    assert status == 1
    for block in (32, 64):
        assert re.search(f"FAIL lstm_cell_forward float32 block {block}: {failure}", out), out
    assert "FAIL lstm_cell_forward float64" not in out
    assert "lstm_cell_forward: FAILED (4 dtype/block pairs, 2 failures)" in out
    record = json.loads(record_path.read_text())
    assert not record["passed"] and len(record["failures"]) == 2
    assert [bool(row["failures"]) for row in record["rows"]] == [True, True, False, False]


@needs_gxx
def test_a_reference_made_wrong_fails_the_check(monkeypatch, capsys):
    def shifted_forward(*args):
        h, c, cache = cell_forward(*args)
        return h, c + 1e-3, cache

    import kernel_cases
    cell_forward = kernel_cases.cell_forward
    monkeypatch.setattr(kernel_cases, "cell_forward", shifted_forward)
    assert kernel_check.main(["lstm_cell_forward", "--device", "emulated", "--block", "64", "--dtype", "float64"]) == 1
    assert "FAIL lstm_cell_forward float64 block 64: c: relative error" in capsys.readouterr().out


class FewResidentDevice(emulation.EmulatedDevice):
    """The emulation, where blocks of more than 64 threads do not fit on an SM at all."""

    def resident_blocks(self, kernel, block, shared_bytes):
        return self.resident_per_sm if block <= 64 else 0


@needs_gxx
def test_a_persistent_block_that_cannot_be_resident_is_not_run_and_fails(capsys):
    status = kernel_check.main(["lstm_persistent_forward", "--device", "emulated", "--dtype", "float32", "--block",
                                "64,96"], device=FewResidentDevice())
    out = capsys.readouterr().out
    assert status == 1
    assert "FAIL lstm_persistent_forward float32 block 96: not run: lstm_persistent_forward<float> needs 6 " \
           "co-resident blocks of 96 threads" in out
    assert "FAIL lstm_persistent_forward float32 block 64" not in out
    (line,) = [line for line in out.splitlines() if line.startswith("float32     96")]
    assert line.split() == ["float32", "96", "6", "4144", "0", "-", "FAIL"]


# ------------------------------------------------------------------ timing

class StampEvent:
    """Stands in for cupy.cuda.Event: the host time when recorded."""

    def record(self):
        self.at = time.perf_counter()

    def synchronize(self):
        pass


class EventTimedEmulation(emulation.EmulatedDevice, cupy_backend.CudaDevice):
    """A GPU device layer to kernel_check (a CudaDevice), running the emulation with CuPy's events stood in for."""

    xp = SimpleNamespace(asarray=np.asarray, cuda=SimpleNamespace(
        Event=StampEvent, get_elapsed_time=lambda start, end: (end.at - start.at) * 1e3))


@needs_gxx
def test_on_a_gpu_every_block_is_timed_with_cuda_events(tmp_path, capsys):
    record_path = tmp_path / "record.json"
    status = kernel_check.main(["lstm_persistent_backward", "--size", "small", "--dtype", "float32", "--block", "64",
                                "--repeats", "3", "--json", str(record_path)], device=EventTimedEmulation())
    out = capsys.readouterr().out
    assert status == 0, out
    assert "(gpu)" in out and f"timing: CUDA events, {kernel_check.WARMUP} warm-up and 3 timed launches" in out
    assert "median us" in out and "timing: none" not in out
    record = json.loads(record_path.read_text())
    (row,) = record["rows"]
    timing = row["timing"]
    assert (timing["warmup"], timing["repeats"]) == (kernel_check.WARMUP, 3)
    assert 0 < timing["min_us"] <= timing["median_us"] <= timing["max_us"]
    assert record["device"]["kind"] == "gpu" and record["timing"] == "CUDA events"
