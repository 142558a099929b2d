"""The one command for a machine with an NVIDIA GPU: are the GPU backends right, clean, and how fast?

Everything here is what a machine without a GPU cannot show (the test suite
checks the kernels there on emulations and simulators): launch failures,
races, barrier misuse, uninitialised or out-of-bounds accesses, occupancy and
speed. From the repository, after ``pip install -e ".[cuda13,test]"`` (or
``cuda12``; torch with CUDA for the baseline)::

    python benchmarks/gpu_check.py [--budget SECONDS] [--quick] [--skip-tests] [--json FILE]
    python benchmarks/gpu_check.py --rehearse      # the same pipeline without a GPU

It runs, in this order, and records in one JSON document
(``benchmarks/results/gpu-check-<gpu>-<date>.json`` unless ``--json``):

1. ``environment``: the driver, the CUDA driver API and runtime versions, the
   GPU (name, compute capability, SMs, limits, compute mode), the versions of
   CuPy, numba-cuda, numba, torch and cuda-bindings (or why one does not
   import), and under ``machine`` the host as ``machine.py`` describes it;
2. ``tests``: ``pytest -m gpu`` in a subprocess (the conformance suite's
   device makers, drawing :data:`DEVICE_EXAMPLES` examples per property test,
   and the CuPy device tests): counts and the output's tail; it fails when no
   device test passed or a skip says the device was unusable there;
3. ``sanitizer``: ``compute-sanitizer`` with memcheck (with
   :data:`SANITIZER_PADDING` bytes after every allocation), racecheck,
   synccheck and initcheck, instrumenting the backend's own kernels only, on
   three training windows of a small ragged shape (2 x 37 units, batch 5,
   window 7) for every launch mode marked ``sanitize``; CuPy's memory pools
   off and every window on a fresh backend, so every array is an allocation
   of its own and no buffer is reused from one window to the next;
4. ``parity``: at the paper's size (2 x 400, batch 100, window 50, the task
   vocabulary), for every entry of :data:`LAUNCH_MODES` in float32 and
   float64, three training windows (forward, BPTT, clipped SGD update, state
   carried) against the NumPy reference in float64 fed the same parameters
   and state: every gradient, the final state and the carried-in state's
   gradients within 1e-4 relative (float64: 1e-10), the loss within 1e-5
   (1e-10); the same window run twice gives bitwise-equal results; the
   backend ran in the launch mode asked for;
5. ``kernels``: every compiled kernel's registers, static and dynamic shared
   memory, local memory (spills), largest block, and its occupancy at the
   block the paper's size launches it with (the driver's occupancy
   calculator), the persistent kernels of both backends included;
6. ``timing``: one training step (forward, BPTT, clipping, update) at the
   paper's size for every launch mode, and torch's ``nn.LSTM`` on cuDNN
   (Embedding, LSTM, Linear, cross-entropy, SGD) with TF32 off and, apart,
   on; CUDA events, 5 warm-up and 20 timed steps, median, minimum, maximum.

Time: ``--budget`` (default :data:`DEFAULT_BUDGET_S` s) is shared out: the
availability probe first, then each stage its share (:data:`STAGE_SHARES`)
of what is left among the stages still to run, and inside parity, timing
and the sanitizer every run an equal part. Nothing that runs on the GPU runs
in this process: the environment and the backends' availability are probed
in subprocesses (``--probe``), the tests and the sanitizer are subprocesses,
and every launch mode's parity run (per dtype) and timing, torch's timing
and the kernel check each run in a forked child (:func:`isolated`), so a
run past its time is killed and recorded as such, a crash is recorded, a
sticky CUDA error stays in its mode, and the next mode starts in a fresh
process. The record is rewritten atomically before and after every check.

Each check is one function returning a dict with ``status`` (pass, fail,
error, skipped) and ``failures``; a check that raises is recorded as an
error and the others still run. The exit status is 1 when any check failed
(a test, parity, bitwise equality, the launch mode, a sanitizer tool) or
could not run, else 0. Without a usable GPU backend it prints why for each,
writes nothing and exits 2. ``--quick`` skips the sanitizer and the timing,
``--skip-tests`` the tests. ``--rehearse`` runs every stage without a GPU
(:class:`Rehearsal`) and exits 0 when its record shows exactly the
outcomes it planned, a hang and a crash among them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import datetime
import json
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path

import numpy as np

from kernel_check import KERNELS as KERNEL_CHECK_KERNELS
from kernel_check import emulated_device
from bench_lstm import CLIP, CONFIGS, LEARNING_RATE, Config, LtexecRunner, TorchRunner, launch_details, random_window
from machine import REPOSITORY, machine, package_version
from ltexec.atomic import atomic_write
from ltexec.backends import available_backends, get_backend
from ltexec.model import LSTMModel
from ltexec.optim import SGD
from ltexec.testing import relative_error


@dataclass(frozen=True)
class LaunchMode:
    """One way a GPU backend runs a step: the backend and the options that select the way."""

    backend: str
    name: str
    options: dict = field(default_factory=dict)
    expect: str | None = None
    """What ``backend.launch_mode`` must say after the training windows, exactly or followed by a
    parenthesised reason (None: the backend has none)."""
    sanitize: bool = True
    """Run it under compute-sanitizer (False where another entry runs the same hand-written kernels)."""

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.name}"

    @property
    def spec(self) -> str:
        """The backend and its options as ``--sanitizer-workload`` takes them, e.g. ``cupy:persistent=true``."""
        options = ",".join(f"{key}={format_option(value)}" for key, value in self.options.items())
        return f"{self.backend}:{options}" if options else self.backend


LAUNCH_MODES = (
    LaunchMode("cupy", "persistent", {"persistent": True}, expect="persistent"),
    LaunchMode("cupy", "per-step", {"persistent": False}, expect="per-step launches"),
    LaunchMode("numba_cuda", "persistent", {"persistent": True}, expect="persistent"),
    LaunchMode("numba_cuda", "per-step-tiled", {"persistent": False, "gemm": "tiled"}, expect="per-step launches"),
    LaunchMode("numba_cuda", "per-step-cublas", {"persistent": False, "gemm": "cublas"}, expect="per-step launches",
               sanitize=False),
)
"""Every launch mode of every GPU backend; each is checked for parity and timed. A new mode is one
more entry. ``sanitize=False``: its hand-written kernels are those of an entry that is sanitized
(cuBLAS in place of the tiled products)."""

PAPER = CONFIGS["paper"]
SANITIZER_SHAPE = Config("sanitizer", batch=5, hidden=37, layers=2, seq_len=7)
"""Small and ragged: no extent a multiple of a tile or block size."""
WINDOWS = 3
"""Training windows per run: the state carried from one window to the next is checked too."""
TOLERANCES = {"float32": (1e-4, 1e-5), "float64": (1e-10, 1e-10)}
"""Per dtype: the largest relative error of every array, and of the loss, against the float64 reference."""
DTYPES = (np.float32, np.float64)

DEVICE_EXAMPLES = 4
"""Examples each property test of the conformance suite draws for a device maker in the tests stage
(the suite's own default is 20): the stage must fit its share of the budget."""
TESTS_COMMAND = ("-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--device-examples={DEVICE_EXAMPLES}",
                 "tests")
"""pytest's arguments (after the interpreter) for the tests marked ``gpu``."""
DEFAULT_BUDGET_S = 360
"""Seconds the whole check may take (``--budget``): the availability probe, then the stages' shares."""
STAGE_SHARES = {"environment": 0.06, "tests": 0.30, "sanitizer": 0.25, "parity": 0.22, "kernels": 0.05,
                "timing": 0.12}
"""Each stage's share of what is left of the budget when it starts, among the stages still to run
(:func:`stage_limit`); a stage that ends early leaves its time to the later ones. Inside a stage every
launch mode's run gets an equal part (:func:`part_limit`)."""
PROBE_SHARE = 0.15
"""The availability probe's share of the whole budget (it compiles every kernel once)."""
MIN_LIMIT_S = 5
"""The least time any stage or run is given, however little budget is left."""
UNUSABLE_DEVICE = re.compile(r"^SKIPPED .*\bno (CUDA|\w+) device\b")
"""A skip reason (pytest -ra) saying the tests' process found no usable device, e.g. one GPU in
EXCLUSIVE_PROCESS compute mode whose context another process holds: a failure, not a pass."""

SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck", "initcheck")
SANITIZER_ERROR_EXIT = 86
"""The exit status compute-sanitizer gives when its tool found errors in a program that succeeded."""
SANITIZER_JOBS = 8
SANITIZER_PADDING = 256
"""Bytes of padding memcheck puts after every allocation."""
SANITIZER_HINT = ("pip install nvidia-cuda-sanitizer-api (CUDA 13; nvidia-cuda-sanitizer-api-cu12 for CUDA 12), "
                  "or put a CUDA toolkit's bin folder on PATH")
WORKLOAD_DONE = "gpu_check sanitizer workload finished"
ERROR_SUMMARY = re.compile(r"ERROR SUMMARY: (\d+) errors?|RACECHECK SUMMARY: \d+ hazards? displayed \((\d+) errors?")

WARMUP_STEPS, TIMED_STEPS = 5, 20
RESULTS = REPOSITORY / "benchmarks" / "results"
SCRIPT = Path(__file__).resolve()
KERNEL_CHECK = SCRIPT.with_name("kernel_check.py")
OUTPUT_TAIL = 4000
"""Characters of a subprocess's output kept in the record."""
CHECKS = ("environment", "tests", "sanitizer", "parity", "kernels", "timing")
LIBRARIES = (("cupy", "cupy", None), ("numba-cuda", "numba.cuda", "numba-cuda"), ("numba", "numba", "numba"),
             ("torch", "torch", "torch"), ("cuda-bindings", "cuda.bindings", "cuda-bindings"))
"""(name in the record, module to import, distribution whose version to read; None: the module's __version__)."""


# ------------------------------------------------------------ launch modes

def format_option(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def parse_option(text: str):
    """An option's value from a spec: true/false as bool, digits as int, else the text."""
    if text in ("true", "false"):
        return text == "true"
    return int(text) if re.fullmatch(r"-?\d+", text) else text


def parse_spec(spec: str) -> tuple[str, dict]:
    """``BACKEND[:KEY=VALUE,...]`` -> (backend name, options)."""
    backend, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise ValueError(f"option {item!r} of {spec!r} is not KEY=VALUE")
        options[key] = parse_option(value)
    return backend, options


def gpu_backends(modes=None) -> tuple[str, ...]:
    """The backends ``modes`` (default :data:`LAUNCH_MODES`) run on, in order."""
    return tuple(dict.fromkeys(mode.backend for mode in (LAUNCH_MODES if modes is None else modes)))


def build_backend(mode: LaunchMode, dtype):
    return get_backend(mode.backend, dtype, **mode.options)


# ------------------------------------------------------------ records

def finished(result: dict) -> dict:
    """``result`` with its status: fail when it lists failures, else pass."""
    return {"status": "fail" if result["failures"] else "pass", **result}


def skipped(reason: str) -> dict:
    return {"status": "skipped", "reason": reason, "failures": []}


def guarded(label: str, check, *args, **kwargs) -> dict:
    """``check(*args, **kwargs)``, or, when it raises, an error record whose failure is named ``label``."""
    try:
        return check(*args, **kwargs)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        return {"status": "error", "error": error, "traceback": traceback.format_exc()[-OUTPUT_TAIL:],
                "failures": [f"{label}: {error}"]}


def isolated(label: str, check, timeout_s: float) -> dict:
    """:func:`guarded` ``check()`` in a forked child process that has ``timeout_s``: a hang is killed and
    recorded, a crash (the child ends without a result) is recorded, each with the tail of what the child
    printed, and a sticky CUDA error stays in the child, so the next check starts on a clean device. The
    parent holds no CUDA context (the probes run apart), so forking is safe; where fork is not available the
    check runs in this process.
    """
    import multiprocessing
    if "fork" not in multiprocessing.get_all_start_methods():
        return guarded(label, check)
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    with tempfile.TemporaryFile() as output:
        child = context.Process(target=_send_result, args=(label, check, send, output.fileno()), daemon=True)
        child.start()
        send.close()
        ended = receive.poll(timeout_s)                  # a result, or the pipe closed by the child's end
        result = None
        if ended:
            try:
                result = receive.recv()
            except EOFError:
                pass
        else:
            child.kill()
        child.join(10)
        receive.close()
        output.seek(0)
        tail = output.read().decode("utf-8", errors="replace")[-OUTPUT_TAIL:]
    if result is not None:
        return result
    what = (f"still running after {timeout_s:g} s, killed" if not ended
            else f"crashed: its process ended with exit code {child.exitcode} and no result")
    return {"status": "error", "error": what, "tail": tail, "failures": [f"{label}: {what}"]}


def _send_result(label: str, check, send, output: int) -> None:
    """In the child of :func:`isolated`: its output into ``output`` (a file descriptor), the guarded result, as
    plain JSON values, through the pipe."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(output, 1)                                   # what libraries write to the descriptors
    os.dup2(output, 2)
    sys.stdout = sys.stderr = open(output, "w", buffering=1, closefd=False)   # and what Python prints
    send.send(json_safe(guarded(label, check)))
    send.close()


def run_command(command: list[str], timeout_s: float) -> dict:
    """Run ``command`` in the repository in a process group of its own; stdout and stderr together.

    ``returncode`` is None when it ran past ``timeout_s``; then the whole
    group (a sanitizer and the program under it) is killed.
    """
    started = time.perf_counter()
    with subprocess.Popen(command, cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as process:
        try:
            output, _ = process.communicate(timeout=timeout_s)
            returncode = process.returncode
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            returncode = None
    return {"returncode": returncode, "output": output, "seconds": round(time.perf_counter() - started, 1)}


def stage_limit(stage: str, remaining_s: float, stages: list[str]) -> float:
    """Seconds for ``stage`` (one of ``stages``, the stages still to run) out of ``remaining_s``."""
    share = STAGE_SHARES[stage] / sum(STAGE_SHARES[name] for name in stages)
    return max(MIN_LIMIT_S, round(share * remaining_s, 1))


def part_limit(limit_s: float, parts: int) -> float:
    """Seconds for each of ``parts`` runs that take turns within a stage's ``limit_s``."""
    return max(MIN_LIMIT_S, round(limit_s / max(parts, 1), 1))


def shown_command(command: list[str]) -> str:
    """A command as a user types it in the repository: ``python`` for this interpreter, paths from the root."""
    words = ["python" if word == sys.executable else word for word in command]
    return shlex.join(str(Path(w).relative_to(REPOSITORY)) if w.startswith(str(REPOSITORY)) else w for w in words)


# ------------------------------------------------------------ environment

def cuda_version_text(version: int) -> str:
    """CUDA's integer version (13000, 12080) as text (13.0, 12.8)."""
    return f"{version // 1000}.{version % 1000 // 10}"


def library_versions(libraries=LIBRARIES) -> dict:
    """Each library's version, or ``missing`` with why it does not import."""
    found = {}
    for name, module_name, distribution in libraries:
        try:
            module = import_module(module_name)
        except Exception as exc:   # ImportError, or a broken install's own error
            found[name] = {"version": None, "missing": f"{type(exc).__name__}: {exc}"}
            continue
        version = package_version(distribution) if distribution else None
        found[name] = {"version": version or getattr(module, "__version__", None)}
    return found


def torch_build() -> dict | None:
    """The CUDA and cuDNN versions torch was built with and whether it sees a GPU (None without torch)."""
    try:
        import torch
    except ImportError:
        return None
    return {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "cuda_available": torch.cuda.is_available()}


def nvidia_smi_driver() -> str | None:
    """The NVIDIA driver's version as nvidia-smi reports it (None without nvidia-smi)."""
    program = shutil.which("nvidia-smi")
    if program is None:
        return None
    run = run_command([program, "--query-gpu=driver_version", "--format=csv,noheader"], 60)
    words = run["output"].split()
    return words[0] if run["returncode"] == 0 and words else None


def gpu_properties(cupy, device_id: int) -> dict:
    """The current GPU's name, compute capability and the limits occupancy depends on."""
    props = cupy.cuda.runtime.getDeviceProperties(device_id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return {"id": device_id, "name": name, "compute_capability": f"{props['major']}.{props['minor']}",
            "sm_count": props["multiProcessorCount"], "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
            "max_threads_per_sm": props["maxThreadsPerMultiProcessor"],
            "shared_memory_per_sm": props.get("sharedMemPerMultiprocessor"),
            "registers_per_sm": props.get("regsPerMultiprocessor"), "l2_cache_bytes": props.get("l2CacheSize"),
            "compute_mode": COMPUTE_MODES.get(props.get("computeMode"), props.get("computeMode"))}


COMPUTE_MODES = {0: "default", 1: "exclusive thread", 2: "prohibited", 3: "exclusive process"}
"""cudaComputeMode: with "exclusive process", a device admits one process's context at a time."""


def probe_in_subprocess(what: str, timeout_s: float, rehearse: bool = False):
    """What ``gpu_check.py --probe WHAT`` prints (JSON), run in a process of its own.

    The parent then holds no CUDA context while the GPU tests and the
    sanitizer run in their own processes: on a GPU in EXCLUSIVE_PROCESS
    compute mode (common on clusters) a context held here would leave them
    no device, and every device test would skip.
    """
    run = run_command([sys.executable, str(SCRIPT), "--probe", what, *(["--rehearse"] if rehearse else [])],
                      timeout_s)
    lines = run["output"].strip().splitlines()
    if run["returncode"] != 0 or not lines:
        state = "still running, stopped" if run["returncode"] is None else f"exit status {run['returncode']}"
        raise RuntimeError(f"probe {what} in a subprocess: {state}: {run['output'][-OUTPUT_TAIL:]}")
    return json.loads(lines[-1])


def backend_reasons(timeout_s: float = PROBE_SHARE * DEFAULT_BUDGET_S) -> dict:
    """Every GPU backend of :data:`LAUNCH_MODES` mapped to None if it runs here, else why not (probed apart)."""
    return probe_in_subprocess("availability", timeout_s)


def probe_environment(timeout_s: float) -> dict:
    """Check 1, :func:`environment`, run apart (see :func:`probe_in_subprocess`)."""
    return probe_in_subprocess("environment", timeout_s)


PROBES = {"availability": lambda: {name: available_backends()[name] for name in gpu_backends()},
          "environment": lambda: environment()}
"""What ``--probe`` prints: run by :func:`probe_in_subprocess`."""


def environment() -> dict:
    """Driver, CUDA versions, the GPU, library versions, the sanitizer found (check 1)."""
    import cupy
    runtime = cupy.cuda.runtime
    sanitizer = find_sanitizer()
    return finished({"driver_version": nvidia_smi_driver(),
                     "cuda_driver_api": cuda_version_text(runtime.driverGetVersion()),
                     "cuda_runtime": cuda_version_text(runtime.runtimeGetVersion()),
                     "gpu": gpu_properties(cupy, runtime.getDevice()), "libraries": library_versions(),
                     "torch_build": torch_build(), "compute_sanitizer": sanitizer,
                     "compute_sanitizer_version": sanitizer_version(sanitizer) if sanitizer else None,
                     "failures": []})


# ------------------------------------------------------------ tests

def pytest_counts(output: str) -> dict[str, int]:
    """passed, failed, skipped, errors, deselected from pytest's closing line (zeros where it has none)."""
    counts = dict.fromkeys(("passed", "failed", "skipped", "errors", "deselected"), 0)
    for line in reversed(output.splitlines()):
        found = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)\b", line)
        if found and re.search(r" in \d", line):
            for number, word in found:
                counts["errors" if word.startswith("error") else word] = int(number)
            break
    return counts


def run_gpu_tests(timeout_s: float, arguments=TESTS_COMMAND) -> dict:
    """The tests marked ``gpu``, in a subprocess: counts, exit status, output's tail (check 2)."""
    command = [sys.executable, *arguments]
    run = run_command(command, timeout_s)
    counts = pytest_counts(run["output"])
    unusable = [line for line in run["output"].splitlines() if UNUSABLE_DEVICE.search(line)]
    failures = []
    if run["returncode"] is None:
        failures.append(f"GPU tests: still running after {timeout_s:g} s, stopped")
    elif run["returncode"] != 0 or counts["failed"] or counts["errors"]:
        failures.append(f"GPU tests: {counts['failed']} failed, {counts['errors']} errors, "
                        f"{counts['passed']} passed (pytest exit status {run['returncode']})")
    elif counts["passed"] == 0:
        failures.append(f"GPU tests: none passed ({counts['skipped']} skipped): nothing was tested on the device")
    if unusable:
        failures.append(f"GPU tests: skipped because the device was not usable in the tests' process: "
                        f"{unusable[0].strip()}")
    return finished({"command": shown_command(command), "returncode": run["returncode"], "seconds": run["seconds"],
                     **counts, "tail": run["output"][-OUTPUT_TAIL:], "failures": failures})


# ------------------------------------------------------------ training windows

def train_windows(backend, cfg: Config, windows: int = WINDOWS) -> dict:
    """``windows`` training steps (forward, BPTT, clipping, update, state carried); the launch details after them."""
    model = LSTMModel(cfg.vocab, cfg.hidden, cfg.layers, backend=backend)
    optimizer = SGD(lr=LEARNING_RATE, clip=CLIP)
    state = None
    for window in range(windows):
        result = model.loss_and_grads(*random_window(cfg, seed=window), state)
        optimizer.step(backend, model.params, result.grads)
        state = result.state
        del result   # frees the pooled buffers for the next window
    backend.synchronize()
    return launch_details(backend)


# ------------------------------------------------------------ sanitizer

def disable_memory_pools() -> None:
    """Every CuPy allocation straight from the driver, so memcheck and initcheck see each array's own bounds."""
    import cupy
    cupy.cuda.set_allocator(None)
    cupy.cuda.set_pinned_memory_allocator(None)


def sanitizer_workload(spec: str, make_backend=get_backend) -> int:
    """What runs under the sanitizer: :data:`WINDOWS` training windows of :data:`SANITIZER_SHAPE` on one backend
    (float32), each window on a fresh backend (and model) so that no buffer of one window is reused in the next:
    initcheck then sees every window read only what that window wrote. The parameters and the state go on
    from window to window."""
    name, options = parse_spec(spec)
    rehearse = make_backend is not get_backend
    if name in gpu_backends() and not rehearse:
        disable_memory_pools()
    cfg, params, state = REHEARSAL_SHAPE if rehearse else SANITIZER_SHAPE, None, None
    for window in range(WINDOWS):
        backend = make_backend(name, np.float32, **options)
        model = LSTMModel(cfg.vocab, cfg.hidden, cfg.layers, backend=backend)
        if params is not None:
            model.load_params(params)
        if state is not None:
            state = [(backend.asarray(h), backend.asarray(c)) for h, c in state]
        result = model.loss_and_grads(*random_window(cfg, seed=window), state)
        SGD(lr=LEARNING_RATE, clip=CLIP).step(backend, model.params, result.grads)
        backend.synchronize()
        params = model.state_dict()
        state = [(backend.to_numpy(h), backend.to_numpy(c)) for h, c in result.state]
        details = launch_details(backend)
        del result, model, backend                   # this window's buffers go back to the driver
    print(f"{WORKLOAD_DONE}: {spec}, launch mode {details['launch_mode']}", flush=True)
    return 0


def project_kernels(backend: str) -> list[str]:
    """The names of ``backend``'s own kernels: the sanitizer instruments these and no library's (cuBLAS, CuPy)."""
    if backend == "cupy":
        from ltexec.backends.cupy.backend import KERNELS
        return [kernel for kernels in KERNELS.values() for kernel in kernels]
    if backend == "numba_cuda":
        from ltexec.backends.numba_cuda import kernels, persistent
        return [*kernels.signatures(np.float32), *persistent.KERNEL_NAMES.values()]
    return []


def find_sanitizer() -> str | None:
    """compute-sanitizer on PATH, in a CUDA toolkit (CUDA_HOME, CUDA_PATH, /usr/local/cuda) or an NVIDIA wheel."""
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    candidates = [Path(os.environ[name]) / "bin" / "compute-sanitizer" for name in ("CUDA_HOME", "CUDA_PATH")
                  if os.environ.get(name)]
    candidates.append(Path("/usr/local/cuda/bin/compute-sanitizer"))
    try:
        import nvidia   # namespace package of NVIDIA's wheels: nvidia/cu13/bin/compute-sanitizer, ...
        for folder in map(Path, nvidia.__path__):
            candidates += sorted(folder.glob("*/bin/compute-sanitizer"))
            candidates += sorted(folder.glob("*/compute-sanitizer/compute-sanitizer"))
    except ImportError:
        pass
    return next((str(path) for path in candidates if path.is_file() and os.access(path, os.X_OK)), None)


def sanitizer_version(program: str) -> str | None:
    run = run_command([program, "--version"], 60)
    lines = run["output"].strip().splitlines()
    return lines[-1] if run["returncode"] == 0 and lines else None


@dataclass(frozen=True)
class SanitizerWorkload:
    """A program run under compute-sanitizer: its label, whose kernels it instruments, its arguments after the
    interpreter, and the line its output holds when it finished."""

    label: str
    backend: str
    argv: tuple
    done: str


def sanitizer_workloads(modes, rehearse: bool = False) -> list[SanitizerWorkload]:
    """Training windows of every launch mode marked ``sanitize`` (:func:`sanitizer_workload`), and, with the
    CuPy backend, every CUDA C kernel alone through the per-kernel harness at its small size: there every
    argument is an allocation of its own (``h0`` apart from ``hs``, ``c0`` apart from ``cs``), so an access
    past one array cannot land in the next."""
    flag = ("--rehearse",) if rehearse else ()
    workloads = [SanitizerWorkload(mode.label, mode.backend, (str(SCRIPT), "--sanitizer-workload", mode.spec, *flag),
                                   WORKLOAD_DONE) for mode in modes if mode.sanitize]
    if "cupy" in gpu_backends(modes):
        device = "emulated" if rehearse else "gpu"
        workloads += [SanitizerWorkload(f"kernel {kernel}", "cupy",
                                        (str(KERNEL_CHECK), kernel, "--device", device, "--size", "small", "--dtype",
                                         "float32", "--repeats", "1"), f"{kernel}: passed")
                      for kernel in KERNEL_CHECK_KERNELS]
    return workloads


def sanitizer_command(program: str, tool: str, workload: SanitizerWorkload) -> list[str]:
    """compute-sanitizer running ``tool`` on ``workload``: only the project's kernels instrumented (a regular
    expression of their names); memcheck with :data:`SANITIZER_PADDING` bytes after every allocation, so an
    access just past an array lands in padding and is reported."""
    options = ["--tool", tool, "--error-exitcode", str(SANITIZER_ERROR_EXIT), "--print-limit", "20"]
    kernels = project_kernels(workload.backend)
    if kernels:
        options += ["--kernel-regex", f"kns={'|'.join(kernels)}"]
    if tool == "memcheck":
        options += ["--padding", str(SANITIZER_PADDING)]
    return [program, *options, sys.executable, *workload.argv]


def sanitizer_verdict(returncode: int | None, output: str, done: str = WORKLOAD_DONE) -> tuple[str, int | None]:
    """(verdict, errors the tool counted): pass, fail (errors found), timeout, or error (the program failed, or
    its output lacks ``done``)."""
    if returncode is None:
        return "timeout", None
    counts = [int(a or b) for a, b in ERROR_SUMMARY.findall(output)]
    errors = max(counts) if counts else None        # racecheck may print both summaries for the same errors
    if returncode == SANITIZER_ERROR_EXIT or (errors or 0) > 0:
        return "fail", errors
    if returncode != 0 or done not in output:
        return "error", errors
    return "pass", errors


def sanitizer_report(output: str, limit: int = 12) -> list[str]:
    """The tool's own lines (``========= ...``) but its banner and summary: the first errors it reported."""
    lines = [line.strip() for line in output.splitlines() if line.startswith("=========")]
    return [line for line in lines if line.strip("= ") and "COMPUTE-SANITIZER" not in line
            and "SUMMARY" not in line][:limit]


def run_sanitizer(program: str, tool: str, workload: SanitizerWorkload, timeout_s: float) -> dict:
    """One tool on one workload, in a subprocess."""
    command = sanitizer_command(program, tool, workload)
    run = run_command(command, timeout_s)
    verdict, errors = sanitizer_verdict(run["returncode"], run["output"], workload.done)
    failures = [] if verdict == "pass" else [
        f"sanitizer {tool} on {workload.label}: {verdict}" + (f" ({errors} errors)" if errors else "")]
    return {"workload": workload.label, "backend": workload.backend, "tool": tool, "verdict": verdict,
            "errors": errors, "returncode": run["returncode"], "seconds": run["seconds"],
            "command": shown_command(command), "report": sanitizer_report(run["output"]),
            "tail": run["output"][-OUTPUT_TAIL:], "failures": failures}


def check_sanitizer(modes, limit_s: float, program: str | None = None, rehearse: bool = False,
                    tools=SANITIZER_TOOLS) -> dict:
    """Every tool on every workload (:func:`sanitizer_workloads`), :data:`SANITIZER_JOBS` at a time (check 3);
    skipped without compute-sanitizer. Each run has an equal part of ``limit_s`` for each round of jobs."""
    program = program or find_sanitizer()
    if program is None:
        return skipped(f"compute-sanitizer not found: {SANITIZER_HINT}")
    jobs = [(tool, workload) for workload in sanitizer_workloads(modes, rehearse) for tool in tools]
    timeout_s = part_limit(limit_s, math.ceil(len(jobs) / SANITIZER_JOBS))
    with concurrent.futures.ThreadPoolExecutor(max_workers=SANITIZER_JOBS) as pool:
        runs = list(pool.map(lambda job: run_sanitizer(program, *job, timeout_s), jobs))
    return finished({"program": program, "shape": dataclasses.asdict(SANITIZER_SHAPE), "runs": runs,
                     "failures": [failure for run in runs for failure in run["failures"]]})


# ------------------------------------------------------------ parity

def step_arrays(result, to_numpy) -> dict[str, np.ndarray]:
    """A window's outputs as host arrays: every gradient, each layer's final state and carried-in state's gradient."""
    arrays = {f"grads/{name}": to_numpy(g) for name, g in result.grads.items()}
    for k, ((h, c), (dh, dc)) in enumerate(zip(result.state, result.dstate)):
        arrays.update({f"state/h{k}": to_numpy(h), f"state/c{k}": to_numpy(c),
                       f"dstate/h{k}": to_numpy(dh), f"dstate/c{k}": to_numpy(dc)})
    return arrays


def compare_window(result, expected, to_numpy) -> dict:
    """Relative errors of a backend's window against the reference's: the loss's and every array's."""
    actual, reference = step_arrays(result, to_numpy), step_arrays(expected, np.asarray)
    errors = {name: relative_error(actual[name], reference[name]) for name in reference}
    worst = max(errors, key=errors.get)
    loss, loss_reference = float(result.loss), float(expected.loss)   # backend scalars: read them here
    return {"loss": loss, "loss_reference": loss_reference,
            "loss_error": relative_error(loss, loss_reference), "worst": worst, "max_error": errors[worst],
            "correct": int(result.correct), "correct_reference": int(expected.correct), "errors": errors}


def bitwise_differences(model, x, y, mask, state) -> list[str]:
    """The outputs that differ in any bit between two runs of the same window (same parameters and state)."""
    runs = []
    for _ in range(2):
        result = model.loss_and_grads(x, y, mask, state)
        runs.append({"loss": np.float64(float(result.loss)), **step_arrays(result, model.backend.to_numpy)})
        del result
    first, second = runs
    return [name for name in first if first[name].tobytes() != second[name].tobytes()]


def parity_failures(label: str, dtype_name: str, windows: list[dict], differing: list[str],
                    details: dict, expect: str | None) -> list[str]:
    tolerance, loss_tolerance = TOLERANCES[dtype_name]
    failures = []
    for w in windows:
        if not w["loss_error"] <= loss_tolerance:
            failures.append(f"parity {label} {dtype_name} window {w['window']}: loss relative error "
                            f"{w['loss_error']:.3g} > {loss_tolerance:g}")
        if not w["max_error"] <= tolerance:
            failures.append(f"parity {label} {dtype_name} window {w['window']}: {w['worst']} relative error "
                            f"{w['max_error']:.3g} > {tolerance:g}")
    if differing:
        failures.append(f"bitwise {label} {dtype_name}: the same window twice gave different {', '.join(differing)}")
    ran = details["launch_mode"]
    if expect is not None and not (ran == expect or str(ran).startswith(f"{expect} (")):
        failures.append(f"launch mode {label} {dtype_name}: ran {ran!r}, not {expect!r}")
    return failures


def parity_run(mode: LaunchMode, dtype, cfg: Config = PAPER, make_backend=build_backend) -> dict:
    """:data:`WINDOWS` training windows of one launch mode and dtype against the float64 reference, then twice the same.

    Before each window the reference takes the backend's parameters and
    carried state, so each window's error is that window's own; between
    windows the backend takes its clipped SGD step.
    """
    backend = make_backend(mode, dtype)
    model = LSTMModel(cfg.vocab, cfg.hidden, cfg.layers, backend=backend)
    reference = LSTMModel(cfg.vocab, cfg.hidden, cfg.layers, backend="numpy", dtype=np.float64)
    optimizer = SGD(lr=LEARNING_RATE, clip=CLIP)
    state, windows = None, []
    for window in range(WINDOWS):
        x, y, mask = random_window(cfg, seed=window)
        reference.load_params(model.state_dict())
        host_state = None if state is None else [(backend.to_numpy(h), backend.to_numpy(c)) for h, c in state]
        expected = reference.loss_and_grads(x, y, mask, host_state)
        result = model.loss_and_grads(x, y, mask, state)
        windows.append({"window": window, **compare_window(result, expected, backend.to_numpy)})
        optimizer.step(backend, model.params, result.grads)
        state = result.state
        del result   # see train_windows
    differing = bitwise_differences(model, *random_window(cfg, seed=WINDOWS), state)
    details = launch_details(backend)
    dtype_name = np.dtype(dtype).name
    tolerance, loss_tolerance = TOLERANCES[dtype_name]
    return finished({"backend": mode.backend, "mode": mode.name, "options": mode.options, "dtype": dtype_name,
                     "device": backend.device_name(), **details, "tolerance": tolerance,
                     "loss_tolerance": loss_tolerance, "windows": windows, "bitwise_equal": not differing,
                     "bitwise_differences": differing,
                     "failures": parity_failures(mode.label, dtype_name, windows, differing, details, mode.expect)})


def check_parity(modes, limit_s: float, cfg: Config = PAPER, make_backend=build_backend) -> dict:
    """Every launch mode in both dtypes against the reference, and bitwise repeatability (check 4); each run
    in a process of its own with an equal part of ``limit_s``."""
    timeout_s = part_limit(limit_s, len(modes) * len(DTYPES))
    runs = []
    for mode in modes:
        for dtype in DTYPES:                             # each in a process of its own (isolated)
            label = f"parity {mode.label} {np.dtype(dtype).name}"
            runs.append({"backend": mode.backend, "mode": mode.name, "dtype": np.dtype(dtype).name,
                         **isolated(label, lambda mode=mode, dtype=dtype: parity_run(mode, dtype, cfg, make_backend),
                                    timeout_s)})
    return finished({"config": dataclasses.asdict(cfg), "windows": WINDOWS, "runs": runs,
                     "failures": [failure for run in runs for failure in run["failures"]]})


# ------------------------------------------------------------ kernels

def block_threads(block) -> int:
    return math.prod(block) if isinstance(block, tuple) else block


def cupy_launch_blocks(cfg: Config) -> dict[str, int]:
    """Threads per block of each CuPy kernel at ``cfg``'s size."""
    from ltexec.backends.cupy import backend as cupy_backend
    cell = cupy_backend.CELL_BLOCK
    return {"lstm_cell_forward": cell, "lstm_cell_backward": cell,
            "softmax_xent": cupy_backend.softmax_block(cfg.vocab)}


def numba_launch_blocks(cfg: Config) -> dict[str, int]:
    """Threads per block of each Numba kernel at ``cfg``'s size (products: the window's (T*B, 4H) ones)."""
    from ltexec.backends.numba_cuda import kernels as kernels
    rows, H = cfg.seq_len * cfg.batch, cfg.hidden
    recurrent = block_threads(kernels.recurrent_geometry(cfg.batch, H)[1])
    return {"lstm_forward_step": recurrent, "lstm_backward_step": recurrent,
            "gemm": block_threads(kernels.gemm_geometry(rows, 4 * H)[1]),
            "column_sums": block_threads(kernels.column_sums_geometry(rows, 4 * H)[1]),
            "softmax_xent": block_threads(kernels.softmax_geometry(rows, cfg.vocab)[1]),
            "embedding_forward": kernels.elementwise_geometry(rows * H)[1],
            "embedding_backward": kernels.elementwise_geometry(cfg.vocab * H)[1]}


def occupancy(active_blocks: int | None, block: int | None, max_threads_per_sm: int) -> float | None:
    """Share of an SM's warp slots that ``active_blocks`` blocks of ``block`` threads fill."""
    if active_blocks is None or block is None:
        return None
    return round(active_blocks * math.ceil(block / 32) * 32 / max_threads_per_sm, 3)


def kernel_row(backend: str, kernel: str, registers: int, shared: int, local: int, max_block: int,
               block: int | None, active_blocks: int | None, max_threads_per_sm: int,
               dynamic_shared: int = 0) -> dict:
    return {"backend": backend, "kernel": kernel, "registers": registers, "shared_bytes": shared,
            "dynamic_shared_bytes": dynamic_shared, "local_bytes": local, "max_threads_per_block": max_block,
            "block": block, "active_blocks_per_sm": active_blocks,
            "occupancy": occupancy(active_blocks, block, max_threads_per_sm)}


def cupy_persistent_launches(device, cfg: Config) -> dict[str, tuple[int, int]]:
    """Name expression -> (block, dynamic shared bytes) of the persistent kernels at ``cfg``'s size, per dtype,
    as the backend plans them on ``device`` (a :class:`~ltexec.backends.cupy.backend.CudaDevice`); a dtype
    whose launch cannot fit (shared memory, no cooperative launch) is left out."""
    from ltexec.backends.cupy import backend as cupy_backend
    from ltexec.backends.persistent_plan import PersistentUnfit
    launches = {}
    for dtype in DTYPES:
        try:
            geometry = cupy_backend.plan_persistent(cfg.seq_len, cfg.batch, cfg.hidden, np.dtype(dtype).itemsize,
                                                    device.persistent_limits(), lambda *query: math.inf)
        except PersistentUnfit:
            continue
        for direction, kernel in cupy_backend.PERSISTENT_KERNELS.items():
            launches[cupy_backend.name_expression(kernel, dtype)] = (geometry.threads,
                                                                     geometry.shared_bytes(direction))
    return launches


def cupy_kernels(cupy, device_id: int, cfg: Config, max_threads_per_sm: int) -> list[dict]:
    """The CuPy backend's kernels (every instantiation) as the driver reports them; the persistent ones at the
    block and dynamic shared memory they launch with (the occupancy query raises their limit first)."""
    from ltexec.backends.cupy.backend import CudaDevice, compiled_kernels
    device = CudaDevice(cupy)
    blocks = cupy_launch_blocks(cfg)
    persistent = cupy_persistent_launches(device, cfg)
    rows = []
    for expression, kernel in compiled_kernels(cupy, device_id).items():
        block, dynamic = persistent.get(expression, (blocks.get(expression.split("<")[0]), 0))
        active = None if block is None else device.resident_blocks(expression, block, dynamic)
        rows.append(kernel_row("cupy", expression, kernel.num_regs, kernel.shared_size_bytes, kernel.local_size_bytes,
                               kernel.max_threads_per_block, block, active, max_threads_per_sm, dynamic))
    return rows


def numba_persistent_kernels(cfg: Config, sm_count: int, max_threads_per_sm: int) -> list[dict]:
    """The Numba backend's persistent kernels at ``cfg``'s size (one block per SM at most), both dtypes."""
    from ltexec.backends.numba_cuda import persistent as persistent
    rows = []
    for dtype in DTYPES:
        geometry = persistent.launch_geometry(cfg.hidden, cfg.batch, dtype, sm_count)
        resources = persistent.PersistentLauncher(dtype).launch_resources(geometry)
        for name, (kernel, block, dynamic, grid_blocks) in resources.items():
            rows.append(kernel_row("numba_cuda", f"{name}<{np.dtype(dtype).name}>", kernel.regs_per_thread,
                                   kernel.shared_mem_per_block, kernel.local_mem_per_thread,
                                   kernel.max_threads_per_block, block, grid_blocks // sm_count, max_threads_per_sm,
                                   dynamic))
    return rows


def numba_kernels(cfg: Config, sm_count: int, max_threads_per_sm: int) -> list[dict]:
    """The Numba backend's kernels in both dtypes, each compiled here for the argument types it is launched
    with (this check runs in a process of its own, where nothing has been compiled yet)."""
    from ltexec.backends.numba_cuda import kernels as numba_cuda_kernels
    blocks = numba_launch_blocks(cfg)
    rows = []
    for dtype in DTYPES:
        signatures = numba_cuda_kernels.signatures(dtype)
        for name, dispatcher in numba_cuda_kernels.kernels(dtype).items():
            block = blocks.get(name)
            dispatcher.compile(signatures[name])
            for kernel in dispatcher.overloads.values():
                active = None if block is None else kernel.max_cooperative_grid_blocks(block) // sm_count
                rows.append(kernel_row("numba_cuda", f"{name}<{np.dtype(dtype).name}>", kernel.regs_per_thread,
                                       kernel.shared_mem_per_block, kernel.local_mem_per_thread,
                                       kernel.max_threads_per_block, block, active, max_threads_per_sm))
    return rows


def kernel_resources(backends, cfg: Config = PAPER) -> dict:
    """Registers, shared and local memory, occupancy of every kernel compiled so far (check 5)."""
    import cupy
    device_id = cupy.cuda.runtime.getDevice()
    gpu = gpu_properties(cupy, device_id)
    rows = cupy_kernels(cupy, device_id, cfg, gpu["max_threads_per_sm"]) if "cupy" in backends else []
    if "numba_cuda" in backends:
        rows += numba_kernels(cfg, gpu["sm_count"], gpu["max_threads_per_sm"])
        rows += numba_persistent_kernels(cfg, gpu["sm_count"], gpu["max_threads_per_sm"])
    return finished({"blocks_at": cfg.name, "kernels": rows, "failures": []})


# ------------------------------------------------------------ timing

def time_steps(step, timer, warmup: int = WARMUP_STEPS, steps: int = TIMED_STEPS) -> dict:
    """Median, minimum and maximum milliseconds of ``steps`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    times = [timer(step) for _ in range(steps)]
    return {"ms_median": round(statistics.median(times), 3), "ms_min": round(min(times), 3),
            "ms_max": round(max(times), 3), "warmup": warmup, "steps": steps}


def cupy_timer():
    """Milliseconds a call takes between two CUDA events on CuPy's current stream."""
    import cupy

    def timer(step) -> float:
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        step()
        end.record()
        end.synchronize()
        return cupy.cuda.get_elapsed_time(start, end)
    return timer


def torch_timer(torch):
    """Milliseconds a call takes between two CUDA events on torch's current stream."""
    def timer(step) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    return timer


@contextlib.contextmanager
def tf32(torch, enabled: bool):
    """TF32 allowed (or not) in cuBLAS products and cuDNN (its LSTM) inside the block; yields the flags in force."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def time_ltexec(mode: LaunchMode, cfg: Config, rehearse: bool = False) -> dict:
    """One launch mode's training step, timed with CUDA events (a rehearsal: on its stand-in, the CPU's clock)."""
    runner = LtexecRunner(mode.backend, cfg, make_backend=rehearsal_backend if rehearse else get_backend,
                          **mode.options)
    timing = time_steps(runner.step, cpu_timer(), *Rehearsal.timed_steps) if rehearse else \
        time_steps(runner.step, cupy_timer())
    return {"runner": mode.label, "backend": mode.backend, "mode": mode.name, "status": "ok", "device": runner.device,
            **runner.launch_details(), **timing, "chars_per_s": round(cfg.chars / timing["ms_median"] * 1e3)}


def time_torch_step(torch, cfg: Config, enabled: bool) -> dict:
    """torch's step on the GPU with TF32 allowed or not."""
    with tf32(torch, enabled) as flags:
        runner = TorchRunner(cfg, device_type="cuda")
        timing = time_steps(runner.step, torch_timer(torch))
    return {"mode": "cudnn" if torch.backends.cudnn.enabled else "native", "status": "ok", "device": runner.device,
            **runner.launch_details(), "tf32": flags, **timing,
            "chars_per_s": round(cfg.chars / timing["ms_median"] * 1e3)}


def time_torch(cfg: Config) -> list[dict]:
    """torch's step on the GPU (cuDNN's LSTM), TF32 off, then on; one skipped entry without a CUDA torch."""
    try:
        import torch
    except ImportError as exc:
        return [{"runner": "torch", "status": "skipped", "reason": f"torch is not installed ({exc})"}]
    if not torch.cuda.is_available():
        return [{"runner": "torch", "status": "skipped",
                 "reason": f"torch {torch.__version__} sees no CUDA device (built for CUDA {torch.version.cuda})"}]
    return [{"runner": f"torch/tf32-{setting}", "backend": "torch",
             **guarded(f"timing torch TF32 {setting}", time_torch_step, torch, cfg, enabled)}
            for setting, enabled in (("off", False), ("on", True))]


def time_training_steps(modes, limit_s: float, cfg: Config = PAPER, rehearse: bool = False) -> dict:
    """A training step of every launch mode and of torch at ``cfg``'s size (check 6); each in a process of its
    own with an equal part of ``limit_s``."""
    timeout_s = part_limit(limit_s, len(modes) + 1)
    runs = [{"runner": mode.label, "backend": mode.backend, "mode": mode.name,
             **isolated(f"timing {mode.label}", lambda mode=mode: time_ltexec(mode, cfg, rehearse), timeout_s)}
            for mode in modes]
    torch = isolated("timing torch", lambda: {"runs": time_torch(cfg)}, timeout_s)
    runs += torch.get("runs", [{"runner": "torch", **torch}])
    baseline = next((r["ms_median"] for r in runs if r["runner"] == "torch/tf32-off" and r["status"] == "ok"), None)
    for run in runs:
        if run["status"] == "ok":
            run["vs_torch_tf32_off"] = round(baseline / run["ms_median"], 3) if baseline else None
    return finished({"config": dataclasses.asdict(cfg), "runs": runs,
                     "failures": [failure for run in runs for failure in run.get("failures", [])]})


# ------------------------------------------------------------ the record

def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


def default_json_path(gpu_name: str, day: str, folder: Path) -> Path:
    """``folder/gpu-check-<gpu>-<day>.json``, with -2, -3, ... where that file exists already."""
    stem = f"gpu-check-{slug(gpu_name)}-{day}"
    path, number = folder / f"{stem}.json", 2
    while path.exists():
        path, number = folder / f"{stem}-{number}.json", number + 1
    return path


def json_safe(value):
    """``value`` as plain JSON: NumPy scalars as Python numbers, NaN and infinities as None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def write_record(record: dict, path: Path) -> None:
    """The record as plain JSON at ``path``, written whole or not at all (it is rewritten after every check)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(json_safe(record), indent=1, allow_nan=False) + "\n"
    atomic_write(path, lambda out: out.write(text.encode("utf-8")))


def progress(text: str, started: float) -> None:
    print(f"gpu_check [{time.perf_counter() - started:5.0f} s]: {text}", file=sys.stderr, flush=True)


def run_checks(modes, reasons: dict, quick: bool, skip_tests: bool, command: str, budget_s: float,
               cfg: Config = PAPER, save=lambda record: None, rehearsal=None) -> dict:
    """Every check in order, each guarded and given its share of ``budget_s`` (:func:`stage_limit`): the whole
    record, its failures gathered under ``failures``.

    ``save(record)`` is called before each check (``running`` names it) and
    after it, so a hang, a crash or a kill loses no check already done and
    says which one it stopped in; ``complete`` is true only at the end.
    ``rehearsal`` (a :class:`Rehearsal`) replaces the device: see ``--rehearse``.
    """
    started = time.perf_counter()
    backends = gpu_backends(modes)
    make_backend = build_backend if rehearsal is None else rehearsal.build_backend
    record = {"check": "gpu_check", "command": command, "quick": quick, "skip_tests": skip_tests,
              "budget_s": budget_s, "rehearsal": rehearsal is not None,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "backends": reasons, "launch_modes": [mode.label for mode in modes], "machine": machine(),
              "complete": False, "limits_s": {}, "failures": []}
    environment_probe = probe_environment if rehearsal is None else rehearsal.environment
    stages = {
        "environment": lambda limit: guarded("environment", environment_probe, limit),
        "tests": lambda limit: guarded("GPU tests", run_gpu_tests, limit),
        "sanitizer": lambda limit: guarded("sanitizer", check_sanitizer, modes, limit) if rehearsal is None else
        guarded("sanitizer", check_sanitizer, modes, limit, rehearsal.sanitizer, True, rehearsal.tools),
        "parity": lambda limit: guarded("parity", check_parity, modes, limit, cfg, make_backend),
        "kernels": lambda limit: isolated("kernels", lambda: (kernel_resources if rehearsal is None
                                                              else rehearsal.kernel_resources)(backends, cfg), limit),
        "timing": lambda limit: guarded("timing", time_training_steps, modes, limit, cfg, rehearsal is not None),
    }
    left_out = {"tests": "--skip-tests"} if skip_tests else {}
    if quick:
        left_out.update({"sanitizer": "--quick", "timing": "--quick"})
    to_run = [name for name in CHECKS if name not in left_out]
    for name in CHECKS:
        progress(STAGE_LABELS[name], started)
        record["running"] = name
        if name != "environment":                      # the file is named after the GPU the environment finds
            save(record)
        if name in left_out:
            record[name] = skipped(left_out[name])
        else:
            limit = stage_limit(name, budget_s - (time.perf_counter() - started), to_run)
            to_run.remove(name)
            record["limits_s"][name] = limit
            record[name] = stages[name](limit)
        record["failures"] = [failure for done in CHECKS if done in record for failure in record[done]["failures"]]
        record["seconds"] = round(time.perf_counter() - started, 1)
        save(record)
    del record["running"]
    record["complete"] = True
    save(record)
    return record


STAGE_LABELS = {"environment": "environment", "tests": "GPU tests (pytest -m gpu)", "sanitizer": "compute-sanitizer",
                "parity": "parity", "kernels": "kernel resources", "timing": "timing"}


# ------------------------------------------------------------ summary

def environment_lines(env: dict) -> list[str]:
    gpu, libraries = env["gpu"], env["libraries"]
    versions = ", ".join(f"{name} {about['version'] or 'missing'}" for name, about in libraries.items())
    return [f"GPU: {gpu['name']} (compute capability {gpu['compute_capability']}, {gpu['sm_count']} SMs, "
            f"{gpu['memory_gib']} GiB); driver {env['driver_version']}, CUDA driver API {env['cuda_driver_api']}, "
            f"runtime {env['cuda_runtime']}", f"libraries: {versions}"]


def tests_lines(tests: dict) -> list[str]:
    return [f"tests ({tests['command']}): {tests['status']}: {tests['passed']} passed, {tests['failed']} failed, "
            f"{tests['errors']} errors, {tests['skipped']} skipped in {tests['seconds']} s"]


def sanitizer_lines(sanitizer: dict) -> list[str]:
    return [f"sanitizer {run['tool']:<9} {run['workload']}: {run['verdict']}"
            + (f" ({run['errors']} errors)" if run["errors"] else "") + f" in {run['seconds']} s"
            for run in sanitizer["runs"]]


def parity_lines(parity: dict) -> list[str]:
    lines = []
    for run in parity["runs"]:
        label = f"parity {run['backend']}/{run['mode']} {run['dtype']}"
        if run["status"] == "error":
            lines.append(f"{label}: error: {run['error']}")
            continue
        worst = max(run["windows"], key=lambda w: w["max_error"])
        loss = max(w["loss_error"] for w in run["windows"])
        lines.append(f"{label}: {'FAIL' if run['failures'] else 'pass'}: worst {worst['worst']} "
                     f"{worst['max_error']:.2g}, loss {loss:.2g}, "
                     f"bitwise {'equal' if run['bitwise_equal'] else 'DIFFERENT'}, "
                     f"launch mode {run['launch_mode'] or '-'}")
    return lines


def kernel_lines(kernels: dict) -> list[str]:
    lines = []
    for row in kernels["kernels"]:
        where = "" if row["block"] is None else f", occupancy {row['occupancy']:.0%} at {row['block']} threads"
        dynamic = f" + {row['dynamic_shared_bytes']} B dynamic" if row.get("dynamic_shared_bytes") else ""
        lines.append(f"kernel {row['backend']} {row['kernel']}: {row['registers']} registers, "
                     f"{row['shared_bytes']} B shared{dynamic}, {row['local_bytes']} B local{where}")
    return lines


def timing_lines(timing: dict) -> list[str]:
    lines = []
    for run in timing["runs"]:
        if run["status"] != "ok":
            lines.append(f"step {run['runner']}: {run['status']}: {run.get('reason') or run.get('error')}")
            continue
        ratio = "" if run.get("vs_torch_tf32_off") is None else f", {run['vs_torch_tf32_off']:.2f}x torch TF32 off"
        lines.append(f"step {run['runner']}: {run['ms_median']:.2f} ms (min {run['ms_min']:.2f}, max "
                     f"{run['ms_max']:.2f}), {run['chars_per_s']:,} chars/s{ratio}"
                     + (f", launch mode {run['launch_mode']}" if run.get("launch_mode") else ""))
    return lines


CHECK_LINES = {"environment": environment_lines, "tests": tests_lines, "sanitizer": sanitizer_lines,
               "parity": parity_lines, "kernels": kernel_lines, "timing": timing_lines}


def summary_lines(record: dict) -> list[str]:
    """The record in short: one line per GPU, test run, sanitizer run, parity run, kernel, timed step; the verdict."""
    lines = [f"{name}: unavailable: {reason}" for name, reason in record["backends"].items() if reason]
    for name in CHECKS:
        result = record[name]
        if result["status"] == "skipped":
            lines.append(f"{name}: skipped ({result['reason']})")
        elif result["status"] == "error":
            lines.append(f"{name}: error: {result['error']}")
        else:
            lines += CHECK_LINES[name](result)
    failures = record["failures"]
    lines += [f"FAILED ({len(failures)}):", *(f"  {failure}" for failure in failures)] if failures else \
        [f"all checks passed in {record['seconds']:.0f} s"]
    return lines


def no_gpu_lines(reasons: dict) -> list[str]:
    return [f"gpu_check: {name} unavailable: {reason}" for name, reason in reasons.items()] + \
        ["gpu_check: no GPU backend can run here; nothing checked, nothing written"]


# ------------------------------------------------------------ main

# ------------------------------------------------------------ rehearsal

REHEARSAL_SHAPE = Config("rehearsal", batch=2, hidden=3, layers=1, seq_len=3)
"""What the rehearsal's parity and timing run at: the emulation runs a host thread per CUDA thread, the
simulator a Python thread per CUDA thread."""
SIMULATOR_ENV = "NUMBA_ENABLE_CUDASIM"
STAND_IN_SANITIZER = """#!/bin/sh
# compute-sanitizer's stand-in in a rehearsal: skips its options (each has a value), runs the program.
while [ "${1#--}" != "$1" ]; do shift 2; done
"$@"
status=$?
echo "========= ERROR SUMMARY: 0 errors"
exit $status
"""


def rehearsal_backend(name: str, dtype, **options):
    """A GPU backend on its stand-in: CuPy's kernels on the emulation, numba-cuda on its simulator."""
    if name == "cupy":
        from ltexec.backends.cupy.backend import CupyBackend
        return CupyBackend(dtype, device=emulated_device(), **options)
    if name == "numba_cuda":
        from ltexec.backends.numba_cuda.backend import NumbaCudaBackend
        return NumbaCudaBackend(dtype, simulator=True, **options)
    return get_backend(name, dtype, **options)


def rehearsal_reasons() -> dict:
    """Each backend of the rehearsal mapped to None if it runs on its stand-in here, else why not."""
    reasons = {}
    for name in gpu_backends(Rehearsal.modes):
        try:
            rehearsal_backend(name, np.float32)
            reasons[name] = None
        except Exception as exc:                     # no g++, no numba-cuda, ...
            reasons[name] = f"{type(exc).__name__}: {exc}"
    return reasons


class Rehearsal:
    """The whole check without a GPU (``--rehearse``), so that the first GPU run is not this script's first run.

    The CuPy backend's kernels run on the C++ emulation of the test suite, the
    Numba backend on numba's CUDA simulator, compute-sanitizer is a stand-in
    that runs the workload and finds nothing, timing uses the CPU's clock.
    Two faults are injected to show they are survived: the first launch
    mode's float32 parity run hangs (killed at its time limit, the next run
    starts fresh) and the kernel check's process dies (recorded as a crash).
    The tests stage runs the real ``pytest -m gpu``: on a machine without a
    GPU it must fail, since nothing was tested on a device.
    :meth:`unmet` checks the record for exactly these outcomes.
    """

    modes = tuple(mode for mode in LAUNCH_MODES if mode.backend == "cupy" or mode.name == "persistent")
    """Every CuPy mode on the emulation, the Numba backend's persistent mode on the simulator (a Python thread per
    CUDA thread: its other modes would take minutes)."""
    tools = ("memcheck",)
    """The stand-in sanitizer finds nothing whatever the tool: one tool a mode shows the stage's plumbing."""
    timed_steps = (1, 3)
    """Warm-up and timed steps (the CPU's clock times nothing of interest)."""

    def __init__(self, folder: Path):
        self.sanitizer = str(folder / "compute-sanitizer")
        Path(self.sanitizer).write_text(STAND_IN_SANITIZER, encoding="utf-8")
        Path(self.sanitizer).chmod(0o755)
        self.saved: list[tuple[str | None, bool]] = []   # after each save: the stage running, the file valid JSON

    def hangs(self, mode: LaunchMode, dtype) -> bool:
        return mode == self.modes[0] and np.dtype(dtype) == np.float32

    def build_backend(self, mode: LaunchMode, dtype):
        if self.hangs(mode, dtype):
            time.sleep(10 * DEFAULT_BUDGET_S)        # the injected hang: only the time limit ends it
        return rehearsal_backend(mode.backend, dtype, **mode.options)

    @staticmethod
    def environment(limit_s: float) -> dict:
        return finished({"driver_version": None, "cuda_driver_api": None, "cuda_runtime": None,
                         "gpu": {"name": "none (rehearsal: emulated kernels, CUDA simulator)",
                                 "compute_capability": "-", "sm_count": 0, "memory_gib": 0},
                         "libraries": library_versions(), "failures": []})

    @staticmethod
    def kernel_resources(backends, cfg: Config) -> dict:
        os._exit(3)                                  # the injected crash, as a segfault or an out-of-memory kill

    def save(self, record: dict, path: Path) -> None:
        write_record(record, path)
        try:
            json.loads(path.read_text(encoding="utf-8"))
            valid = True
        except ValueError:
            valid = False
        self.saved.append((record.get("running"), valid))

    def unmet(self, record: dict) -> list[str]:
        """What in ``record`` differs from the rehearsal's expected outcomes (nothing, when all went as planned)."""
        problems = []
        if not all(valid for _, valid in self.saved):
            problems.append("the record was not valid JSON after every save")
        saved_stages = {running for running, _ in self.saved}
        if not set(CHECKS) - {"environment"} <= saved_stages:
            problems.append(f"the record was not saved before every stage (saved at {sorted(map(str, saved_stages))})")
        tests = record["tests"]
        if tests["status"] == "skipped" or not any("none passed" in f or "not usable" in f for f in tests["failures"]):
            problems.append(f"the tests stage did not fail for testing nothing on a device: {tests['failures']}")
        parity_runs = record["parity"].get("runs", [])
        hung = [run for run in parity_runs if self.hangs(self.mode_of(run), run["dtype"])]
        if not hung or "still running after" not in hung[0].get("error", ""):
            problems.append(f"the hanging parity run was not killed and recorded: {hung}")
        others = [run for run in parity_runs if run not in hung]
        if len(others) != 2 * len(self.modes) - 1 or any(run["status"] != "pass" for run in others):
            problems.append("the other parity runs did not all pass: "
                            + "; ".join(f"{run['backend']}/{run['mode']} {run['dtype']}: {run['status']} "
                                        f"{run.get('failures')}" for run in others if run["status"] != "pass"))
        if "crashed" not in record["kernels"].get("error", ""):
            problems.append(f"the crashed kernel check was not recorded as a crash: {record['kernels']}")
        for name in ("sanitizer", "timing"):
            if record[name]["status"] != "pass":
                problems.append(f"{name} did not pass: {record[name]['failures']}")
        if not record["complete"]:
            problems.append("the record is not complete")
        return problems

    def mode_of(self, run: dict) -> LaunchMode:
        return next(mode for mode in self.modes if (mode.backend, mode.name) == (run["backend"], run["mode"]))


def cpu_timer():
    """Milliseconds a call takes on the CPU's clock (the rehearsal's stand-in for CUDA events)."""
    def timer(step) -> float:
        started = time.perf_counter()
        step()
        return (time.perf_counter() - started) * 1e3
    return timer


# ------------------------------------------------------------ main

def budget(text: str) -> float:
    """``--budget``'s value: seconds, at least 60."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"budget must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 60:
        raise argparse.ArgumentTypeError(f"budget must be at least 60 seconds, got {text!r}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the sanitizer and the timing")
    parser.add_argument("--skip-tests", action="store_true", help="skip pytest -m gpu")
    parser.add_argument("--budget", type=budget, default=DEFAULT_BUDGET_S, metavar="SECONDS",
                        help=f"the whole check's time (default {DEFAULT_BUDGET_S:g}); each stage and launch mode gets "
                             f"its share, and is killed and recorded past it")
    parser.add_argument("--rehearse", action="store_true",
                        help="run every stage without a GPU (emulated kernels, the CUDA simulator, a stand-in "
                             "sanitizer) with a hang and a crash injected; exit 0 when the record shows exactly "
                             "the expected outcomes")
    parser.add_argument("--json", metavar="FILE",
                        help="write the record to FILE (default: benchmarks/results/gpu-check-<gpu>-<date>.json; "
                             "a rehearsal: a temporary file)")
    parser.add_argument("--sanitizer-workload", metavar="BACKEND[:KEY=VALUE,...]", help=argparse.SUPPRESS)
    parser.add_argument("--probe", choices=tuple(PROBES), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.rehearse and os.environ.get(SIMULATOR_ENV) != "1":
        # numba chooses the simulator when numba.cuda is first imported: run again with it chosen
        return subprocess.call([sys.executable, str(SCRIPT), *argv], env={**os.environ, SIMULATOR_ENV: "1"})
    if args.sanitizer_workload:
        return sanitizer_workload(args.sanitizer_workload, rehearsal_backend if args.rehearse else get_backend)
    if args.probe:
        probe = rehearsal_reasons if args.rehearse and args.probe == "availability" else PROBES[args.probe]
        print(json.dumps(json_safe(probe())))
        return 0
    return run_rehearsal(args, argv) if args.rehearse else run_on_gpu(args, argv)


def run_on_gpu(args: argparse.Namespace, argv: list[str]) -> int:
    started = time.perf_counter()
    reasons = backend_reasons(PROBE_SHARE * args.budget)
    modes = [mode for mode in LAUNCH_MODES if reasons[mode.backend] is None]
    if not modes:
        for line in no_gpu_lines(reasons):
            print(line, file=sys.stderr)
        return 2
    paths = []                                       # chosen at the first save, once the GPU's name is known

    def save(record: dict) -> None:
        if not paths:
            gpu = record.get("environment", {}).get("gpu", {}).get("name", "unknown GPU")
            paths.append(Path(args.json) if args.json else default_json_path(gpu, record["date"][:10], RESULTS))
        write_record(record, paths[0])

    record = run_checks(modes, reasons, args.quick, args.skip_tests, shown_argv(argv),
                        args.budget - (time.perf_counter() - started), PAPER, save)
    print("\n".join(summary_lines(record)))
    print(f"wrote {paths[0]}")
    return 1 if record["failures"] else 0


def run_rehearsal(args: argparse.Namespace, argv: list[str]) -> int:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-rehearsal-") as folder:
        rehearsal = Rehearsal(Path(folder))
        path = Path(args.json) if args.json else Path(folder) / "record.json"
        reasons = probe_in_subprocess("availability", PROBE_SHARE * args.budget, rehearse=True)
        missing = {name: reason for name, reason in reasons.items() if reason}
        if missing:
            for name, reason in missing.items():
                print(f"gpu_check rehearsal: {name} cannot run on its stand-in: {reason}", file=sys.stderr)
            return 2
        record = run_checks(list(Rehearsal.modes), reasons, args.quick, args.skip_tests, shown_argv(argv),
                            args.budget - (time.perf_counter() - started), REHEARSAL_SHAPE,
                            lambda record: rehearsal.save(record, path), rehearsal)
        print("\n".join(summary_lines(record)))
        unmet = rehearsal.unmet(record)
    for problem in unmet:
        print(f"rehearsal: UNMET: {problem}")
    if not unmet:
        print(f"rehearsal: every stage ran and was recorded as expected in {record['seconds']:.0f} s of a "
              f"{args.budget:g} s budget (a hang killed, a crash recorded, no device test counted as a pass)")
    return 1 if unmet else 0


def shown_argv(argv: list[str]) -> str:
    return shlex.join(["python", str(SCRIPT.relative_to(REPOSITORY)), *argv])


if __name__ == "__main__":
    sys.exit(main())
