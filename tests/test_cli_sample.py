"""``ltexec sample``: JSON Lines of a task's examples, or of what a curriculum feeds at a level."""

import json

import pytest

from ltexec.cli import main


def run(argv, capsys) -> tuple[int, list[dict], str]:
    try:
        code = main(["sample", *argv])
    except SystemExit as stop:          # argparse's own errors
        code = stop.code
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_prints_one_example_per_line_with_every_key(capsys):
    code, lines, _ = run(["--task", "programs", "--length", "2", "--nesting", "2", "--count", "3"], capsys)
    assert code == 0 and len(lines) == 3
    assert all(set(line) == {"task", "input", "target", "length", "nesting", "split"} for line in lines)
    assert {(line["length"], line["nesting"]) for line in lines} == {(2, 2)}


def test_a_curriculum_at_a_level_feeds_what_its_strategy_draws(capsys):
    args = ["--task", "programs", "--length", "6", "--nesting", "3", "--count", "300", "--seed", "4"]
    _, naive, _ = run([*args, "--strategy", "naive", "--level", "2,1"], capsys)
    assert {(line["length"], line["nesting"]) for line in naive} == {(2, 1)}
    _, baseline, _ = run([*args, "--strategy", "baseline", "--level", "2,1"], capsys)
    assert {(line["length"], line["nesting"]) for line in baseline} == {(6, 3)}
    _, combined, _ = run([*args, "--strategy", "combined", "--level", "1,1"], capsys)
    lengths = [line["length"] for line in combined]
    assert 0.45 < lengths.count(1) / len(lengths) < 0.8 and max(lengths) > 1
    _, again, _ = run([*args, "--strategy", "combined", "--level", "1,1"], capsys)
    assert again == combined


def mixed_lengths(lines) -> int:
    """How many additions hold a number of at most 2 digits beside one of 6."""
    operands = [[int(n) for n in line["input"][len("print("):-1].split("+")] for line in lines]
    return sum(min(pair) <= 10 and max(pair) > 10 ** 5 for pair in operands)


def test_only_per_number_draws_mix_lengths_within_one_example(capsys):
    args = ["--task", "addition", "--length", "6", "--count", "400", "--strategy", "mix"]
    _, per_example, _ = run([*args, "--draw", "example"], capsys)
    _, per_number, _ = run(args, capsys)
    assert mixed_lengths(per_example) == 0 and mixed_lengths(per_number) >= 5    # expected: 0 and ~22


@pytest.mark.parametrize("argv, message", [
    (["--strategy", "blend"], "argument --strategy: invalid choice: 'blend'"),
    (["--strategy", "mix", "--level", "2"], "argument --level: level must be LENGTH,NESTING, e.g. 2,1; got '2'"),
    (["--strategy", "mix", "--level", "a,1"], "argument --level: level length must be an integer"),
    (["--strategy", "mix", "--level", "4,1"], "level length must be an integer in 1..3, got 4"),
    (["--level", "1,1"], "--level needs --strategy"),
    (["--strategy", "mix", "--draw", "program"], "argument --draw: invalid choice: 'program'"),
])
def test_bad_curriculum_options_exit_2_with_one_line(argv, message, capsys):
    code, lines, err = run(["--task", "programs", "--length", "3", *argv], capsys)
    assert code == 2 and not lines
    assert len(err.strip().splitlines()) == 1 and message in err, err
