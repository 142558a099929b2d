"""One CUDA C kernel of kernels/ against its NumPy reference, then timed across block sizes on a GPU.

    python benchmarks/kernel_check.py KERNEL [--block 32,64,128,...] [--dtype float32|float64|both]
        [--size paper|small] [--device auto|gpu|emulated] [--repeats N] [--json FILE]

KERNEL is one the CuPy backend compiles: lstm_cell_forward, lstm_cell_backward, lstm_persistent_forward,
lstm_persistent_backward or softmax_xent. For every dtype and block size the kernel gets fresh random inputs
(``kernel_cases.py``: every argument an allocation of its own between guard cells, outputs poisoned with
NaN), runs once, and every output is compared with the float64 NumPy reference on the same rounded inputs
(one step within 1e-5 in float32 and 1e-12 in float64; a persistent kernel's whole window within 1e-4 and
1e-10); the same launch run again must give the same bits.

Device: on a GPU the CuPy backend's device layer (``CudaDevice``), and each block size is then timed with
CUDA events: :data:`WARMUP` launches, then ``--repeats`` timed ones, each on its arguments restored first
(the restore is not timed); median, minimum and maximum microseconds. Without one (``--device emulated``,
or ``auto`` where the CuPy backend cannot run) the test suite's C++ emulation of the kernels
(``tests/cuda_emulation``, built with g++) runs them: correctness only.

Sizes: ``paper`` is the paper's layer (bench_lstm.py's paper configuration: batch 100, 400 units, window 50;
softmax over its 5000 positions and the task vocabulary), ``small`` a ragged one the emulation runs in
seconds (batch 5, 37 units, window 7; 37 rows of 51). Default: paper on a GPU, small on the emulation.
Block sizes (default): the cell kernels 64 to 1024, softmax 32 to 256 (it needs a power of two, at most
SOFTMAX_MAX_BLOCK); the persistent kernels the block ``plan_persistent`` picks on the device and its
neighbours 32 and 64 threads either side, those that keep the whole grid resident (on the emulation, one
host thread per CUDA thread: also at most :data:`EMULATION_MAX_THREADS` in the grid). A persistent launch
always has the plan's units per block, so its grid and shared memory stay the plan's.

Prints one line per (dtype, block): block, grid, dynamic shared bytes, resident blocks per SM (the device
layer's occupancy query), the largest relative error, and on a GPU the median (minimum, maximum)
microseconds; then every failure, naming kernel, dtype, block and output. Exit status 0 when every check
passed, 1 when one failed, 2 for a bad argument or where the kernel cannot run here (no g++ for the
emulation, no usable GPU for ``--device gpu``, a persistent plan that does not fit the device).
``--json FILE`` writes the record (written whole or not at all).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np

from bench_lstm import CONFIGS
from kernel_cases import BUILDERS, KernelFault, Shape
from machine import machine
from ltexec.atomic import atomic_write
from ltexec.backends.cupy import backend as cupy_backend
from ltexec.backends.persistent_plan import PersistentUnfit, check_cooperative_grid

TESTS = Path(__file__).resolve().parents[1] / "tests"
KERNELS = tuple(kernel for kernels in cupy_backend.KERNELS.values() for kernel in kernels)
PERSISTENT = frozenset(cupy_backend.PERSISTENT_KERNELS.values())
DTYPES = {"float32": (np.float32,), "float64": (np.float64,), "both": (np.float32, np.float64)}
PAPER = CONFIGS["paper"]
SIZES = {
    "paper": Shape(T=PAPER.seq_len, B=PAPER.batch, H=PAPER.hidden, N=PAPER.seq_len * PAPER.batch, V=PAPER.vocab),
    "small": Shape(T=7, B=5, H=37, N=37, V=51),
}
"""The paper's layer and loss, and a small ragged size: no extent a multiple of a block."""
CELL_BLOCKS = (64, 128, 256, 512, 1024)
SOFTMAX_BLOCKS = (32, 64, 128, 256)
PERSISTENT_NEIGHBOURS = (-64, -32, 32, 64)
"""Default persistent blocks besides the planned one: these many threads more or fewer (multiples of 32)."""
EMULATION_MAX_THREADS = 512
"""Most threads of a default persistent grid on the emulation, which runs every CUDA thread as a host thread."""
WARMUP = 5
DEFAULT_REPEATS = 50


class CannotRun(Exception):
    """The kernel cannot run here as asked (exit status 2); the message says why."""


# ------------------------------------------------------------------ arguments

def block_list(text: str) -> tuple[int, ...]:
    """``--block``: comma-separated block sizes in 1..MAX_BLOCK, in order, each once."""
    blocks = []
    for item in text.split(","):
        try:
            block = int(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"block size {item.strip()!r} is not a whole number") from None
        if not 1 <= block <= cupy_backend.MAX_BLOCK:
            raise argparse.ArgumentTypeError(f"block size {block} is outside 1..{cupy_backend.MAX_BLOCK}")
        blocks.append(block)
    return tuple(dict.fromkeys(blocks))


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def softmax_block_problem(block: int) -> str | None:
    """Why ``softmax_xent`` cannot run with blocks of ``block`` threads (a power of two, a warp at least)."""
    if block < 32 or block > cupy_backend.SOFTMAX_MAX_BLOCK or block & (block - 1):
        return (f"softmax_xent needs a power-of-two block from 32 to {cupy_backend.SOFTMAX_MAX_BLOCK} "
                f"(SOFTMAX_MAX_BLOCK), got {block}")
    return None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kernel", choices=KERNELS, metavar="KERNEL", help=f"one of: {', '.join(KERNELS)}")
    parser.add_argument("--block", type=block_list, metavar="B1,B2,...",
                        help="block sizes (default: depends on the kernel, see the module's docstring)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="both")
    parser.add_argument("--size", choices=tuple(SIZES), help="default: paper on a GPU, small on the emulation")
    parser.add_argument("--device", choices=("auto", "gpu", "emulated"), default="auto")
    parser.add_argument("--repeats", type=positive, default=DEFAULT_REPEATS, help="timed launches per block (GPU)")
    parser.add_argument("--json", metavar="FILE", help="write the record here")
    args = parser.parse_args(argv)
    if args.kernel == "softmax_xent":
        for block in args.block or ():
            problem = softmax_block_problem(block)
            if problem:
                parser.error(f"argument --block: {problem}")
    return args


# ------------------------------------------------------------------ device

def emulated_device():
    """The test suite's C++ emulation of the CuPy backend's device layer, built now (CannotRun without g++)."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    import cuda_emulation
    reason = cuda_emulation.gxx_missing_reason()
    if reason is not None:
        raise CannotRun(f"the emulation cannot run: {reason}")
    try:
        cuda_emulation.kernels()
    except RuntimeError as exc:
        raise CannotRun(f"the emulation does not build: {exc}") from None
    return cuda_emulation.EmulatedDevice()


def device_layer(choice: str, injected=None) -> tuple[object, str]:
    """(device layer, "gpu" or "emulated") for ``--device``; an ``injected`` layer is a GPU one only if it is a
    CudaDevice."""
    if injected is not None:
        return injected, "gpu" if isinstance(injected, cupy_backend.CudaDevice) else "emulated"
    if choice != "emulated":
        from ltexec.backends import available_backends
        reason = available_backends()["cupy"]
        if reason is None:
            return cupy_backend.CudaDevice(), "gpu"
        if choice == "gpu":
            raise CannotRun(f"no usable GPU: {reason}")
        print(f"kernel_check: no usable GPU ({reason}); running on the emulation", file=sys.stderr)
    return emulated_device(), "emulated"


# ------------------------------------------------------------------ plans

def persistent_plan(device, shape: Shape, dtype):
    """The persistent launch the CuPy backend would make for a window of ``shape`` on ``device``."""
    def resident(direction: str, threads: int, shared_bytes: int) -> int:
        expression = cupy_backend.name_expression(cupy_backend.PERSISTENT_KERNELS[direction], dtype)
        return device.resident_blocks(expression, threads, shared_bytes)

    try:
        return cupy_backend.plan_persistent(shape.T, shape.B, shape.H, np.dtype(dtype).itemsize,
                                            device.persistent_limits(), resident)
    except PersistentUnfit as unfit:
        raise CannotRun(f"the persistent kernels do not fit at T={shape.T}, B={shape.B}, H={shape.H} in "
                        f"{np.dtype(dtype).name}: {unfit}") from None


def fits(device, expression: str, grid: int, block: int, shared_bytes: int) -> bool:
    """Whether all ``grid`` blocks can be resident at once (what a cooperative launch needs)."""
    return device.resident_blocks(expression, block, shared_bytes) * device.persistent_limits().sms >= grid


def default_blocks(kernel: str, plan, device, dtype, emulated: bool) -> tuple[int, ...]:
    """The block sizes checked when ``--block`` is not given (see the module's docstring)."""
    if kernel == "softmax_xent":
        return SOFTMAX_BLOCKS
    if plan is None:
        return CELL_BLOCKS
    expression = cupy_backend.name_expression(kernel, dtype)
    shared = plan.shared_bytes("forward" if kernel.endswith("forward") else "backward")
    neighbours = [plan.threads + step for step in PERSISTENT_NEIGHBOURS]
    return tuple(sorted([plan.threads] + [
        block for block in neighbours
        if 32 <= block <= cupy_backend.MAX_BLOCK and fits(device, expression, plan.grid, block, shared)
        and not (emulated and plan.grid * block > EMULATION_MAX_THREADS)]))


# ------------------------------------------------------------------ one row

def time_launches(case, device, repeats: int, warmup: int = WARMUP) -> dict:
    """Microseconds of one launch between two CUDA events, its arguments restored before it (not timed)."""
    cuda = device.xp.cuda
    start, end = cuda.Event(), cuda.Event()
    times = []
    for launch in range(warmup + repeats):
        case.reset()
        start.record()
        case.start(device)
        end.record()
        end.synchronize()
        if launch >= warmup:
            times.append(cuda.get_elapsed_time(start, end) * 1e3)
    return {"median_us": round(statistics.median(times), 2), "min_us": round(min(times), 2),
            "max_us": round(max(times), 2), "warmup": warmup, "repeats": repeats}


def differing_outputs(first: dict, second: dict) -> list[str]:
    """The outputs whose bits differ between two runs of the same launch."""
    return [name for name in first if first[name].tobytes() != second[name].tobytes()]


def check_row(kernel: str, device, timed: bool, shape: Shape, dtype, block: int, seed: int, units: int | None,
              repeats: int) -> dict:
    """One (dtype, block): a fresh case, checked, run again for the bits, timed on a GPU. Whatever goes wrong
    (a fault, an error above the tolerance, a launch that fails or does not fit) is a failure of the row."""
    row = {"dtype": np.dtype(dtype).name, "block": block, "grid": None, "shared_bytes": None, "seed": seed,
           "tolerance": None, "resident_per_sm": None, "errors": None, "max_error": None, "bitwise_rerun": None,
           "timing": None, "failures": []}
    try:
        case = BUILDERS[kernel](device, shape, dtype, block, seed, **({} if units is None else {"units": units}))
        shared = case.shared_bytes or 0
        row.update(grid=case.grid, shared_bytes=shared, tolerance=case.tolerance,
                   resident_per_sm=device.resident_blocks(case.name_expression, block, shared))
        if case.shared_bytes is not None:   # a cooperative launch: the whole grid resident, or not run
            check_cooperative_grid(case.name_expression, case.grid, block, shared,
                                   row["resident_per_sm"] * device.persistent_limits().sms)
        first = case.run(device)
        errors = case.errors(first)
        row["errors"] = {name: error if math.isfinite(error) else None for name, error in errors.items()}
        row["max_error"] = max(errors.values()) if math.isfinite(max(errors.values())) else None
        row["failures"] += case.failures(errors)
        differing = differing_outputs(first, case.run(device))
        row["bitwise_rerun"] = not differing
        row["failures"] += [f"{name}: a second run of the same launch gives other bits" for name in differing]
        if timed:
            row["timing"] = time_launches(case, device, repeats)
    except PersistentUnfit as unfit:
        row["failures"].append(f"not run: {unfit}")
    except KernelFault as fault:
        row["failures"].append(str(fault))
    except Exception as exc:   # a launch error (CUDA, the emulation), reported against this row
        row["failures"].append(f"launch failed: {type(exc).__name__}: {exc}")
    return row


# ------------------------------------------------------------------ output

def size_line(name: str, shape: Shape, kernel: str) -> str:
    """The extents ``kernel`` sees at size ``name``."""
    if kernel == "softmax_xent":
        return f"size {name}: N={shape.N} rows of V={shape.V}"
    window = f", T={shape.T}" if kernel in PERSISTENT else ""
    return f"size {name}: B={shape.B}, H={shape.H}{window}"


def table_lines(rows: list[dict], timed: bool) -> list[str]:
    """The table: one line per (dtype, block), the timing columns on a GPU only."""
    def error(row):
        return None if row["errors"] is None else "inf" if row["max_error"] is None else f"{row['max_error']:.2e}"

    def field(key):
        return lambda row: row[key]

    def timing(key):
        return lambda row: (row["timing"] or {}).get(key)

    columns = [("dtype", 7, field("dtype")), ("block", 5, field("block")), ("grid", 6, field("grid")),
               ("shared B", 8, field("shared_bytes")), ("resident/SM", 11, field("resident_per_sm")),
               ("max rel error", 13, error)]
    if timed:
        columns += [("median us", 9, timing("median_us")), ("min us", 9, timing("min_us")),
                    ("max us", 9, timing("max_us"))]
    columns.append(("check", 5, lambda row: "FAIL" if row["failures"] else "pass"))
    lines = ["  ".join(f"{title:>{width}}" for title, width, _ in columns)]
    lines += ["  ".join(f"{'-' if value(row) is None else value(row):>{width}}" for _, width, value in columns)
              for row in rows]
    return lines


def timing_line(emulated: bool, repeats: int) -> str:
    return "timing: none (emulation)" if emulated else \
        f"timing: CUDA events, {WARMUP} warm-up and {repeats} timed launches per block"


def run_record(args, device_name: str, kind: str, size: str, plans: dict, rows: list[dict],
               failures: list[str]) -> dict:
    """What ``--json`` writes: the kernel, the device, the run's settings, every row (an error that is not
    finite as null), and the machine (``machine.py``)."""
    timed = kind == "gpu"
    return {"check": "kernel_check", "kernel": args.kernel, "device": {"kind": kind, "name": device_name},
            "size": {"name": size, **dataclasses.asdict(SIZES[size])},
            "dtypes": [np.dtype(dtype).name for dtype in plans],
            "blocks": list(args.block) if args.block else "default",
            "timing": "CUDA events" if timed else "none (emulation)",
            "warmup": WARMUP if timed else None, "repeats": args.repeats if timed else None,
            "persistent_plans": {np.dtype(dtype).name: dataclasses.asdict(plan)
                                 for dtype, plan in plans.items() if plan is not None},
            "rows": rows, "failures": failures, "passed": not failures,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine()}


def write_json(path, record: dict) -> None:
    """The record as JSON at ``path``, written whole or not at all."""
    text = json.dumps(record, indent=1, allow_nan=False) + "\n"
    atomic_write(path, lambda out: out.write(text.encode("utf-8")))


# ------------------------------------------------------------------ main

def main(argv=None, device=None) -> int:
    """Run the check; ``device``: a device layer to run on instead of the one ``--device`` picks."""
    args = parse_args(argv)
    try:
        device, kind = device_layer(args.device, device)
        emulated = kind == "emulated"
        size = args.size or ("small" if emulated else "paper")
        shape = SIZES[size]
        plans = {dtype: persistent_plan(device, shape, dtype) if args.kernel in PERSISTENT else None
                 for dtype in DTYPES[args.dtype]}
    except CannotRun as exc:
        print(f"kernel_check: {args.kernel}: {exc}", file=sys.stderr)
        return 2
    print(f"{args.kernel} on {device.name()} ({kind}); {size_line(size, shape, args.kernel)}")
    for dtype, plan in plans.items():
        if plan is not None:
            print(f"persistent plan ({np.dtype(dtype).name}): {plan.units_per_block} units per block, "
                  f"grid {plan.grid}, block {plan.threads}")
    rows = []
    for dtype, plan in plans.items():
        for block in args.block or default_blocks(args.kernel, plan, device, dtype, emulated):
            rows.append(check_row(args.kernel, device, not emulated, shape, dtype, block, seed=len(rows),
                                  units=None if plan is None else plan.units_per_block, repeats=args.repeats))
    print(timing_line(emulated, args.repeats))
    print("\n".join(table_lines(rows, timed=not emulated)))
    failures = [f"{args.kernel} {row['dtype']} block {row['block']}: {failure}"
                for row in rows for failure in row["failures"]]
    for failure in failures:
        print(f"FAIL {failure}")
    print(f"{args.kernel}: {'FAILED' if failures else 'passed'} ({len(rows)} dtype/block pairs, "
          f"{len(failures)} failures)")
    if args.json:
        write_json(args.json, run_record(args, device.name(), kind, size, plans, rows, failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
