"""Train a Neural Programmer-Interpreter to add, then watch it add numbers far longer than it was trained on.

    python examples/npi_addition.py                    # train on 1-10 digits, evaluate up to 1,000 digits
    python examples/npi_addition.py --seed 3 --out runs/npi
    python examples/npi_addition.py --digits 3000      # also evaluate at 3,000 digits (a few minutes)

The NPI (ltexec.npi: the paper's 2 x 256 LSTM core, a program memory, an
encoder of the scratch pad) learns from execution traces of the grade-school
algorithm on numbers of 1 to 10 digits until every held-out addition is
right at two evaluations in a row (the defaults finish on a 2-core CPU well
within the 15-minute cap; docs/npi.md has the measured times). It then runs
by itself, with its own call stack, on held-out additions of every training
length and of 20, 50, 100 and 1,000 digits (100 each), and prints a table of
exact matches. The run is kept in a new directory under runs/ unless --out
names one; the line before the last shows how to watch it add; the last line
is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from ltexec.npi.evaluate import evaluation_digits, exact_by_digits
from ltexec.npi.train import NPITrainConfig, NPITrainer, write_summary
from ltexec.validation import check_output_dir

EXAMPLES = 100
"""Held-out additions per number of digits."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", help="the run's directory (default: a new one under runs/)")
    parser.add_argument("--minutes", type=float, default=NPITrainConfig.minutes,
                        help=f"training time cap (default {NPITrainConfig.minutes:g})")
    parser.add_argument("--max-digits", type=int, default=NPITrainConfig.max_digits,
                        help=f"training lengths 1 to this many digits (default {NPITrainConfig.max_digits})")
    parser.add_argument("--preset", default=NPITrainConfig.preset, help="model size: paper (2x256) or small")
    parser.add_argument("--backend", default="auto", help="compute backend (default auto: the fastest here)")
    parser.add_argument("--digits", type=int, nargs="*", default=[],
                        help="more numbers of digits to evaluate at (e.g. 3000)")
    parser.add_argument("--examples", type=int, default=EXAMPLES,
                        help=f"held-out additions per number of digits (default {EXAMPLES})")
    return parser.parse_args(argv)


def new_run_dir(seed: int) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"npi-addition-seed{seed}-{stamp}"


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        config = NPITrainConfig(max_digits=args.max_digits, preset=args.preset, minutes=args.minutes, seed=args.seed,
                                backend=args.backend)
        digits = evaluation_digits(config.max_digits) + sorted(set(args.digits) - set(
            evaluation_digits(config.max_digits)))
        if any(d < 1 for d in digits):
            raise ValueError(f"--digits must be positive, got {args.digits}")
        if args.examples < 1:
            raise ValueError(f"--examples must be at least 1, got {args.examples}")
        out = check_output_dir("--out", args.out) if args.out is not None else new_run_dir(args.seed)
        if (out / "checkpoint.npz").exists():
            raise ValueError(f"{out} already holds a run: choose another --out")
        trainer = NPITrainer(config, out)
    except (ValueError, RuntimeError) as error:
        print(f"npi_addition: error: {error}", file=sys.stderr)
        return 2
    summary = trainer.run()
    write_summary(out / "summary.json", summary)
    print(f"exact match of {args.examples} held-out additions by number of digits "
          f"(trained on 1 to {config.max_digits}):")
    results = exact_by_digits(trainer.model, config, digits, args.examples, log=print)
    trained = [results[str(d)]["exact"] for d in range(1, config.max_digits + 1)]
    figures = {"seed": args.seed, "max_digits": config.max_digits, "preset": config.preset,
               "steps": summary["steps"], "minutes": summary["minutes"], "reached_target": summary["reached_target"],
               "traces_seen": summary["traces_seen"], "core_steps_seen": summary["core_steps_seen"],
               "exact_at_training_lengths": sum(trained) / len(trained),
               "exact_by_digits": {d: r["exact"] for d, r in results.items()}, "run": str(out)}
    print(f"watch it add: ltexec npi run --run {shlex.quote(str(out))} 90817263544536271809 987654321")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
