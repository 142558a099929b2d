"""Train an LSTM to add two numbers, on whatever hardware is here.

    python examples/train_addition.py                # 3-digit addition, 10 minutes
    python examples/train_addition.py --paper        # the paper's full configuration

The defaults are chosen so that on a 2-core CPU with no GPU, 10 minutes of
wall time reach at least 99% teacher-forced character accuracy and 95% greedy
exact-match accuracy on the held-out test split of 3-digit addition (the
docs/training.md says how they were chosen and what they measured). Progress and sample
predictions are printed at each evaluation; the last line printed is one JSON
object with the final test-split figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from ltexec.config import TrainConfig
from ltexec.evaluation import evaluate
from ltexec.sampler import sample
from ltexec.seeds import derive_seed
from ltexec.trainer import open_run
from ltexec.validation import check_float, check_output_dir

# What 10 minutes on a 2-core CPU can afford, and what makes it reliable (see docs/training.md).
FAST = dict(hidden=128, layers=1, batch=64, window=50, mode="examples", loss_scale="chars",
            strategy="baseline", transform="reverse", lr=0.5, momentum=0.9, clip=1.0,
            eval_every=1000, eval_examples=300)
# The paper's configuration (its section 5): 2x400, batch 100, plain SGD at 0.5, clip 5.
PAPER = dict(hidden=400, layers=2, batch=100, window=50, mode="stream", strategy="combined", transform="none",
             lr=0.5, momentum=0.0, clip=5.0, eval_every=200, eval_examples=500)
FINAL_TEST_EXAMPLES = 2000
FINAL_EVAL_RESERVE_S = 15.0     # wall time kept back for the final evaluation


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=3, help="digits per operand (default 3)")
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="wall-clock budget for the whole run, final evaluation included (default 10)")
    parser.add_argument("--backend", default="auto", help="compute backend (default auto: the fastest here)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--paper", action="store_true", help="the paper's full configuration (needs a GPU to be quick)")
    parser.add_argument("--out", default=None, help="directory for metrics.jsonl and the checkpoint (default: none)")
    for name, kind in (("hidden", int), ("layers", int), ("batch", int), ("lr", float),
                       ("momentum", float), ("clip", float), ("strategy", str), ("transform", str),
                       ("mode", str), ("loss_scale", str), ("eval_every", int)):
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None,
                            help=f"override the preset's {name}")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    preset = dict(PAPER if args.paper else FAST)
    preset.update({k: v for k, v in vars(args).items() if k in preset and v is not None})
    try:
        budget_s = 60.0 * check_float("minutes", args.minutes, 0.0, inclusive_min=False) - FINAL_EVAL_RESERVE_S
        config = TrainConfig(task="addition", length=args.length, backend=args.backend, seed=args.seed,
                             minutes=max(budget_s, 1.0) / 60.0, **preset)
        if args.out is not None:
            check_output_dir("--out", args.out)
        trainer = open_run(config, args.out)
    except (ValueError, RuntimeError) as error:
        print(f"train_addition: error: {error}", file=sys.stderr)
        return 2
    run = trainer.run()
    test = evaluate(trainer.model, sample("addition", args.length, count=FINAL_TEST_EXAMPLES,
                                          seed=derive_seed(args.seed, "final-test", args.length), split="test"),
                    config.transform, warmup=config.warmup)
    summary = {
        "task": "addition", "length": args.length, "backend": run["backend"],
        "minutes": round((time.perf_counter() - started) / 60.0, 2), "steps": run["steps"],
        "chars_per_s": run["chars_per_s"], "teacher_forced_acc": round(test.char_acc, 4),
        "exact_match_acc": round(test.exact_acc, 4), "test_examples": test.examples,
        "seed": args.seed, "config": preset,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
