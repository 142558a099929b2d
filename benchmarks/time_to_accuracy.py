"""Time to accuracy: how long the main job, examples/train_addition.py, takes to reach its target, seed by seed.

Runs the job once per seed, one seed after the other, each in a fresh process
as a user would run it, with ``--stop-at-target``: a seed's run stops as soon
as an evaluation meets the target and the 2,000 final test examples confirm
it, else at the job's own budget. Every other option goes to the job as it is
(``--minutes``, ``--length``, ``--hidden``, ``--spike-factor``, ...). Each
seed's run, with its ``train.log``, is kept in ``RUNS/seed{S}``.

Per seed it records the wall minutes and step at which the target was
confirmed (and at which the trainer's own test set first met it), the final
test accuracies, the steps, chars/s and the spikes caught; once per sweep,
the machine (``machine.py``: CPU model, cores, the BLAS and the kernel it
selected, NumPy and Numba versions, git commit). A seed takes at most the
job's budget (10 minutes by default), so run a 10-seed sweep in the background.

    python benchmarks/time_to_accuracy.py --seeds 0-9 [--minutes M] [--length L] [train_addition options]
                                          [--runs DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import REPOSITORY, machine

SCRIPT = REPOSITORY / "examples" / "train_addition.py"
FROM_SUMMARY = ("target_minutes", "target_step", "first_target_minutes", "first_target_step",
                "teacher_forced_acc", "exact_match_acc", "test_examples", "steps", "minutes", "chars_per_s",
                "spikes", "stopped", "length", "backend", "backend_choices", "config")
"""The keys of the job's summary line each seed's record keeps (None where the job failed)."""
OWN_OPTIONS = ("--seed", "--out", "--stop-at-target")
"""The job's options this script sets itself."""


def parse_seeds(text: str) -> list[int]:
    """``"0-9"``, ``"0,3,5"`` or a mix (``"0-2,7"``) as a list of distinct seeds, in the order given."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        low, dash, high = part.partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise argparse.ArgumentTypeError(f"seeds must look like 0-9 or 0,3,5; got {text!r}") from None
        if first < 0 or last < first:
            raise argparse.ArgumentTypeError(f"seed range {part!r} must run from a seed >= 0 upwards")
        seeds += [seed for seed in range(first, last + 1) if seed not in seeds]
    if not seeds:
        raise argparse.ArgumentTypeError("seeds must name at least one seed")
    return seeds


def job_command(seed: int | str, run_dir: Path, options: list[str], shown: bool = False) -> list[str]:
    """The job's command line; ``shown``: as a user types it in the repository (no interpreter or checkout path)."""
    program = ["python", str(SCRIPT.relative_to(REPOSITORY))] if shown else [sys.executable, str(SCRIPT)]
    return [*program, "--stop-at-target", "--seed", str(seed), "--out", str(run_dir), *options]


def run_seed(seed: int, run_dir: Path, options: list[str]) -> dict:
    """Run the job for ``seed`` into ``run_dir``; its record, from the summary line the job printed last."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "train.log"
    with open(log_path, "w", encoding="utf-8") as log:
        done = subprocess.run(job_command(seed, run_dir, options), stdout=log, stderr=subprocess.STDOUT, text=True)
    lines = log_path.read_text(encoding="utf-8").strip().splitlines() or ["(no output)"]
    summary, error = {}, None
    try:
        summary = json.loads(lines[-1]) if done.returncode == 0 else {}
    except json.JSONDecodeError:
        pass
    if not summary:
        error = f"exit status {done.returncode}: {lines[-1]}"
    return {"seed": seed, "status": "failed" if error else "done",
            "reached": summary.get("target_step") is not None,
            **{key: summary.get(key) for key in FROM_SUMMARY}, "run_dir": str(run_dir), "error": error}


def summarize(runs: list[dict]) -> dict:
    """Across seeds: how many reached the target, and in how many minutes (median, fastest, slowest)."""
    minutes = [r["target_minutes"] for r in runs if r["reached"]]
    steps = [r["target_step"] for r in runs if r["reached"]]
    speeds = [r["chars_per_s"] for r in runs if r["chars_per_s"]]
    return {"seeds": len(runs), "failed": sum(r["status"] == "failed" for r in runs),
            "reached": len(minutes),
            "median_target_minutes": statistics.median(minutes) if minutes else None,
            "min_target_minutes": min(minutes, default=None), "max_target_minutes": max(minutes, default=None),
            "median_target_step": statistics.median(steps) if steps else None,
            "median_chars_per_s": statistics.median(speeds) if speeds else None,
            "spikes": sum(r["spikes"] or 0 for r in runs)}


def print_table(runs: list[dict], summary: dict) -> None:
    header = (f"{'seed':>4}  {'reached':<8}{'target min':>11}{'target step':>13}{'first min':>11}"
              f"{'final tf':>10}{'exact':>9}{'steps':>9}{'chars/s':>10}{'spikes':>8}")
    print(header)
    print("-" * len(header))

    def number(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for r in runs:
        if r["status"] == "failed":
            print(f"{r['seed']:>4}  failed: {r['error']}")
            continue
        print(f"{r['seed']:>4}  {'yes' if r['reached'] else 'no':<8}{number(r['target_minutes'], '.2f'):>11}"
              f"{number(r['target_step'], 'd'):>13}{number(r['first_target_minutes'], '.2f'):>11}"
              f"{r['teacher_forced_acc']:>10.2%}{r['exact_match_acc']:>9.2%}{r['steps']:>9}"
              f"{number(r['chars_per_s'], ',.0f'):>10}{r['spikes']:>8}")
    median = summary["median_target_minutes"]
    spread = "" if median is None else (f"; median {median:.2f} min ({summary['min_target_minutes']:.2f} to "
                                        f"{summary['max_target_minutes']:.2f})")
    print(f"reached the target in {summary['reached']} of {summary['seeds']} seeds{spread}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False,
                                     epilog="Any other option goes to examples/train_addition.py.")
    parser.add_argument("--seeds", required=True, type=parse_seeds, help="seeds to run, e.g. 0-9 or 0,3,5")
    parser.add_argument("--runs", type=Path, default=None,
                        help="directory for the seeds' runs (default: a new one under runs/)")
    parser.add_argument("--json", metavar="FILE", help="also write the machine, the runs and the summary to FILE")
    args, options = parser.parse_known_args(argv)
    own = [option for option in options if option.split("=")[0] in OWN_OPTIONS]
    if own:
        parser.error(f"{', '.join(own)} is set for each seed by this script")
    runs_dir = args.runs or Path("runs") / f"time-to-accuracy-{time.strftime('%Y%m%d-%H%M%S')}"
    about = machine()
    runs = []
    try:
        for seed in args.seeds:
            print(f"seed {seed}: {shlex.join(job_command(seed, runs_dir / f'seed{seed}', options, shown=True))}",
                  file=sys.stderr)
            runs.append(run_seed(seed, runs_dir / f"seed{seed}", options))
            record = runs[-1]
            print(f"seed {seed}: {record['error'] or record['stopped']}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"interrupted: {len(runs)} of {len(args.seeds)} seeds done", file=sys.stderr)
    summary = summarize(runs)
    print_table(runs, summary)
    if args.json:
        command = shlex.join(job_command("{seed}", runs_dir / "seed{seed}", options, shown=True))
        document = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "machine": about, "command": command, "runs": runs, "summary": summary}
        Path(args.json).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return 0 if runs and not summary["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
