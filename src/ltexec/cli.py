"""The ``ltexec`` command line: ``ltexec sample`` (and the training commands).

Every bad argument ends the command with exit status 2 and one line naming the
argument and the allowed values; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from ltexec import __version__
from ltexec.validation import check_int


class _OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line on stderr and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def int_arg(name: str, minimum: int | None = None, maximum: int | None = None):
    """An argparse ``type`` that validates with :func:`check_int` and reports its message."""

    def parse(text: str) -> int:
        try:
            return check_int(name, text, minimum, maximum)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = name
    return parse


def _add_sample(subparsers) -> None:
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
    parser.set_defaults(run=_run_sample)


def _run_sample(args) -> None:
    from ltexec.sampler import sample

    examples = sample(args.task, args.length, nesting=args.nesting, count=args.count,
                      seed=args.seed, split=args.split)
    out = sys.stdout
    for example in examples:
        out.write(json.dumps(example.to_dict()) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="ltexec",
        description="Learning to Execute: sample the paper's tasks, train and evaluate LSTMs "
                    "that predict what a program prints.")
    parser.add_argument("--version", action="version", version=f"ltexec {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineParser)
    subparsers.required = True
    _add_sample(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except ValueError as error:
        print(f"ltexec {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ltexec {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        sys.stderr.close()
    return 0
