"""``ltexec npi``: ``train`` an NPI on addition traces, ``run`` a trained one on two numbers.

``ltexec npi run --run DIR A B`` prints the execution as the model runs it:
one line per core step, indented by the depth of the program taking it (its
call, what it saw under the four pointers, what it decided), the pad after
every write; ``--quiet`` prints only the sum the model wrote, on one line.
"""

from __future__ import annotations

from pathlib import Path

from ltexec.npi.addition import ACT, BLANK, PROGRAMS, PTR, ROWS, WRITE, parse_operand
from ltexec.npi.programs import Call, CoreStep


def add_npi(subparsers, checked_arg, int_arg) -> None:
    """The ``npi`` command and its two subcommands, on the ``ltexec`` parser's ``subparsers``."""
    from ltexec.backends import BACKENDS
    from ltexec.npi.model import PRESETS
    from ltexec.npi.train import NPITrainConfig
    from ltexec.validation import check_float

    npi = subparsers.add_parser("npi", help="Neural Programmer-Interpreters: train on addition traces, run one",
                                description="Neural Programmer-Interpreters (Reed & de Freitas, 2016) on ltexec's "
                                            "backends: an LSTM core that calls programs and acts on a scratch pad.")
    commands = npi.add_subparsers(dest="npi_command", metavar="COMMAND", parser_class=type(npi))
    commands.required = True
    d = NPITrainConfig()
    train = commands.add_parser(
        "train", help="train an NPI on addition, or resume a run",
        description="Train on hierarchical execution traces of additions of 1 to --max-digits digits until every "
                    "held-out addition is right at two evaluations in a row, or the time or step budget runs "
                    "out. The run (metrics.jsonl, checkpoint.npz) is kept in --out.")
    add = train.add_argument
    add("--out", required=True, metavar="DIR", help="the run's directory")
    add("--resume", action="store_true", help="continue the run whose checkpoint is in --out")
    add("--max-digits", type=int_arg("max-digits", 1), default=d.max_digits,
        help=f"training lengths 1 to this many digits (default {d.max_digits})")
    add("--preset", choices=tuple(PRESETS), default=d.preset, help=f"model size (default {d.preset}: 2x256 core)")
    add("--minutes", type=checked_arg("minutes", check_float, 0.0, None, False), default=d.minutes,
        help=f"training time cap (default {d.minutes:g})")
    add("--steps", type=int_arg("steps", 0), default=d.steps, help="step cap (default 0: none)")
    add("--seed", type=int_arg("seed", 0), default=d.seed, help=f"random seed (default {d.seed})")
    add("--backend", choices=("auto",) + tuple(BACKENDS), default=d.backend,
        help="compute backend (default auto: the best one that runs here)")
    add("--eval-every", type=int_arg("eval-every", 1), default=d.eval_every,
        help=f"steps between evaluations and checkpoints (default {d.eval_every})")
    train.set_defaults(run=run_train)

    run = commands.add_parser(
        "run", help="run a trained NPI on two numbers",
        description="Load a trained run and let it add A and B by itself, printing every core step (calls "
                    "indented by depth) and the pad after each write; --quiet prints only the sum.")
    run.add_argument("a", metavar="A", type=checked_arg("A", parse_operand), help="a non-negative integer")
    run.add_argument("b", metavar="B", type=checked_arg("B", parse_operand), help="a non-negative integer")
    run.add_argument("--run", dest="run_dir", required=True, metavar="DIR", help="a trained run's directory")
    run.add_argument("--quiet", action="store_true", help="print only the sum the model wrote")
    run.add_argument("--backend", choices=("auto",) + tuple(BACKENDS), default=None,
                     help="compute backend (default: the run's)")
    run.set_defaults(run=run_model)


def run_train(args) -> None:
    from ltexec.npi.train import NPITrainConfig, NPITrainer, write_summary
    from ltexec.validation import check_output_dir

    out = check_output_dir("--out", args.out)
    config = NPITrainConfig(max_digits=args.max_digits, preset=args.preset, minutes=args.minutes, steps=args.steps,
                            seed=args.seed, backend=args.backend, eval_every=args.eval_every)
    if not args.resume and (out / "checkpoint.npz").exists():
        raise ValueError(f"{out} already holds a checkpoint: pass --resume to continue it, or choose another --out")
    summary = NPITrainer(config, out, resume=args.resume).run()
    write_summary(out / "summary.json", summary)


def run_model(args) -> None:
    from ltexec.npi.execute import MAX_OPERAND_DIGITS, execute
    from ltexec.npi.train import load_trained_npi

    for name, operand in (("A", args.a), ("B", args.b)):
        if len(operand) > MAX_OPERAND_DIGITS:
            raise ValueError(f"{name} has {len(operand)} digits, more than the {MAX_OPERAND_DIGITS} a run takes")
    if Path(args.run_dir).exists() and not Path(args.run_dir).is_dir():
        raise ValueError(f"--run {args.run_dir} is not a directory")
    model, _ = load_trained_npi(args.run_dir, args.backend)
    printer = None if args.quiet else _print_step
    [run] = execute(model, [(args.a, args.b)], on_step=printer)
    if args.quiet:
        print(run.output or "(nothing written)")
        return
    verdict = "right" if run.correct else "WRONG"
    print(f"{args.a} + {args.b} = {run.output or '(nothing written)'} ({verdict}, {run.steps} core steps"
          + (f"; {run.failure}" if run.failure else "") + ")")


def _print_step(index: int, run, step: CoreStep, depth: int, pad) -> None:
    """One core step as a line (and the pad after a write), as ``ltexec npi run`` shows them."""
    indent = "  " * (depth - 1)
    seen = " ".join("_" if v == BLANK else str(v) for v in step.observation)
    print(f"{indent}{describe(step.call)} sees [{seen}] -> {'end' if step.made is None else describe(step.made)}")
    if step.made is not None and step.made.program == ACT and step.made.args[0] == WRITE:
        for line in pad.render():
            print(f"{indent}    {line}")


def describe(call: Call) -> str:
    """A call as text: ``ADD1``, ``ACT WRITE(out, 7)``, ``ACT PTR(carry, left)``."""
    name = PROGRAMS[call.program].name
    if call.program != ACT:
        return name
    kind, row, value = call.args
    row_name = ROWS[row] if row < len(ROWS) else f"row {row}"
    if kind == WRITE:
        return f"ACT WRITE({row_name}, {value})"
    if kind == PTR:
        return f"ACT PTR({row_name}, {'left' if value == 0 else 'right' if value == 1 else value})"
    return f"ACT{tuple(call.args)}"

