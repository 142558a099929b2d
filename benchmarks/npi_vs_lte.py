"""NPI against Learning to Execute on addition: the same training lengths, the same seeds, exact match by digits.

    python benchmarks/npi_vs_lte.py [--seeds 0-4] [--max-digits 10] [--lte-minutes 10] [--out DIR]

For every seed:

* the NPI (``ltexec.npi``, the defaults of ``examples/npi_addition.py``)
  trains on additions of 1 to ``--max-digits`` digits until every held-out
  addition is right or its time cap, then runs by itself on held-out
  additions of every training length (100 each), of 2N, 5N, 100 and 1,000
  digits (100 each); the seed that trained fastest also at 3,000 digits;
* Learning to Execute's LSTM (ltexec's ``addition`` task, the main job's
  settings, the ``mix`` curriculum: lengths 1 to N mixed) trains for
  ``--lte-minutes`` and is evaluated by greedy exact match at every training
  length and at 2N digits (100 each), the longest its sampler writes
  (``ltexec.sampler.MAX_LENGTH``) bounding where its input fits.

One record, ``benchmarks/results/npi-vs-lte-<date>-<commit>.json``,
holds per seed and system ``exact_by_digits`` (e.g. ``{"1000": 1.0}``), the
training time and steps, and the machine; ``benchmarks/figures.py`` draws it.
The record is rewritten after every run, so a stopped benchmark keeps what it
finished; runs are kept under ``--out`` (default a temporary folder).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

from machine import REPOSITORY, git_revision, machine

from ltexec.atomic import atomic_write
from ltexec.config import TrainConfig
from ltexec.evaluation import evaluate
from ltexec.npi.evaluate import evaluation_digits, exact_by_digits
from ltexec.npi.train import NPITrainConfig, NPITrainer, load_trained_npi
from ltexec.sampler import MAX_LENGTH, sample
from ltexec.seeds import derive_seed
from ltexec.trainer import open_run

NPI_EXAMPLES = 100
"""Held-out additions per number of digits (so 100 per training length: 1,000 over 1..10)."""
NPI_3000_EXAMPLES = 100
LTE_EXAMPLES = 100
LTE_SETTINGS = dict(hidden=128, layers=1, batch=64, window=50, mode="examples", loss_scale="chars",
                    strategy="mix", transform="reverse", lr=0.5, momentum=0.9, clip=1.0, forget_bias=1.0,
                    eval_every=1000, eval_examples=300)
"""The main job's settings (examples/train_addition.py), with the ``mix`` curriculum for lengths 1 to N."""


def seeds_arg(text: str) -> list[int]:
    first, _, last = text.partition("-")
    try:
        seeds = list(range(int(first), int(last or first) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be N or N-M, got {text!r}") from None
    if not seeds or seeds[0] < 0:
        raise argparse.ArgumentTypeError(f"seeds must be N or N-M with 0 <= N <= M, got {text!r}")
    return seeds


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=seeds_arg, default=seeds_arg("0-4"))
    parser.add_argument("--max-digits", type=int, default=10)
    parser.add_argument("--npi-minutes", type=float, default=15.0, help="the NPI's training cap (default 15)")
    parser.add_argument("--lte-minutes", type=float, default=10.0, help="LtE's training time (default 10)")
    parser.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", help="the record's path (default: benchmarks/results/npi-vs-lte-...json)")
    args = parser.parse_args(argv)
    if not 1 <= args.max_digits <= MAX_LENGTH // 2:
        parser.error(f"--max-digits must be in 1..{MAX_LENGTH // 2} (LtE is evaluated at 2N <= {MAX_LENGTH}), "
                     f"got {args.max_digits}")
    return args


def run_npi(seed: int, args, out: Path, log) -> dict:
    config = NPITrainConfig(max_digits=args.max_digits, seed=seed, minutes=args.npi_minutes)
    trainer = NPITrainer(config, out / f"npi-seed{seed}", log=log)
    summary = trainer.run()
    log(f"npi seed {seed}: exact match by digits")
    exact = exact_by_digits(trainer.model, config, evaluation_digits(args.max_digits), NPI_EXAMPLES, log=log)
    return {**summary, "exact_by_digits": {d: r["exact"] for d, r in exact.items()}, "by_digits": exact}


def run_lte(seed: int, args, out: Path, log) -> dict:
    started = time.perf_counter()
    config = TrainConfig(task="addition", length=args.max_digits, seed=seed, minutes=args.lte_minutes,
                         **LTE_SETTINGS).validate()
    trainer = open_run(config, out / f"lte-seed{seed}", log=log)
    run = trainer.run()
    exact = {}
    for digits in [*range(1, args.max_digits + 1), 2 * args.max_digits]:
        examples = sample("addition", digits, count=LTE_EXAMPLES, seed=derive_seed(seed, "npi-vs-lte", digits),
                          split="test")
        result = evaluate(trainer.model, examples, config.transform, warmup=config.warmup)
        exact[str(digits)] = result.exact_acc
        log(f"  {digits:>5} digits: exact {100 * result.exact_acc:5.1f}% of {len(examples)}")
    return {"steps": run["steps"], "minutes": round((time.perf_counter() - started) / 60, 3),
            "training_minutes": args.lte_minutes, "exact_by_digits": exact, "settings": LTE_SETTINGS}


def main(argv=None) -> int:
    args = parse_args(argv)
    day = datetime.date.today().isoformat()
    commit = (git_revision()["commit"] or "unknown")[:7]
    path = Path(args.json) if args.json else REPOSITORY / "benchmarks" / "results" / f"npi-vs-lte-{day}-{commit}.json"
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="npi-vs-lte-"))
    given = sys.argv[1:] if argv is None else list(argv)
    kept = [word for k, word in enumerate(given)                  # where runs and the record go: not part of it
            if word not in ("--out", "--json") and (k == 0 or given[k - 1] not in ("--out", "--json"))]
    command = " ".join(["python", "benchmarks/npi_vs_lte.py", *kept])
    record = {"benchmark": "npi_vs_lte", "command": command, "date": day, "max_digits": args.max_digits,
              "machine": machine(), "seeds": {}}

    def save() -> None:
        text = json.dumps(record, indent=1) + "\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))

    def log(line: str) -> None:
        print(line, flush=True)

    for seed in args.seeds:
        record["seeds"][str(seed)] = {"npi": run_npi(seed, args, out, log)}
        save()
    fastest = min(args.seeds, key=lambda s: record["seeds"][str(s)]["npi"]["minutes"])
    log(f"npi seed {fastest} (the fastest to train): 3,000 digits")
    model, config = load_trained_npi(out / f"npi-seed{fastest}")
    at_3000 = exact_by_digits(model, config, [3000], NPI_3000_EXAMPLES, per_step=False, log=log)["3000"]
    record["seeds"][str(fastest)]["npi"]["exact_by_digits"]["3000"] = at_3000["exact"]
    record["seeds"][str(fastest)]["npi"]["by_digits"]["3000"] = at_3000
    save()
    for seed in args.seeds:
        record["seeds"][str(seed)]["lte"] = run_lte(seed, args, out, log)
        save()
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
