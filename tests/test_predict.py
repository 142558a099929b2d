"""Tests of ``ltexec predict``: the decoding is evaluation's, the output says what the model answered and
whether it is right, and bad input ends with exit status 2 and one line."""

import io
import json

import numpy as np
import pytest
from tiny_run import TINY, quiet

from ltexec import vocab
from ltexec.cli import main
from ltexec.config import TrainConfig, build_model
from ltexec.evaluation import evaluate
from ltexec.predict import clean_program, decode_with_probabilities, predict, split_programs, warmup_prefix
from ltexec.sampler import Example, sample
from ltexec.seeds import derive_seed
from ltexec.trainer import train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(**TINY, max_steps=20), out_dir=out, log=quiet)
    return out


def run_cli(argv, capsys, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def untrained(**fields):
    config = TrainConfig(**{**TINY, **fields})
    return build_model(config), config


def test_decoding_chooses_greedy_decodes_ids_and_keeps_their_probabilities():
    model, _ = untrained()
    prompt = vocab.prompt_tokens("print(12+34)")
    ids, probabilities = decode_with_probabilities(model, prompt, max_answer_len=9)
    expected = model.greedy_decode(prompt[:, None], np.array([len(prompt)]), 9, vocab.TERMINATOR_ID)[0]
    assert ids == list(expected)
    assert len(probabilities) == len(ids) and all(0 < p <= 1 for p in probabilities)


@pytest.mark.parametrize("mode, transform", [("stream", "both"), ("examples", "reverse")])
def test_the_model_reads_a_program_as_evaluation_gives_it(mode, transform):
    """Same transform, and in stream mode the same kind of warm-up example before the program."""
    model, config = untrained(mode=mode, transform=transform, task="programs", nesting=2, init_scale=1.0)
    program = "a=12\nfor x in range(3):a+=5\nprint(a)"
    [prediction] = predict(model, config, [program])
    warm = sample("programs", config.length, 2, count=1, seed=derive_seed(config.seed, "predict"), split="test")[0]
    asked = Example("programs", program, "27", config.length, 2, "test")
    evaluated = evaluate(model, [warm, asked], transform, warmup=config.warmup).predictions[1]
    decoded = "".join(char for char, _ in prediction.probabilities)
    assert evaluated and decoded.startswith(evaluated)          # evaluation stops earlier: target + 2
    assert prediction.truth == "27"
    expected_prefix = vocab.encode_example(warm.input, warm.target, transform)[0] if config.warmup else []
    assert np.array_equal(warmup_prefix(config), expected_prefix)


def test_predict_prints_answer_probabilities_truth_and_verdict(run_dir, capsys):
    code, out, err = run_cli(["predict", "--run", str(run_dir), "print(51+30)", "12"], capsys)
    assert code == 0 and err == ""
    first, second = out.rstrip("\n").split("\n\n")
    program, answer, truth = first.split("\n")
    assert program == "print(51+30)"
    assert answer.startswith("answer: ") and (" .:" in answer or "no terminator" in answer)
    assert truth.startswith("truth:  81 ") and truth.endswith(("right", "wrong"))
    assert second.split("\n")[2] == "truth:  unknown (the program must end with print(expression))"


def test_json_reads_blank_line_separated_programs_from_stdin(run_dir, capsys, monkeypatch):
    stdin = "print(1+2)\n\n\n  a=4\n  print(a+2)  \n \n"
    code, out, _ = run_cli(["predict", "--run", str(run_dir), "--json"], capsys, stdin, monkeypatch)
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["program"] for r in records] == ["print(1+2)", "a=4\nprint(a+2)"]
    assert [r["truth"] for r in records] == ["3", "6"]
    for r in records:
        chars = "".join(char for char, _ in r["probabilities"])
        assert chars == r["answer"] + ("." if r["finished"] else "")
        assert r["correct"] == (r["finished"] and r["answer"] == r["truth"])
        assert r["no_truth"] is None


def test_splitting_and_cleaning_programs():
    assert split_programs("a\n\n \nb\nc\n") == ["a", "b\nc"]
    assert split_programs("\n \n") == []
    assert clean_program("  a=1  \n  print(a)\n\n", 1) == "a=1\nprint(a)"


@pytest.mark.parametrize("argv, message", [
    (["--run", "{file}", "print(1)"], "--run {file} is not a directory"),
    (["--run", "{missing}", "print(1)"], "no checkpoint at {missing}/checkpoint.npz"),
    (["--run", "{empty}", "print(1)"], "no checkpoint at {empty}/checkpoint.npz"),
    (["--run", "{corrupt}", "print(1)"], "checkpoint {corrupt}/checkpoint.npz is corrupt or not an ltexec "
                                         "checkpoint (not an .npz archive)"),
    (["--run", "{run}", "print(1)", " \n"], "program 2 is empty"),
    (["--run", "{run}", "print(1!)"], "program 1 'print(1!)' has character '!' outside the model's vocabulary "
                                      "(digits, a-z, space, newline and ()+-*=<>:)"),
    (["--run", "{run}", "print(X)#"], "program 1 'print(X)#' has characters '#', 'X' outside the model's "
                                      "vocabulary (digits, a-z, space, newline and ()+-*=<>:)"),
    (["--run", "{run}"], "no program given: standard input is empty (separate programs with a blank line)"),
])
def test_bad_input_ends_with_exit_2_and_one_line(argv, message, run_dir, tmp_path, capsys, monkeypatch):
    paths = {"file": tmp_path / "a-file", "missing": tmp_path / "missing", "empty": tmp_path / "empty",
             "corrupt": tmp_path / "corrupt", "run": run_dir}
    paths["file"].write_text("not a run")
    paths["empty"].mkdir()
    paths["corrupt"].mkdir()
    (paths["corrupt"] / "checkpoint.npz").write_text("not an archive")
    code, out, err = run_cli(["predict"] + [arg.format(**paths) for arg in argv], capsys, "\n \n", monkeypatch)
    assert code == 2 and out == ""
    assert err == f"ltexec predict: error: {message.format(**paths)}\n"
