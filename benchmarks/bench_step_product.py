"""Time the register-blocked step product against NumPy's BLAS on the ``cpu`` backend's per-step shapes.

Per time step, each lane of the ``cpu`` backend multiplies its ~50 rows by the
recurrent weights: forward ``h_{t-1} Wh`` (M x H by H x 4H), backward
``da_t Wh^T`` (M x 4H by 4H x H). Those are small products that the BLAS
handles poorly (it repacks the weights on every call and blocks the rows by
16), so this script measures, in float32 on one thread, whether
``ltexec.backends.cpu.step_kernels.step_product`` on weights packed once per
window (``pack_columns``) beats ``np.matmul(a, W, out=out)``, for the register
blocks 5x64, 6x64 and 5x80, at the small (H=128) and paper (H=400) sizes with
M=50 rows; and what that packing costs per window (``pack_columns(Wh, nr)``
and ``pack_columns(Wh.T, nr)``) next to the ``np.copyto(WhT, Wh.T)`` the
backward pass makes with the BLAS per-step products (``step_products="blas"``).
Every variant is first checked against np.matmul.
After a warm-up, the variants of one shape take turns in each sample; each
figure is the median over samples of the mean time per call, in
microseconds, and GFLOP/s count 2*M*K*N. Each record names the machine
(``machine.py``: CPU, BLAS and the kernel it picked, whether
OPENBLAS_CORETYPE was set). Run it pinned to one core:

    taskset -c 1 python benchmarks/bench_step_product.py [--seconds S] [--json FILE]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import threadpoolctl

from machine import machine, write_records
from ltexec.backends.cpu.step_kernels import host_has_avx512, pack_columns, step_product

BLOCKS = [(5, 64), (6, 64), (5, 80)]
"""(MR, NR) register blocks: MR*NR/16 float32 accumulators = 20, 24 and 25 of the 32 AVX-512 registers."""

SIZES = {"small": 128, "paper": 400}
"""Hidden sizes of the small and paper configurations."""

ROWS = 50
"""Rows per lane and step (batch 100 over the backend's lanes)."""

DTYPE = np.float32
TOLERANCE = 1e-4


def time_interleaved(fns: dict, seconds: float, calls_per_sample: int) -> dict:
    """Median over samples of the mean µs per call; the variants take turns (order alternating) in each sample."""
    names = list(fns)
    for fn in fns.values():                                # warm-up
        for _ in range(max(3, calls_per_sample)):
            fn()
    t0 = time.perf_counter()
    for fn in fns.values():
        for _ in range(calls_per_sample):
            fn()
    per_round = time.perf_counter() - t0
    samples = max(15, int(seconds * len(names) / max(per_round, 1e-9)))
    times = {name: [] for name in names}
    clock = time.perf_counter_ns
    for s in range(samples):
        for name in (names if s % 2 == 0 else names[::-1]):
            fn = fns[name]
            t = clock()
            for _ in range(calls_per_sample):
                fn()
            times[name].append((clock() - t) / calls_per_sample / 1e3)
    return {name: float(np.median(v)) for name, v in times.items()}


def products(a, W) -> tuple[dict, dict]:
    """({variant: call}, {variant: its output}) for out = a @ W: np.matmul and step_product per block."""
    M, N = a.shape[0], W.shape[1]
    calls, outs = {}, {}
    out = outs["np.matmul"] = np.empty((M, N), DTYPE)
    calls["np.matmul"] = lambda: np.matmul(a, W, out=out)
    for mr, nr in BLOCKS:
        product, wp = step_product(mr, nr), pack_columns(W, nr)
        o = outs[f"step_product {mr}x{nr}"] = np.empty((M, N), DTYPE)
        calls[f"step_product {mr}x{nr}"] = lambda product=product, wp=wp, o=o: product(a, wp, o, N)
    return calls, outs


def check(calls: dict, outs: dict, a, W) -> None:
    """Every variant's result against np.matmul in float64 (relative error under TOLERANCE)."""
    want = np.matmul(a.astype(np.float64), W.astype(np.float64))
    for name, fn in calls.items():
        outs[name].fill(np.nan)
        fn()
        err = float(np.abs(outs[name] - want).max() / np.abs(want).max())
        if not err < TOLERANCE:
            raise AssertionError(f"{name}: relative error {err:.2e} against np.matmul")


def bench_size(config: str, H: int, seconds: float, rng) -> list[dict]:
    Wh = (rng.standard_normal((H, 4 * H)) / np.sqrt(H)).astype(DTYPE)
    WhT = np.ascontiguousarray(Wh.T)                       # (4H, H), as the BLAS per-step products take it
    h = rng.uniform(-1, 1, (ROWS, H)).astype(DTYPE)
    da = rng.standard_normal((ROWS, 4 * H)).astype(DTYPE)
    rows = []
    for direction, a, W in (("forward", h, Wh), ("backward", da, WhT)):
        (M, K), N = a.shape, W.shape[1]
        flops = 2 * M * K * N
        calls, outs = products(a, W)
        check(calls, outs, a, W)
        us = time_interleaved(calls, seconds, calls_per_sample=max(1, int(100e-6 / (flops / 50e9))))
        base = us["np.matmul"]
        for name, t in us.items():
            rows.append({"part": direction, "config": config, "H": H, "M": M, "K": K, "N": N, "variant": name,
                         "us": round(t, 2), "gflops": round(flops / t / 1e3, 1),
                         "speedup_vs_matmul": round(base / t, 3)})
    packs = {"np.copyto(WhT, Wh.T)": lambda: np.copyto(WhT, Wh.T)}
    for nr in sorted({nr for _, nr in BLOCKS}):
        packs[f"pack_columns(Wh, {nr})"] = lambda nr=nr: pack_columns(Wh, nr)
        packs[f"pack_columns(Wh.T, {nr})"] = lambda nr=nr: pack_columns(Wh.T, nr)
    for name, t in time_interleaved(packs, seconds, calls_per_sample=1).items():
        rows.append({"part": "packing per window", "config": config, "H": H, "M": None, "K": None, "N": None,
                     "variant": name, "us": round(t, 2), "gflops": None, "speedup_vs_matmul": None})
    return rows


def print_table(rows: list[dict]) -> None:
    print("| part | config | M x K x N | variant | µs/call | GFLOP/s | vs np.matmul |")
    print("|---|---|---|---|---:|---:|---:|")
    for r in rows:
        shape = f"{r['M']} x {r['K']} x {r['N']}" if r["M"] else f"H={r['H']}"
        gflops = "" if r["gflops"] is None else f"{r['gflops']:.1f}"
        speedup = "" if r["speedup_vs_matmul"] is None else f"{r['speedup_vs_matmul']:.2f}x"
        print(f"| {r['part']} | {r['config']} | {shape} | {r['variant']} | {r['us']:.1f} | {gflops} | {speedup} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="timing per variant and shape (default 1)")
    parser.add_argument("--json", metavar="FILE", help="also write the records to FILE as a JSON list")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    rows = []
    with threadpoolctl.threadpool_limits(1):
        for config, H in SIZES.items():
            rows += bench_size(config, H, args.seconds, rng)
        about = machine(host_has_avx512=host_has_avx512())
    print_table(rows)
    if args.json:
        common = {"dtype": np.dtype(DTYPE).name, "seconds_per_variant": args.seconds, "machine": about}
        write_records(args.json, [{**row, **common} for row in rows])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
