"""benchmarks/gpu_check.py where there is no GPU: the no-GPU path, the record, the comparisons, the parsers.

What needs a device (CuPy's kernels and events, compute-sanitizer, torch on cuDNN) runs only on a
GPU machine. Here the NumPy and CPU backends stand in for the GPU backends, fake backends for wrong
or unrepeatable ones, and small shell scripts for compute-sanitizer.
"""

import datetime
import importlib
import json
import math
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numba
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_check  # noqa: E402
from gpu_check import LaunchMode, finished  # noqa: E402

from ltexec.backends import REGISTRY, available_backends, backend_options, get_backend  # noqa: E402
from ltexec.backends.cupy import backend as cupy_backend  # noqa: E402
from ltexec.backends.numba_cuda import kernels as numba_cuda_kernels  # noqa: E402
from ltexec.backends.numpy.backend import NumpyBackend  # noqa: E402
from ltexec.testing import relative_error  # noqa: E402

TINY = gpu_check.Config("tiny", batch=3, hidden=5, layers=2, seq_len=4)
REFERENCE = LaunchMode("numpy", "reference")
ONE_LANE = LaunchMode("cpu", "one-lane", {"threads": 1}, sanitize=False)
RECORD_KEYS = {"check", "command", "quick", "skip_tests", "budget_s", "rehearsal", "limits_s", "date", "backends",
               "launch_modes", "machine",
               "environment", "tests", "sanitizer", "parity", "kernels", "timing", "failures", "seconds", "complete"}

CLEAN_SANITIZER = gpu_check.STAND_IN_SANITIZER
"""Skips its options (each has a value), runs the program, finds nothing."""
FINDING_SANITIZER = """#!/bin/sh
# Stands in for compute-sanitizer finding two errors (the program is not run).
echo "========= Invalid __global__ read of size 4 bytes"
echo "========= ERROR SUMMARY: 2 errors"
exit 86
"""


def script(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    path.chmod(0o755)
    return str(path)


def fake_environment(limit_s: float) -> dict:
    return finished({"driver_version": "999.1", "cuda_driver_api": "13.0", "cuda_runtime": "13.0",
                     "gpu": {"name": "Fake GPU", "compute_capability": "9.0", "sm_count": 132, "memory_gib": 80.0},
                     "libraries": gpu_check.library_versions(), "failures": []})


def fake_kernels(backends, cfg) -> dict:
    row = gpu_check.kernel_row("numpy", "lstm_cell_forward<float>", 32, 0, 0, 1024, 256, 8, 2048)
    return finished({"blocks_at": cfg.name, "kernels": [row], "failures": []})


def one_ms(step) -> float:
    step()
    return 1.0


@pytest.fixture
def stand_ins(monkeypatch, tmp_path):
    """The CPU backends as the launch modes, a fake GPU, kernels and timer, the clean stand-in sanitizer."""
    monkeypatch.setattr(gpu_check, "LAUNCH_MODES", (REFERENCE, ONE_LANE))
    monkeypatch.setattr(gpu_check, "backend_reasons", lambda timeout_s: {"numpy": None, "cpu": None})
    monkeypatch.setattr(gpu_check, "PAPER", TINY)
    monkeypatch.setattr(gpu_check, "probe_environment", fake_environment)
    monkeypatch.setattr(gpu_check, "kernel_resources", fake_kernels)
    monkeypatch.setattr(gpu_check, "cupy_timer", lambda: one_ms)
    sanitizer = script(tmp_path, "compute-sanitizer", CLEAN_SANITIZER)
    monkeypatch.setattr(gpu_check, "find_sanitizer", lambda: sanitizer)
    monkeypatch.setattr(gpu_check, "RESULTS", tmp_path / "results")


# ------------------------------------------------------------ command line

def test_without_a_gpu_it_says_why_for_each_backend_writes_nothing_and_exits_2(tmp_path, capsys):
    reasons = {name: available_backends()[name] for name in gpu_check.gpu_backends()}
    if None in reasons.values():
        pytest.skip("a GPU backend can run here")
    before = sorted(gpu_check.RESULTS.iterdir())
    assert gpu_check.main(["--json", str(tmp_path / "record.json")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"gpu_check: {name} unavailable: {reason}" for name, reason in reasons.items()] + \
        ["gpu_check: no GPU backend can run here; nothing checked, nothing written"]
    assert not (tmp_path / "record.json").exists() and sorted(gpu_check.RESULTS.iterdir()) == before


def test_the_script_runs_as_a_command_up_to_the_no_gpu_exit():
    if None in (available_backends()[name] for name in gpu_check.gpu_backends()):
        pytest.skip("a GPU backend can run here")
    done = subprocess.run([sys.executable, str(gpu_check.SCRIPT), "--quick"], capture_output=True, text=True,
                          cwd=gpu_check.REPOSITORY, timeout=300)
    assert done.returncode == 2 and done.stdout == ""
    assert [line.split(":")[0] for line in done.stderr.splitlines()] == ["gpu_check"] * 3


def test_arguments():
    args = gpu_check.parse_args([])
    assert (args.quick, args.skip_tests, args.json, args.sanitizer_workload) == (False, False, None, None)
    args = gpu_check.parse_args(["--quick", "--skip-tests", "--json", "out.json"])
    assert (args.quick, args.skip_tests, args.json) == (True, True, "out.json")
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.parse_args(["--fast"])
    assert exit_info.value.code == 2


# ------------------------------------------------------------ launch modes

def test_launch_modes_cover_every_option_of_the_gpu_backends():
    modes = gpu_check.LAUNCH_MODES
    assert len({mode.label for mode in modes}) == len(modes)
    assert gpu_check.gpu_backends() == ("cupy", "numba_cuda")
    for name in gpu_check.gpu_backends():
        assert {True, False} <= {mode.options.get("persistent") for mode in modes if mode.backend == name}
    assert set(numba_cuda_kernels.GEMM_IMPLEMENTATIONS) <= \
        {mode.options.get("gemm") for mode in modes if mode.backend == "numba_cuda"}
    for name in gpu_check.gpu_backends():
        assert any(mode.sanitize for mode in modes if mode.backend == name), name
    classes = dict(REGISTRY)
    for mode in modes:
        module, cls = classes[mode.backend].split(":")
        assert set(mode.options) <= set(backend_options(getattr(importlib.import_module(module), cls))), mode
        assert gpu_check.parse_spec(mode.spec) == (mode.backend, mode.options)


@pytest.mark.parametrize("spec, parsed", [("numpy", ("numpy", {})),
                                          ("cupy:persistent=false", ("cupy", {"persistent": False})),
                                          ("x:a=1,b=true,c=tiled", ("x", {"a": 1, "b": True, "c": "tiled"}))])
def test_workload_specs_read_backend_and_options(spec, parsed):
    assert gpu_check.parse_spec(spec) == parsed


def test_a_workload_spec_option_without_a_value_is_refused():
    with pytest.raises(ValueError, match="option 'persistent' of 'cupy:persistent' is not KEY=VALUE"):
        gpu_check.parse_spec("cupy:persistent")


# ------------------------------------------------------------ parity

def test_relative_error_is_the_largest_difference_over_the_largest_reference_value():
    assert gpu_check.relative_error is relative_error                   # the package's one measure
    assert relative_error([1.0, 2.0], [1.0, 4.0]) == 0.5
    assert relative_error(3.0, 3.0) == 0.0
    assert relative_error([np.nan, 1.0], [1.0, 1.0]) == math.inf
    assert relative_error([1e-300], [0.0]) > 1                           # zero reference: any difference is huge
    assert relative_error([1.0, 2.0], [1.0, 0.5], floor=4.0) == 0.375   # a floor for small sums of large terms
    with pytest.raises(ValueError, match="shape"):
        relative_error(np.zeros(2), np.zeros(3))


@pytest.mark.parametrize("mode", [REFERENCE, ONE_LANE], ids=lambda mode: mode.label)
def test_parity_of_the_cpu_backends_passes_in_both_dtypes(mode):
    parity = gpu_check.check_parity([mode], 120, TINY)
    assert parity["status"] == "pass" and parity["failures"] == [] and parity["windows"] == 3
    assert [run["dtype"] for run in parity["runs"]] == ["float32", "float64"]
    for run in parity["runs"]:
        assert run["status"] == "pass" and run["bitwise_equal"] and run["bitwise_differences"] == []
        assert run["launch_mode"] is None and "graph_fallback_reason" not in run
        assert [w["window"] for w in run["windows"]] == [0, 1, 2]
        for window in run["windows"]:
            assert {"grads/embed", "grads/Wh1", "grads/by", "state/h1", "state/c0", "dstate/h0", "dstate/c1"} <= \
                set(window["errors"])
            assert window["max_error"] == max(window["errors"].values()) <= run["tolerance"]
            assert window["loss_error"] <= run["loss_tolerance"] and window["loss"] > 0
    json.dumps(gpu_check.json_safe(parity), allow_nan=False)


class SkewedOutput(NumpyBackend):
    """The output layer's weight gradient off by 0.1% of its largest entry."""

    def linear_backward(self, dlogits, hs, W):
        dhs, dW, db = super().linear_backward(dlogits, hs, W)
        return dhs, dW + 1e-3 * np.abs(dW).max(), db


class Unrepeatable(NumpyBackend):
    """Each LSTM layer's bias gradient with a different tiny noise on every call."""

    def lstm_backward(self, dhs, dhT, dcT, cache):
        dxs, dWx, dWh, db, dh0, dc0 = super().lstm_backward(dhs, dhT, dcT, cache)
        noise = np.random.default_rng().standard_normal(db.shape) * 1e-12 * np.abs(db).max()
        return dxs, dWx, dWh, db + noise, dh0, dc0


class FellBackToPerStep(NumpyBackend):
    launch_mode = "per-step launches (persistent kernels do not fit at T=3, B=2, H=5: no cooperative launch)"


def test_parity_names_the_array_that_is_off_in_every_window():
    run = gpu_check.parity_run(REFERENCE, np.float32, TINY, make_backend=lambda mode, dtype: SkewedOutput(dtype))
    assert run["status"] == "fail" and run["bitwise_equal"]
    assert [w["worst"] for w in run["windows"]] == ["grads/Wy"] * 3
    assert len(run["failures"]) == 3
    assert run["failures"][0].startswith("parity numpy/reference float32 window 0: grads/Wy relative error 0.001")


def test_parity_finds_outputs_that_change_between_two_runs_of_the_same_window():
    run = gpu_check.parity_run(REFERENCE, np.float64, TINY, make_backend=lambda mode, dtype: Unrepeatable(dtype))
    assert all(w["max_error"] <= 1e-10 for w in run["windows"])           # close enough, but not repeatable
    assert run["bitwise_differences"] == ["grads/b0", "grads/b1"] and not run["bitwise_equal"]
    assert run["failures"] == ["bitwise numpy/reference float64: the same window twice gave different "
                               "grads/b0, grads/b1"]


@pytest.mark.parametrize("expect, fails", [("persistent", True), ("per-step launches", False),
                                           ("per-step", True), (None, False)])
def test_a_launch_mode_other_than_the_one_asked_for_fails(expect, fails):
    mode = LaunchMode("numpy", "persistent", expect=expect)
    run = gpu_check.parity_run(mode, np.float32, TINY, make_backend=lambda mode, dtype: FellBackToPerStep(dtype))
    message = (f"launch mode numpy/persistent float32: ran {FellBackToPerStep.launch_mode!r}, not {expect!r}")
    assert run["failures"] == ([message] if fails else [])


def test_a_backend_that_cannot_be_built_is_an_error_and_the_other_runs_go_on():
    def build(mode, dtype):
        if dtype == np.float32:
            raise RuntimeError("no device")
        return NumpyBackend(dtype)

    parity = gpu_check.check_parity([REFERENCE], 120, TINY, make_backend=build)
    first, second = parity["runs"]
    assert (first["status"], first["error"]) == ("error", "RuntimeError: no device")
    assert "Traceback" in first["traceback"] and second["status"] == "pass"
    assert parity["status"] == "fail"
    assert parity["failures"] == ["parity numpy/reference float32: RuntimeError: no device"]


# ------------------------------------------------------------ tests

@pytest.mark.parametrize("output, counts", [
    ("= 2 failed, 110 passed, 4 skipped, 877 deselected, 1 error in 95.31s (0:01:35) =",
     {"passed": 110, "failed": 2, "skipped": 4, "errors": 1, "deselected": 877}),
    ("test_x.py::test_a 3 passed\n....\n116 passed, 877 deselected in 40.12s",
     {"passed": 116, "failed": 0, "skipped": 0, "errors": 0, "deselected": 877}),
    ("no tests ran in 0.01s", {"passed": 0, "failed": 0, "skipped": 0, "errors": 0, "deselected": 0}),
])
def test_pytest_counts_come_from_the_closing_line(output, counts):
    assert gpu_check.pytest_counts(output) == counts


def test_the_test_run_records_counts_exit_status_and_tail():
    failing = gpu_check.run_gpu_tests(120, ("-c", "print('== 1 failed, 2 passed in 0.1s =='); raise SystemExit(1)"))
    assert (failing["status"], failing["failed"], failing["passed"], failing["returncode"]) == ("fail", 1, 2, 1)
    assert failing["failures"] == ["GPU tests: 1 failed, 0 errors, 2 passed (pytest exit status 1)"]
    assert failing["command"].startswith("python -c ") and "1 failed" in failing["tail"]
    passing = gpu_check.run_gpu_tests(120, ("-c", "print('3 passed, 5 deselected in 0.2s')"))
    assert (passing["status"], passing["passed"], passing["failures"]) == ("pass", 3, [])


def test_a_test_run_that_tested_nothing_on_the_device_fails():
    nothing = gpu_check.run_gpu_tests(120, ("-c", "print('12 skipped, 1400 deselected in 0.2s')"))
    assert (nothing["status"], nothing["failures"]) == \
        ("fail", ["GPU tests: none passed (12 skipped): nothing was tested on the device"])
    output = ("SKIPPED [4] tests/test_cupy_backend.py:642: no CUDA device: CUDA driver version is insufficient\n"
              "3 passed, 4 skipped, 1400 deselected in 0.2s")
    unusable = gpu_check.run_gpu_tests(120, ("-c", f"print({output!r})"))
    assert unusable["status"] == "fail" and unusable["failures"] == [
        "GPU tests: skipped because the device was not usable in the tests' process: SKIPPED [4] "
        "tests/test_cupy_backend.py:642: no CUDA device: CUDA driver version is insufficient"]
    other_skip = gpu_check.run_gpu_tests(120, ("-c", "print('SKIPPED [1] t.py:3: needs g++')\n"
                                                "print('3 passed, 1 skipped in 0.2s')"))
    assert other_skip["status"] == "pass"


def test_a_test_run_past_its_time_is_stopped_and_fails():
    stuck = gpu_check.run_gpu_tests(1, ("-c", "import time; time.sleep(60)"))
    assert stuck["returncode"] is None and stuck["status"] == "fail"
    assert stuck["failures"] == ["GPU tests: still running after 1 s, stopped"]


def test_the_test_command_selects_the_gpu_marker():
    assert gpu_check.TESTS_COMMAND[:4] == ("-m", "pytest", "-m", "gpu")


# ------------------------------------------------------------ sanitizer

DONE = gpu_check.WORKLOAD_DONE


@pytest.mark.parametrize("returncode, output, verdict", [
    (0, f"{DONE}: cupy\n========= ERROR SUMMARY: 0 errors", ("pass", 0)),
    (86, "========= Invalid __global__ read of size 4 bytes\n========= ERROR SUMMARY: 3 errors", ("fail", 3)),
    (0, f"{DONE}\n========= RACECHECK SUMMARY: 2 hazards displayed (1 error, 1 warning)", ("fail", 1)),
    (0, f"{DONE}\n========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)", ("pass", 0)),
    (1, "Traceback (most recent call last):\n========= ERROR SUMMARY: 0 errors", ("error", 0)),
    (0, "========= ERROR SUMMARY: 0 errors", ("error", 0)),                 # the workload never finished
    (None, "", ("timeout", None)),
])
def test_sanitizer_verdicts(returncode, output, verdict):
    assert gpu_check.sanitizer_verdict(returncode, output) == verdict


def test_the_sanitizer_report_keeps_the_tools_findings_without_banner_and_summary():
    output = ("========= COMPUTE-SANITIZER\nprogram output\n========= Invalid __global__ read of size 4 bytes\n"
              "=========     at lstm_cell_forward<float>+0x120\n=========\n========= ERROR SUMMARY: 1 error")
    assert gpu_check.sanitizer_report(output) == ["========= Invalid __global__ read of size 4 bytes",
                                                  "=========     at lstm_cell_forward<float>+0x120"]


def test_every_tool_runs_on_every_mode_marked_for_it(tmp_path):
    program = script(tmp_path, "compute-sanitizer", CLEAN_SANITIZER)
    result = gpu_check.check_sanitizer([REFERENCE, ONE_LANE], 120, program)
    assert result["status"] == "pass" and result["program"] == program
    assert [(run["tool"], run["workload"]) for run in result["runs"]] == \
        [(tool, "numpy/reference") for tool in gpu_check.SANITIZER_TOOLS]
    for run in result["runs"]:
        assert (run["verdict"], run["errors"], run["returncode"]) == ("pass", 0, 0), run["tail"]
        padding = " --padding 256" if run["tool"] == "memcheck" else ""
        assert run["command"].endswith(f"--tool {run['tool']} --error-exitcode 86 --print-limit 20{padding} "
                                       "python benchmarks/gpu_check.py --sanitizer-workload numpy")


@pytest.mark.parametrize("mode", [mode for mode in gpu_check.LAUNCH_MODES if mode.sanitize])
def test_the_sanitizer_instruments_the_backends_own_kernels_only(mode):
    """A regular expression of the backend's kernel names (no cuBLAS, no CuPy kernel matches it); memcheck pads."""
    pytest.importorskip("numba.cuda")
    [workload] = [w for w in gpu_check.sanitizer_workloads(gpu_check.LAUNCH_MODES) if w.label == mode.label]
    command = gpu_check.sanitizer_command("compute-sanitizer", "memcheck", workload)
    option = command[command.index("--kernel-regex") + 1]
    assert option.startswith("kns=")
    names = option[len("kns="):].split("|")
    if mode.backend == "cupy":
        assert names == [kernel for kernels in cupy_backend.KERNELS.values() for kernel in kernels]
    else:
        assert {"lstm_forward_step", "gemm", "softmax_xent", "lstm_backward_persistent"} <= set(names)
    assert command[command.index("--padding") + 1] == "256"
    assert "--padding" not in gpu_check.sanitizer_command("compute-sanitizer", "racecheck", workload)


def test_with_the_cupy_backend_every_cuda_c_kernel_is_also_sanitized_alone_with_its_arguments_apart():
    workloads = gpu_check.sanitizer_workloads(gpu_check.LAUNCH_MODES)
    alone = [w for w in workloads if w.label.startswith("kernel ")]
    assert [w.label for w in alone] == [f"kernel {kernel}" for kernel in gpu_check.KERNEL_CHECK_KERNELS]
    assert {w.backend for w in alone} == {"cupy"}
    assert alone[0].argv == (str(gpu_check.KERNEL_CHECK), alone[0].label.split()[1], "--device", "gpu", "--size",
                             "small", "--dtype", "float32", "--repeats", "1")
    numba_only = [mode for mode in gpu_check.LAUNCH_MODES if mode.backend == "numba_cuda"]
    assert not [w for w in gpu_check.sanitizer_workloads(numba_only) if w.label.startswith("kernel ")]


def test_the_workload_runs_each_window_on_a_fresh_backend_so_no_buffer_is_reused(capsys):
    built = []

    def make(name, dtype, **options):
        built.append(get_backend(name, dtype, **options))
        return built[-1]

    assert gpu_check.sanitizer_workload("cpu:threads=1", make) == 0
    assert len(built) == gpu_check.WINDOWS and len({id(backend) for backend in built}) == gpu_check.WINDOWS
    assert capsys.readouterr().out == f"{DONE}: cpu:threads=1, launch mode None\n"


# ------------------------------------------------------------ budget

def test_each_stage_gets_its_share_of_what_is_left_among_the_stages_still_to_run():
    stages = list(gpu_check.CHECKS)
    limits, left = {}, 360.0
    for stage in gpu_check.CHECKS:
        limits[stage] = gpu_check.stage_limit(stage, left, stages)
        stages.remove(stage)
        left -= limits[stage]                            # a stage that uses all its time
    assert sum(limits.values()) == pytest.approx(360, abs=0.5)
    assert limits["tests"] == pytest.approx(0.30 * 360, abs=0.5)
    assert gpu_check.stage_limit("timing", 100, ["timing"]) == 100    # the last stage gets what is left
    assert gpu_check.stage_limit("timing", 1, ["timing"]) == gpu_check.MIN_LIMIT_S
    assert gpu_check.stage_limit("parity", 200, ["parity", "kernels"]) == pytest.approx(200 * 0.22 / 0.27, abs=0.1)
    assert gpu_check.part_limit(60, 4) == 15 and gpu_check.part_limit(6, 4) == gpu_check.MIN_LIMIT_S


@pytest.mark.parametrize("text, error", [("30", "at least 60 seconds, got '30'"), ("x", "a number of seconds, got 'x'"),
                                         ("nan", "at least 60 seconds, got 'nan'")])
def test_a_bad_budget_is_refused_naming_it(text, error, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.parse_args(["--budget", text])
    assert exit_info.value.code == 2 and error in capsys.readouterr().err


def test_the_stages_are_given_limits_within_the_budget(stand_ins, tmp_path):
    path = tmp_path / "record.json"
    assert gpu_check.main(["--skip-tests", "--budget", "100", "--json", str(path)]) == 0
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["budget_s"] <= 100 and set(record["limits_s"]) == set(gpu_check.CHECKS) - {"tests"}
    assert all(limit >= gpu_check.MIN_LIMIT_S for limit in record["limits_s"].values())
    assert record["limits_s"]["environment"] == pytest.approx(
        record["budget_s"] * 0.06 / (1 - 0.30), abs=1)     # tests skipped: the others share its time


def test_the_tests_stage_asks_the_device_makers_for_fewer_examples():
    assert f"--device-examples={gpu_check.DEVICE_EXAMPLES}" in gpu_check.TESTS_COMMAND


# ------------------------------------------------------------ rehearsal

def test_the_rehearsal_runs_every_stage_without_a_gpu_and_survives_a_hang_and_a_crash(tmp_path):
    """``gpu_check.py --rehearse``: the CuPy kernels on the emulation, numba-cuda's simulator, a stand-in
    sanitizer; one parity run made to hang, the kernel check made to crash, the tests stage failing for testing
    nothing on a device. It checks its record itself (exit 0 when every outcome is the expected one)."""
    import cuda_emulation
    if cuda_emulation.gxx_missing_reason():
        pytest.skip(cuda_emulation.gxx_missing_reason())
    pytest.importorskip("numba.cuda")
    if None in (available_backends()[name] for name in gpu_check.gpu_backends()):
        pytest.skip("a GPU backend can run here: the tests stage would test on it")
    path = tmp_path / "record.json"
    # A budget well above what the stand-ins need (about 70 s on an idle 2-core CPU): each run's part of it must
    # hold a simulated run on a busy machine too, while the injected hang costs one part.
    done = subprocess.run([sys.executable, str(gpu_check.SCRIPT), "--rehearse", "--budget", "300", "--json", str(path)],
                          capture_output=True, text=True, cwd=gpu_check.REPOSITORY, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert done.stdout.splitlines()[-1].startswith("rehearsal: every stage ran and was recorded as expected")
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["rehearsal"] is True and record["complete"] is True and record["seconds"] < 300
    hung = [run for run in record["parity"]["runs"] if run["status"] == "error"]
    part = gpu_check.part_limit(record["limits_s"]["parity"], len(record["parity"]["runs"]))
    assert [run["error"] for run in hung] == [f"still running after {part:g} s, killed"]
    assert record["kernels"]["error"] == "crashed: its process ended with exit code 3 and no result"
    assert record["tests"]["status"] == "fail" and record["tests"]["passed"] == 0


def test_sanitizer_findings_fail_the_check(tmp_path):
    program = script(tmp_path, "compute-sanitizer", FINDING_SANITIZER)
    result = gpu_check.check_sanitizer([REFERENCE], 120, program)
    assert result["status"] == "fail"
    assert result["failures"] == [f"sanitizer {tool} on numpy/reference: fail (2 errors)"
                                  for tool in gpu_check.SANITIZER_TOOLS]
    assert result["runs"][0]["report"] == ["========= Invalid __global__ read of size 4 bytes"]


def test_without_compute_sanitizer_the_check_is_skipped_saying_how_to_get_it(monkeypatch):
    monkeypatch.setattr(gpu_check, "find_sanitizer", lambda: None)
    result = gpu_check.check_sanitizer(gpu_check.LAUNCH_MODES, 120)
    assert result["status"] == "skipped" and result["failures"] == []
    assert result["reason"].startswith("compute-sanitizer not found: pip install nvidia-cuda-sanitizer-api")


def test_compute_sanitizer_is_found_on_path_then_in_the_cuda_toolkit(tmp_path, monkeypatch):
    on_path = tmp_path / "path"
    on_path.mkdir()
    program = script(on_path, "compute-sanitizer", CLEAN_SANITIZER)
    monkeypatch.setenv("PATH", str(on_path))
    assert gpu_check.find_sanitizer() == program
    toolkit = tmp_path / "cuda" / "bin"
    toolkit.mkdir(parents=True)
    program = script(toolkit, "compute-sanitizer", CLEAN_SANITIZER)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "cuda"))
    assert gpu_check.find_sanitizer() == program


def test_the_workload_trains_its_windows_and_says_it_finished(capsys):
    assert gpu_check.main(["--sanitizer-workload", "cpu:threads=1"]) == 0
    assert capsys.readouterr().out == f"{DONE}: cpu:threads=1, launch mode None\n"


# ------------------------------------------------------------ kernels, timing, environment

def test_launch_blocks_name_kernels_the_backends_have():
    cupy_names = {kernel for kernels in cupy_backend.KERNELS.values() for kernel in kernels}
    cupy_blocks = gpu_check.cupy_launch_blocks(gpu_check.PAPER)
    assert {"lstm_cell_forward", "lstm_cell_backward", "softmax_xent"} <= set(cupy_blocks) <= cupy_names
    assert cupy_blocks["lstm_cell_forward"] == cupy_backend.CELL_BLOCK and cupy_blocks["softmax_xent"] == 64
    numba_blocks = gpu_check.numba_launch_blocks(gpu_check.PAPER)
    assert set(numba_blocks) <= set(numba_cuda_kernels.signatures(np.float32))
    assert {"lstm_forward_step", "lstm_backward_step", "gemm"} <= set(numba_blocks)
    assert all(1 <= block <= 1024 for block in {**cupy_blocks, **numba_blocks}.values())
    tile = numba_cuda_kernels.RECURRENT_TILE_H * numba_cuda_kernels.RECURRENT_TILE_B
    assert numba_blocks["lstm_forward_step"] == tile


def test_the_persistent_kernels_are_reported_at_the_launch_the_backend_plans(monkeypatch):
    import cuda_emulation
    from types import SimpleNamespace
    h100 = cupy_backend.DeviceLimits(sms=132, shared_per_block=227 * 1024, cooperative=True)
    device = cuda_emulation.EmulatedDevice(limits=h100)              # the paper's 400 units: 4 a block, 100 blocks
    launches = gpu_check.cupy_persistent_launches(device, gpu_check.PAPER)
    assert launches["lstm_persistent_forward<double>"][1] == 51200
    for dtype in (np.float32, np.float64):
        geometry = cupy_backend.plan_persistent(50, 100, 400, np.dtype(dtype).itemsize, device.limits,
                                                lambda *query: 99)
        for direction, kernel in cupy_backend.PERSISTENT_KERNELS.items():
            assert launches[cupy_backend.name_expression(kernel, dtype)] == (geometry.threads,
                                                                            geometry.shared_bytes(direction))
    small = cuda_emulation.EmulatedDevice(limits=cupy_backend.DeviceLimits(sms=6, shared_per_block=1024,
                                                                           cooperative=True))
    assert gpu_check.cupy_persistent_launches(small, gpu_check.PAPER) == {}   # does not fit: not reported

    class Launcher:                                                  # the Numba side, with a stand-in driver
        def __init__(self, dtype):
            self.dtype = dtype

        def launch_resources(self, geometry):
            kernel = SimpleNamespace(regs_per_thread=64, shared_mem_per_block=0, local_mem_per_thread=0,
                                     max_threads_per_block=1024)
            return {name: (kernel, geometry.threads, geometry.shared_bytes(direction), 132)
                    for direction, name in numba_cuda_persistent.KERNEL_NAMES.items()}

    from ltexec.backends.numba_cuda import persistent as numba_cuda_persistent
    monkeypatch.setattr(numba_cuda_persistent, "PersistentLauncher", Launcher)
    rows = gpu_check.numba_persistent_kernels(gpu_check.PAPER, 132, 2048)
    geometry = numba_cuda_persistent.launch_geometry(400, 100, np.float32, 132)
    assert [row["kernel"] for row in rows] == [f"{name}<{dtype}>" for dtype in ("float32", "float64")
                                               for name in numba_cuda_persistent.KERNEL_NAMES.values()]
    assert rows[0]["dynamic_shared_bytes"] == geometry.forward_shared_bytes and rows[0]["active_blocks_per_sm"] == 1
    assert rows[0]["block"] == geometry.threads
    assert f"+ {geometry.forward_shared_bytes} B dynamic" in gpu_check.kernel_lines({"kernels": rows})[0]


def test_occupancy_is_the_share_of_an_sms_warp_slots():
    assert gpu_check.occupancy(8, 256, 2048) == 1.0
    assert gpu_check.occupancy(5, 50, 1536) == 0.208                     # 50 threads take two warps
    assert gpu_check.occupancy(None, 256, 2048) is None and gpu_check.occupancy(4, None, 2048) is None
    row = gpu_check.kernel_row("cupy", "k<float>", 40, 1024, 0, 1024, 128, 12, 2048)
    assert (row["occupancy"], row["active_blocks_per_sm"], row["registers"]) == (0.75, 12, 40)


def test_time_steps_takes_median_minimum_and_maximum_after_the_warmup():
    calls, times = [], iter([3.0, 1.0, 2.0])
    timing = gpu_check.time_steps(lambda: calls.append(1), lambda step: (step(), next(times))[1], warmup=2, steps=3)
    assert len(calls) == 5
    assert timing == {"ms_median": 2.0, "ms_min": 1.0, "ms_max": 3.0, "warmup": 2, "steps": 3}


def test_tf32_is_set_for_products_and_cudnn_and_restored_after():
    torch = pytest.importorskip("torch")
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    for enabled in (True, False):
        with gpu_check.tf32(torch, enabled) as flags:
            assert flags == {"matmul": enabled, "cudnn": enabled}
            assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (enabled, enabled)
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_torch_without_a_gpu_is_one_skipped_timing_entry():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("torch sees a GPU here")
    [entry] = gpu_check.time_torch(TINY)
    assert entry["status"] == "skipped" and "sees no CUDA device" in entry["reason"]


def test_library_versions_and_cuda_versions():
    assert gpu_check.cuda_version_text(13000) == "13.0" and gpu_check.cuda_version_text(12080) == "12.8"
    found = gpu_check.library_versions(gpu_check.LIBRARIES + (("absent", "no_such_module_here", None),))
    assert found["numba"] == {"version": numba.__version__}
    assert found["numba-cuda"] == {"version": metadata.version("numba-cuda")}
    assert found["absent"]["version"] is None and found["absent"]["missing"].startswith("ModuleNotFoundError")
    assert set(found) == {"cupy", "numba-cuda", "numba", "torch", "cuda-bindings", "absent"}


# ------------------------------------------------------------ the record

def test_the_record_names_and_dates_its_file_and_is_plain_json(tmp_path):
    assert gpu_check.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    first = gpu_check.default_json_path("NVIDIA H200", "2026-12-02", tmp_path)
    assert first.name == "gpu-check-nvidia-h200-2026-12-02.json"
    first.write_text("[]")
    assert gpu_check.default_json_path("NVIDIA H200", "2026-12-02", tmp_path).name == \
        "gpu-check-nvidia-h200-2026-12-02-2.json"
    assert gpu_check.json_safe({"a": float("nan"), "b": (np.float32(1.5), math.inf), 3: np.int64(2)}) == \
        {"a": None, "b": [1.5, None], "3": 2}


def test_guarded_turns_an_exception_into_an_error_record():
    assert gpu_check.guarded("x", lambda value: {"value": value}, 3) == {"value": 3}
    result = gpu_check.guarded("kernels", lambda: 1 / 0)
    assert (result["status"], result["failures"]) == ("error", ["kernels: ZeroDivisionError: division by zero"])


def test_a_full_run_on_stand_ins_writes_every_check_and_passes(stand_ins, tmp_path, capsys):
    path = tmp_path / "record.json"
    assert gpu_check.main(["--skip-tests", "--json", str(path)]) == 0
    record = json.loads(path.read_text(encoding="utf-8"))
    assert set(record) == RECORD_KEYS and record["failures"] == []
    assert record["command"] == f"python benchmarks/gpu_check.py --skip-tests --json {path}"
    assert record["launch_modes"] == ["numpy/reference", "cpu/one-lane"]
    assert record["backends"] == {"numpy": None, "cpu": None} and record["machine"]["cpu_count"] >= 1
    assert {name: record[name]["status"] for name in gpu_check.CHECKS} == \
        {"environment": "pass", "tests": "skipped", "sanitizer": "pass", "parity": "pass", "kernels": "pass",
         "timing": "pass"}
    assert [run["tool"] for run in record["sanitizer"]["runs"]] == list(gpu_check.SANITIZER_TOOLS)
    assert [(run["backend"], run["dtype"]) for run in record["parity"]["runs"]] == \
        [("numpy", "float32"), ("numpy", "float64"), ("cpu", "float32"), ("cpu", "float64")]
    runs = {run["runner"]: run for run in record["timing"]["runs"]}
    assert set(runs) == {"numpy/reference", "cpu/one-lane", "torch"} and runs["torch"]["status"] == "skipped"
    assert runs["cpu/one-lane"]["ms_median"] == 1.0 and runs["cpu/one-lane"]["steps"] == gpu_check.TIMED_STEPS
    assert runs["cpu/one-lane"]["chars_per_s"] == TINY.chars * 1000 and runs["cpu/one-lane"]["launch_mode"] is None
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("GPU: Fake GPU (compute capability 9.0, 132 SMs, 80.0 GiB); driver 999.1")
    assert "tests: skipped (--skip-tests)" in out
    assert sum(line.startswith("parity ") and ": pass: worst " in line for line in out) == 4
    assert out[-2].startswith("all checks passed in ") and out[-1] == f"wrote {path}"


def test_the_record_is_on_disk_after_every_check_and_says_where_a_kill_stopped_it(stand_ins, monkeypatch, tmp_path):
    path = tmp_path / "record.json"
    seen = []
    real_write = gpu_check.write_record

    def write(record, where):
        real_write(record, where)
        seen.append((record.get("running"), sorted(name for name in gpu_check.CHECKS if name in record)))

    def killed(label, check, timeout_s):
        if label.startswith("parity"):
            raise KeyboardInterrupt                      # what a kill or Ctrl-C of the script does mid-check
        return check()

    monkeypatch.setattr(gpu_check, "write_record", write)
    monkeypatch.setattr(gpu_check, "isolated", killed)
    with pytest.raises(KeyboardInterrupt):
        gpu_check.main(["--skip-tests", "--json", str(path)])
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["complete"] is False and record["running"] == "parity"
    assert [name for name in gpu_check.CHECKS if name in record] == ["environment", "tests", "sanitizer"]
    assert record["sanitizer"]["status"] == "pass" and not list(tmp_path.glob(".record.json.*"))
    assert seen[0] == ("environment", ["environment"]) and seen[-1] == ("parity", ["environment", "sanitizer",
                                                                                  "tests"])


def test_the_parent_probes_the_backends_and_the_environment_in_processes_of_their_own(monkeypatch):
    reasons = gpu_check.backend_reasons(120)                      # a real subprocess: python gpu_check.py --probe
    assert reasons == {name: available_backends()[name] for name in gpu_check.gpu_backends()}
    seen = []
    monkeypatch.setattr(gpu_check, "run_command", lambda command, timeout_s: seen.append(command) or
                        {"returncode": 3, "output": "Traceback: no driver", "seconds": 0.1})
    with pytest.raises(RuntimeError, match=r"probe environment in a subprocess: exit status 3: Traceback: no driver"):
        gpu_check.probe_environment(120)
    assert seen == [[sys.executable, str(gpu_check.SCRIPT), "--probe", "environment"]]
    result = gpu_check.guarded("environment", gpu_check.probe_environment, 120)
    assert result["status"] == "error" and "exit status 3" in result["failures"][0]


def test_the_compute_mode_is_recorded_by_name():
    from types import SimpleNamespace
    props = {"name": b"Fake", "major": 9, "minor": 0, "multiProcessorCount": 132, "totalGlobalMem": 2**36,
             "maxThreadsPerMultiProcessor": 2048, "computeMode": 3}
    cupy = SimpleNamespace(cuda=SimpleNamespace(runtime=SimpleNamespace(getDeviceProperties=lambda device: props)))
    gpu = gpu_check.gpu_properties(cupy, 0)
    assert (gpu["name"], gpu["compute_mode"], gpu["sm_count"]) == ("Fake", "exclusive process", 132)


def test_a_check_that_hangs_or_crashes_is_killed_or_recorded_and_the_next_one_runs(stand_ins, monkeypatch,
                                                                                   tmp_path):
    """The rehearsal on CPU stand-ins: one mode's parity run hangs (killed at its time limit, the next mode
    runs in a fresh process), the kernels check's process dies without a result; both are recorded, timing
    still runs, and the record is complete and valid JSON."""
    import os
    import time as clock

    real_parity_run = gpu_check.parity_run

    def hang_in_one_mode(mode, dtype, cfg, make_backend):
        if mode.label == REFERENCE.label and dtype == np.float32:
            print("waiting for a barrier that never comes", flush=True)
            clock.sleep(60)
        return real_parity_run(mode, dtype, cfg, make_backend)

    def crash(backends, cfg):
        print("about to fault", file=sys.stderr, flush=True)
        os._exit(3)                                      # as a segfault or an out-of-memory kill would end it

    monkeypatch.setattr(gpu_check, "parity_run", hang_in_one_mode)
    monkeypatch.setattr(gpu_check, "kernel_resources", crash)
    path = tmp_path / "record.json"
    started = clock.perf_counter()
    assert gpu_check.main(["--skip-tests", "--budget", "60", "--json", str(path)]) == 1
    assert clock.perf_counter() - started < 30
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["complete"] is True and "running" not in record
    hung = (f"parity {REFERENCE.label} float32: still running after "
            f"{gpu_check.part_limit(record['limits_s']['parity'], 4):g} s, killed")
    assert record["parity"]["failures"] == [hung]                  # the other modes and dtypes ran and passed
    assert [run["status"] for run in record["parity"]["runs"]] == ["error", "pass", "pass", "pass"]
    assert record["kernels"]["failures"] == ["kernels: crashed: its process ended with exit code 3 and no result"]
    assert record["kernels"]["tail"] == "about to fault\n"                          # what it printed last
    assert record["parity"]["runs"][0]["tail"] == "waiting for a barrier that never comes\n"
    assert record["timing"]["status"] == "pass" and record["sanitizer"]["status"] == "pass"
    assert record["failures"] == record["parity"]["failures"] + record["kernels"]["failures"]


def test_a_failed_check_makes_the_exit_status_1_and_is_listed(stand_ins, monkeypatch, capsys):
    def no_driver(limit_s):
        raise RuntimeError("no driver")

    monkeypatch.setattr(gpu_check, "probe_environment", no_driver)
    monkeypatch.setattr(gpu_check, "check_parity",
                        lambda modes, limit, cfg, make: finished({"runs": [],
                                                                  "failures": ["parity numpy/reference: off"]}))
    assert gpu_check.main(["--quick", "--skip-tests"]) == 1
    day = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    [path] = (gpu_check.RESULTS).iterdir()
    assert path.name == f"gpu-check-unknown-gpu-{day}.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["failures"] == ["environment: RuntimeError: no driver", "parity numpy/reference: off"]
    assert record["sanitizer"] == record["timing"] == {"status": "skipped", "reason": "--quick", "failures": []}
    out = capsys.readouterr().out.splitlines()
    assert "environment: error: RuntimeError: no driver" in out and "sanitizer: skipped (--quick)" in out
    assert out[-4:] == ["FAILED (2):", "  environment: RuntimeError: no driver", "  parity numpy/reference: off",
                        f"wrote {path}"]
