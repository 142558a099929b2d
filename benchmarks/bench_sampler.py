"""Examples per second of the sampler, per task, on this machine's CPU.

The sampler runs on the host while the model trains, so it must stay far ahead of
the training step.  For each task this times ``sample_example`` (the split
rejection included: about three draws per example) and ``generate`` (one draw)
at length 4, nesting 3 for programs (addition and copy have no nesting, so 1).
Each number is the median over repetitions that follow a warm-up.

    python benchmarks/bench_sampler.py [--count N] [--repeats R] [--json FILE]
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics
import sys
import time

from ltexec.sampler import TASKS, generate, sample_example
from machine import machine, write_records

LENGTH = 4
PROGRAM_NESTING = 3


def examples_per_second(draw, count: int, repeats: int) -> float:
    """Median rate of ``count`` calls of ``draw()`` over ``repeats`` timed runs after one warm-up run."""
    rates = []
    for run in range(repeats + 1):
        start = time.perf_counter()
        for _ in range(count):
            draw()
        elapsed = time.perf_counter() - start
        if run:
            rates.append(count / elapsed)
    return statistics.median(rates)


def measure(count: int, repeats: int) -> list[dict]:
    """One record per task: examples/s of ``sample_example`` (split ``train``) and of ``generate``."""
    records = []
    for task in TASKS:
        nesting = PROGRAM_NESTING if task == "programs" else 1
        rng = random.Random(0)
        in_split = examples_per_second(functools.partial(sample_example, task, LENGTH, nesting, "train", rng),
                                       count, repeats)
        drawn = examples_per_second(functools.partial(generate, task, LENGTH, nesting, rng), count, repeats)
        records.append({"task": task, "length": LENGTH, "nesting": nesting, "split": "train",
                        "examples_per_s": round(in_split), "generate_per_s": round(drawn),
                        "count": count, "repeats": repeats})
    about = machine()
    return [{**record, "machine": about} for record in records]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000, help="calls per timed run (default 20000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per number (default 5)")
    parser.add_argument("--json", metavar="FILE", help="also write the records to FILE as a JSON list")
    args = parser.parse_args(argv)
    if args.count < 1 or args.repeats < 1:
        parser.error("--count and --repeats must be at least 1")

    records = measure(args.count, args.repeats)
    about = records[0]["machine"]
    print(f"sampler on {about['processor']} ({about['cpu_count']} CPUs), "
          f"{about['implementation']} {about['python']}; median of {args.repeats} x {args.count} calls")
    print(f"{'task':<10} {'length':>6} {'nesting':>7} {'sample_example/s':>17} {'generate/s':>11}")
    for record in records:
        print(f"{record['task']:<10} {record['length']:>6} {record['nesting']:>7} "
              f"{record['examples_per_s']:>17,} {record['generate_per_s']:>11,}")
    if args.json:
        write_records(args.json, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
