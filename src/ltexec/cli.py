"""The ``ltexec`` command line: ``sample``, ``train``, ``sweep``, ``compare``, ``plot``, ``predict``, ``tune``, ``npi``.

``ltexec sample`` prints a task's examples, ``ltexec train`` trains (or
resumes) one run, ``ltexec sweep`` trains a grid of runs, ``ltexec compare``
sets each strategy of a sweep against baseline with confidence intervals, ``ltexec plot``
draws a sweep's heatmaps, ``ltexec predict`` shows what a trained run
answers for programs given to it and ``ltexec tune`` shows (or measures
again) the backend choices the tuner made on this machine; ``ltexec npi``
trains and runs Neural Programmer-Interpreters (:mod:`ltexec.npi.cli`). Every bad argument, a bad path included,
ends the command with exit status 2 and one line naming the argument and
what is wrong; no traceback.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from ltexec import __version__
from ltexec.validation import check_float, check_int, check_output_dir


class _OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line on stderr and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def checked_arg(name: str, check, *args):
    """An argparse ``type`` that parses with ``check(name, text, *args)``; its ValueError becomes the error line."""

    def parse(text: str):
        try:
            return check(name, text, *args)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = name
    return parse


def int_arg(name: str, minimum: int | None = None, maximum: int | None = None):
    """An argparse ``type`` that validates with :func:`check_int`."""
    return checked_arg(name, check_int, minimum, maximum)


def _add_sample(subparsers) -> None:
    from ltexec.curriculum import DRAWS, STRATEGIES
    from ltexec.sampler import SPLITS, TASKS

    parser = subparsers.add_parser(
        "sample", help="print examples of a task as JSON Lines",
        description="Print examples of a task as JSON Lines, one example per line, with the keys "
                    "task, input (the program exactly as a person would run it), target (what it "
                    "prints), length, nesting and split. The same seed gives the same output.")
    parser.add_argument("--task", required=True, choices=TASKS,
                        help="programs: Python programs printing one integer; addition: print(a+b); "
                             "copy: repeat a digit string")
    parser.add_argument("--length", required=True, type=int_arg("length", 1),
                        help="number size: numbers are drawn from 1..10**length "
                             "(copy: the number of digits)")
    parser.add_argument("--nesting", default=1, type=int_arg("nesting", 1),
                        help="how many operations are composed (programs only; default 1)")
    parser.add_argument("--count", default=10, type=int_arg("count", 0),
                        help="how many examples to print (default 10)")
    parser.add_argument("--seed", default=0, type=int_arg("seed", 0),
                        help="random seed; the same seed prints the same examples (default 0)")
    parser.add_argument("--split", default="train", choices=SPLITS,
                        help="which split to draw from: examples are assigned to train, val or "
                             "test by a hash of their text, so the splits never overlap "
                             "(default train)")
    parser.add_argument("--strategy", choices=STRATEGIES,
                        help="print what this curriculum strategy feeds at --level, with --length and "
                             "--nesting as its target (default: every example at --length, --nesting)")
    parser.add_argument("--level", type=checked_arg("level", _parse_level),
                        help="the curriculum's current level as LENGTH,NESTING (default 1,1; needs --strategy)")
    parser.add_argument("--draw", choices=DRAWS, default="number",
                        help="mix and combined draw a length for every number (number, the original "
                             "code's) or once per example (example) (default number)")
    parser.set_defaults(run=_run_sample)


def _parse_level(name: str, text: str) -> tuple[int, int]:
    parts = text.split(",")
    if len(parts) != 2:
        raise ValueError(f"{name} must be LENGTH,NESTING, e.g. 2,1; got {text!r}")
    return check_int(f"{name} length", parts[0].strip(), 1), check_int(f"{name} nesting", parts[1].strip(), 1)


def _run_sample(args) -> None:
    import random

    from ltexec.curriculum import Curriculum
    from ltexec.sampler import sample

    if args.strategy is None:
        if args.level is not None:
            raise ValueError("--level needs --strategy: it is the level of a curriculum")
        examples = sample(args.task, args.length, nesting=args.nesting, count=args.count,
                          seed=args.seed, split=args.split)
    else:
        curriculum = Curriculum(args.strategy, args.length, args.nesting, draw=args.draw,
                                level=args.level or (1, 1))
        rng = random.Random(args.seed)
        examples = [curriculum.draw_example(args.task, args.split, rng) for _ in range(args.count)]
    out = sys.stdout
    for example in examples:
        out.write(json.dumps(example.to_dict()) + "\n")


def float_arg(name: str, minimum: float | None = None, maximum: float | None = None,
              inclusive_min: bool = True):
    """An argparse ``type`` that validates with :func:`check_float`."""
    return checked_arg(name, check_float, minimum, maximum, inclusive_min)


def _add_train(subparsers) -> None:
    from ltexec.backends import BACKENDS
    from ltexec.config import DTYPES, LOSS_SCALES, MODES, TrainConfig
    from ltexec.curriculum import DRAWS, STRATEGIES
    from ltexec.sampler import TASKS
    from ltexec.vocab import TRANSFORMS

    d = TrainConfig()
    parser = subparsers.add_parser(
        "train", help="train an LSTM on a task with a curriculum",
        description="Train an LSTM on a task with one of the paper's curricula (defaults: the "
                    "paper's configuration). Progress and sample predictions are printed at each "
                    "evaluation; metrics.jsonl and an atomic checkpoint are written to --out. "
                    "Ctrl-C saves a checkpoint and stops; --resume continues it exactly.")
    add = parser.add_argument
    # Defaults are None so that --resume can tell which options were given explicitly.
    add("--task", choices=TASKS, help=f"task to learn (default {d.task})")
    add("--length", type=int_arg("length", 1), help=f"target length (default {d.length})")
    add("--nesting", type=int_arg("nesting", 1),
        help="target nesting, programs only (default 3 for programs, 1 otherwise)")
    add("--strategy", choices=STRATEGIES, help=f"curriculum strategy (default {d.strategy})")
    add("--draw", choices=DRAWS, help="mix and combined draw a length for every number (number, the original "
        f"code's) or once per example (example) (default {d.draw})")
    add("--transform", choices=TRANSFORMS, help=f"input modification (default {d.transform})")
    add("--hidden", type=int_arg("hidden", 1), help=f"LSTM units per layer (default {d.hidden})")
    add("--layers", type=int_arg("layers", 1), help=f"LSTM layers (default {d.layers})")
    add("--batch", type=int_arg("batch", 1), help=f"batch size (default {d.batch})")
    add("--window", type=int_arg("window", 1), help=f"unrolled steps per window (default {d.window})")
    add("--mode", choices=MODES, help="stream: examples back to back with the state carried between "
        "windows (the paper's); examples: independent examples from a zero state (default stream)")
    add("--loss-scale", choices=LOSS_SCALES, help="divide the summed answer-character loss by the batch "
        "size (batch, the paper's) or by the number of answer characters (chars) (default batch)")
    add("--lr", type=float_arg("lr", 0.0, inclusive_min=False), help=f"learning rate (default {d.lr})")
    add("--momentum", type=float_arg("momentum", 0.0, 0.999), help=f"SGD momentum (default {d.momentum})")
    add("--clip", type=float_arg("clip", 0.0, inclusive_min=False),
        help=f"clip the global gradient norm at this value (default {d.clip})")
    add("--forget-bias", type=float_arg("forget-bias"),
        help=f"added to every forget-gate bias after the uniform init (default {d.forget_bias:g}, the paper's; "
             f"1 is common)")
    add("--spike-factor", type=float_arg("spike-factor", 1.0, inclusive_min=False),
        help="recover from blow-ups: an evaluation interval whose mean loss exceeds this many times the "
             "lowest so far (or a NaN) restores the last good evaluation's state and lowers the learning "
             "rate (default: off, as in the paper)")
    add("--spike-lr-factor", type=float_arg("spike-lr-factor", 0.0, 1.0, inclusive_min=False),
        help=f"learning-rate factor after a spike (default {d.spike_lr_factor})")
    add("--backend", choices=("auto",) + tuple(BACKENDS), help=f"compute backend (default {d.backend})")
    add("--dtype", choices=DTYPES, help=f"floating-point type (default {d.dtype})")
    add("--seed", type=int_arg("seed", 0), help=f"random seed (default {d.seed})")
    add("--eval-every", type=int_arg("eval-every", 1), help=f"steps between evaluations (default {d.eval_every})")
    add("--eval-examples", type=int_arg("eval-examples", 1),
        help=f"examples per validation and test evaluation (default {d.eval_examples})")
    add("--minutes", type=float_arg("minutes", 0.0, inclusive_min=False),
        help="wall-clock budget in minutes (default: none)")
    add("--max-steps", type=int_arg("max-steps", 0), help="step budget (default: none)")
    add("--out", help="output directory for metrics.jsonl and checkpoint.npz (default: none)")
    add("--resume", action="store_true", help="continue the checkpoint in --out exactly")
    parser.set_defaults(run=_run_train)


def _run_train(args) -> None:
    from ltexec.config import TrainConfig
    from ltexec.trainer import open_run

    # Only the options given: a resumed run takes the others from its checkpoint.
    given = {name: getattr(args, name) for name in vars(TrainConfig()) if getattr(args, name, None) is not None}
    if args.out is not None:
        check_output_dir("--out", args.out)
    elif args.resume:
        raise ValueError("--resume needs --out, the directory of the run to continue")
    print(json.dumps(open_run(given, args.out, resume=args.resume).run()))


def list_arg(name: str, check_item, ranges: bool = False):
    """An argparse ``type`` for a comma-separated list (with ``ranges``, ``a..b`` for a run of integers)."""
    return checked_arg(name, _parse_list, check_item, ranges)


def _parse_list(name: str, text: str, check_item, ranges: bool) -> tuple:
    from ltexec.sweep import check_list

    items = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        low, dots, high = part.partition("..")
        if ranges and dots:
            items += range(check_int(name, low, 0), check_int(name, high, 0) + 1)
        else:
            items.append(part)
    return check_list(name, items, check_item)


def _add_sweep(subparsers) -> None:
    from ltexec.backends import BACKENDS
    from ltexec.curriculum import STRATEGIES
    from ltexec.sampler import TASKS
    from ltexec.sweep import PRESETS
    from ltexec.validation import check_choice
    from ltexec.vocab import TRANSFORMS

    parser = subparsers.add_parser(
        "sweep", help="train a grid of runs (strategies x lengths x nestings or transforms)",
        description="Train one run per cell of a grid and seed: strategies x target length x nesting for "
                    "programs and addition (the paper's Figures 4 and 5), strategies x input transform x "
                    "length for copy (Figure 7). Each run gets its own directory under --out with its "
                    "metrics.jsonl, checkpoint.npz, train.log and result.json; results.jsonl collects "
                    "them. Rerunning the command continues the sweep: finished runs are skipped, "
                    "interrupted ones resume from their checkpoint. Grid options replace the preset's.")
    add = parser.add_argument
    add("--out", required=True, help="the sweep directory (created; a rerun continues it)")
    add("--preset", choices=tuple(PRESETS), help="paper: programs, lengths 1..6, nestings 1..3, 2x400 "
        "(needs a GPU); paper-copy: the copy grid of Figure 7; cpu: a small grid for a 2-core CPU, "
        "about 30 minutes with --workers 2")
    add("--task", choices=TASKS, help="task of every cell")
    add("--strategies", type=list_arg("strategies", lambda s: check_choice("strategies", s, STRATEGIES)),
        help=f"comma-separated curriculum strategies (default all: {','.join(STRATEGIES)})")
    add("--lengths", type=list_arg("lengths", lambda v: check_int("lengths", v, 1), ranges=True),
        help="target lengths, e.g. 1,2,3 or 1..6")
    add("--nestings", type=list_arg("nestings", lambda v: check_int("nestings", v, 1), ranges=True),
        help="target nestings, programs only (default 1)")
    add("--transforms", type=list_arg("transforms", lambda t: check_choice("transforms", t, TRANSFORMS)),
        help=f"input transforms, several for copy only: {','.join(TRANSFORMS)} (default none)")
    add("--seeds", type=int_arg("seeds", 1), help="runs per cell, from seeds --seed, --seed + 1, ...; the table "
        "and figures show their mean and spread (default 1)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--steps-per-cell", type=int_arg("steps-per-cell", 1), help="training steps per cell")
    budget.add_argument("--minutes-per-cell", type=float_arg("minutes-per-cell", 0.0, inclusive_min=False),
                        help="training minutes per cell (default: the preset's; none: until the "
                             "learning rate falls below its minimum, as in the paper)")
    add("--beyond", type=list_arg("beyond", lambda v: check_int("beyond", v, 1), ranges=True),
        help="also evaluate each model at length + k and nesting + k for these k (default 1,2)")
    add("--hidden", type=int_arg("hidden", 1), help="LSTM units per layer (default: the preset's, else 400)")
    add("--layers", type=int_arg("layers", 1), help="LSTM layers (default: the preset's, else 2)")
    add("--batch", type=int_arg("batch", 1), help="batch size (default: the preset's, else 100)")
    add("--seed", type=int_arg("seed", 0), help="random seed of every cell, the first one with --seeds (default 0)")
    add("--backend", choices=("auto",) + tuple(BACKENDS), help="compute backend of every cell (default auto)")
    add("--eval-every", type=int_arg("eval-every", 1),
        help="steps between evaluations (default: the preset's, else 500)")
    add("--eval-examples", type=int_arg("eval-examples", 1),
        help="examples per evaluation and per generalization level (default: the preset's, else 500)")
    add("--step-products", choices=("blas", "tiled"),
        help="cpu backend (with --backend cpu): the per-step products every run uses, fixing its float32 "
             "rounding (default: the tuner's choice on this machine, recorded in each result)")
    add("--lanes", type=int_arg("lanes", 1),
        help="cpu backend (with --backend cpu): the lanes every run uses, at most --threads-per-cell "
             "(default: the tuner's choice)")
    add("--workers", type=int_arg("workers", 1), default=1, help="cells trained at once (default 1)")
    add("--threads-per-cell", type=int_arg("threads-per-cell", 1),
        help="BLAS threads (cpu backend lanes) per cell (default: cores / workers)")
    add("--ray", metavar="ADDRESS", help='run the cells as tasks on the Ray cluster at ADDRESS (e.g. auto); '
        'needs pip install "ltexec[ray]", ltexec on every node and --out on a shared filesystem')
    parser.set_defaults(run=_run_sweep)


SWEEP_GRID_OPTIONS = ("task", "strategies", "lengths", "nestings", "transforms", "seeds", "steps_per_cell",
                      "minutes_per_cell", "beyond")
SWEEP_TRAIN_OPTIONS = ("hidden", "layers", "batch", "seed", "backend", "eval_every", "eval_examples")
SWEEP_BACKEND_OPTIONS = ("step_products", "lanes")


def _run_sweep(args) -> None:
    from ltexec import sweep

    check_output_dir("--out", args.out)
    grid = {k: getattr(args, k) for k in SWEEP_GRID_OPTIONS if getattr(args, k) is not None}
    train = {k: getattr(args, k) for k in SWEEP_TRAIN_OPTIONS if getattr(args, k) is not None}
    backend_options = {k: getattr(args, k) for k in SWEEP_BACKEND_OPTIONS if getattr(args, k) is not None}
    if backend_options:
        grid["backend_options"] = backend_options
    if args.preset:
        spec = sweep.preset(args.preset, train=train, **grid)
    elif grid or train:
        spec = sweep.SweepSpec.from_dict({**grid, "train": train})
    else:                                  # only --out: continue the sweep held there
        spec = sweep.load_spec(args.out)
    executor = sweep.ray_executor(args.ray) if args.ray else sweep.local_executor
    sweep.run_sweep(spec, args.out, workers=args.workers, threads=args.threads_per_cell,
                    executor_factory=executor, log=lambda line: print(line, flush=True),
                    command=args.command_line)
    print(sweep.results_table(args.out))


def _add_compare(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="each strategy against baseline, per cell, with confidence intervals",
        description="Print a Markdown table of a sweep: per cell and accuracy, baseline's and each other "
                    "strategy's mean ± sample sd over the finished seeds, and Welch's confidence interval of "
                    "the difference strategy - baseline in percentage points, marked where it excludes 0; "
                    "then which commits, backend paths and commands made the results.")
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR",
                        help="a directory written by ltexec sweep (or its sweep.json and results.jsonl alone)")
    parser.add_argument("--confidence", type=float_arg("confidence", 0.0, 1.0, inclusive_min=False), default=0.95,
                        help="the intervals' confidence level, below 1 (default 0.95)")
    parser.add_argument("--baseline-from", metavar="SWEEP_DIR",
                        help="take the baseline cells from this sweep (trained alike) when SWEEP_DIR has none")
    parser.add_argument("--runs", action="store_true",
                        help="also list every finished run: why it stopped, its steps and minutes, the level "
                             "its curriculum reached and the step of each advance, its accuracies")
    parser.set_defaults(run=_run_compare)


def _run_compare(args) -> None:
    from ltexec.comparison import comparison_table, runs_table

    print(comparison_table(args.sweep_dir, confidence=args.confidence, baseline_dir=args.baseline_from))
    if args.runs:
        print("\n" + runs_table(args.sweep_dir))


def _add_plot(subparsers) -> None:
    parser = subparsers.add_parser(
        "plot", help="draw a sweep's heatmaps and forest plots (PNG and SVG)",
        description="Draw heatmaps in the style of the paper's figures from a sweep directory: accuracy "
                    "per strategy (rows nesting or transform, columns length), each strategy relative "
                    "to baseline, and accuracy beyond the training target, for teacher-forced and "
                    "exact-match accuracy; and a forest plot of each strategy's difference from baseline "
                    "per cell with its interval. With several seeds per cell the cells show mean±sd, relative "
                    "cells write the 95% interval of the difference (Welch's t) and are dotted where it "
                    "includes 0. Cells not yet run are hatched. Needs matplotlib "
                    '(pip install "ltexec[plot]").')
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR",
                        help="a directory written by ltexec sweep (or its sweep.json and results.jsonl alone)")
    parser.add_argument("--figures", help="where to write the figures (default SWEEP_DIR/figures)")
    parser.set_defaults(run=_run_plot)


def _run_plot(args) -> None:
    from ltexec.plot import plot_sweep

    if args.figures is not None:
        check_output_dir("--figures", args.figures)
    for path in plot_sweep(args.sweep_dir, args.figures):
        print(path)


def _add_predict(subparsers) -> None:
    from ltexec.backends import BACKENDS

    parser = subparsers.add_parser(
        "predict", help="show what a trained run answers for programs",
        description="Load a run's checkpoint and decode each PROGRAM greedily, as evaluation does. "
                    "Prints the program, the model's answer with each character's probability and, "
                    "when the program is one of the run's task, what it really prints (worked out "
                    "without running it) and whether the answer is right. Without PROGRAM arguments, "
                    "reads programs from standard input, separated by blank lines.")
    parser.add_argument("programs", nargs="*", metavar="PROGRAM",
                        help='a program, e.g. "print(512+309)"; several lines in one argument make '
                             "a multi-line program")
    parser.add_argument("--run", dest="run_dir", metavar="DIR", required=True,
                        help="a training run's directory (the --out of ltexec train)")
    parser.add_argument("--backend", choices=("auto",) + tuple(BACKENDS), default="auto",
                        help="compute backend (default auto: the best one that runs here)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per program (program, answer, finished, "
                             "probabilities, truth, correct, no_truth)")
    parser.set_defaults(run=_run_predict)


def _run_predict(args) -> None:
    from pathlib import Path

    from ltexec.generalization import load_trained_model
    from ltexec.predict import clean_program, format_prediction, predict, split_programs

    if Path(args.run_dir).exists() and not Path(args.run_dir).is_dir():
        raise ValueError(f"--run {args.run_dir} is not a directory")
    model, config = load_trained_model(args.run_dir, args.backend)
    texts = args.programs or split_programs(sys.stdin.read())
    if not texts:
        raise ValueError("no program given: standard input is empty (separate programs with a blank line)")
    programs = [clean_program(text, number) for number, text in enumerate(texts, 1)]
    for number, prediction in enumerate(predict(model, config, programs)):
        if args.json:
            print(json.dumps(prediction.to_dict()))
        else:
            print(("\n" if number else "") + format_prediction(prediction))


def _add_tune(subparsers) -> None:
    from ltexec.backends import BACKENDS
    from ltexec.config import DTYPES, TrainConfig

    d = TrainConfig()
    parser = subparsers.add_parser(
        "tune", help="show (or measure again) the backend choices timed on this machine",
        description="The cpu backend times its candidate code paths (per-step products, lanes) at a "
                    "run's shapes the first time and remembers the fastest per machine (the file named on "
                    "the first line; LTEXEC_TUNE_CACHE moves it, or turns it off with 'off'). This "
                    "command tunes one workload (default: the paper's model), then lists every choice "
                    "remembered for this machine with each candidate's time. --refresh measures them "
                    "all again.")
    add = parser.add_argument
    add("--hidden", type=int_arg("hidden", 1), default=d.hidden, help=f"LSTM units per layer (default {d.hidden})")
    add("--batch", type=int_arg("batch", 1), default=d.batch, help=f"batch size (default {d.batch})")
    add("--window", type=int_arg("window", 1), default=d.window, help=f"unrolled steps (default {d.window})")
    add("--dtype", choices=DTYPES, default=d.dtype, help=f"floating-point type (default {d.dtype})")
    add("--threads", type=int_arg("threads", 1), help="the most threads (cpu lanes) (default: one per core)")
    add("--backend", choices=("auto",) + tuple(BACKENDS), default="auto",
        help="compute backend (default auto: the best one that runs here)")
    add("--refresh", action="store_true", help="measure again instead of taking remembered choices")
    parser.set_defaults(run=_run_tune)


def _run_tune(args) -> None:
    from ltexec.backends import get_backend
    from ltexec.tuning import cache_path, remembered

    path = cache_path()
    print(f"tuning cache: {path if path is not None else 'off (LTEXEC_TUNE_CACHE=off): nothing is remembered'}")
    options = {} if args.threads is None else {"threads": args.threads}
    backend = get_backend(args.backend, args.dtype, **options)
    tuning = backend.tune(args.window, args.batch, args.hidden, refresh=args.refresh)
    print(f"{backend.name}, window {args.window}, batch {args.batch}, {args.hidden} units, {args.dtype}: "
          + (tuning.describe() if tuning is not None else "nothing to choose on this backend"))
    entries = remembered()
    if args.refresh:                                     # measure every other remembered workload again too
        for entry in entries:
            w = entry["workload"]
            if (entry["describe"], w.get("threads")) != (getattr(tuning, "workload", None), backend.threads):
                get_backend(w["backend"], w["dtype"], threads=w["threads"]).tune(
                    w["window"], w["batch"], w["hidden"], refresh=True)
        entries = remembered()
    print(f"remembered for this machine: {len(entries)}")
    for entry in entries:
        times = ", ".join(f"{name} {ms:.2f} ms" for name, ms in entry["timings_ms"].items())
        threads = entry["workload"].get("threads")
        print(f"  {entry['describe']}{'' if threads is None else f', threads {threads}'} ({entry['date']}): "
              f"{' '.join(f'{k}={v}' for k, v in entry['choice'].items())}; {times}")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="ltexec",
        description="Learning to Execute: sample the paper's tasks, train and evaluate LSTMs "
                    "that predict what a program prints.")
    parser.add_argument("--version", action="version", version=f"ltexec {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineParser)
    subparsers.required = True
    _add_sample(subparsers)
    _add_train(subparsers)
    _add_sweep(subparsers)
    _add_compare(subparsers)
    _add_plot(subparsers)
    _add_predict(subparsers)
    _add_tune(subparsers)
    from ltexec.npi.cli import add_npi
    add_npi(subparsers, checked_arg, int_arg)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["ltexec", *argv])      # what a result records as the command that made it
    try:
        args.run(args)
    except ValueError as error:
        print(f"ltexec {args.command}: error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        if not type(error).__module__.startswith("ltexec."):
            raise
        print(f"ltexec {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ltexec {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        sys.stderr.close()
    return 0
