"""Training the NPI: exact resume, Ctrl-C, settings refused by name, the commands and the example.

Small runs (the ``small`` preset, numbers of 1 to 3 digits, tens of steps):
what is checked is the machinery, not how well it learns (that is a
benchmark over seeds: benchmarks/npi_vs_lte.py).
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ltexec.checkpoint import CheckpointError
from ltexec.cli import main as ltexec
from ltexec.npi.train import METRICS, NPITrainConfig, NPITrainer, held_out_problems

ROOT = Path(__file__).resolve().parents[2]
QUICK = dict(preset="small", max_digits=3, eval_every=10, held_out=10, backend="numpy")


def quiet(line):
    pass


def timeless(history):
    return [{k: v for k, v in record.items() if k not in ("elapsed_s", "core_steps_per_s")} for record in history]


def test_a_resumed_run_continues_exactly_as_an_uninterrupted_one(tmp_path):
    straight = NPITrainer(NPITrainConfig(**QUICK, steps=30, stop_at_target=False), tmp_path / "a", log=quiet)
    straight.run()
    first = NPITrainer(NPITrainConfig(**QUICK, steps=20, stop_at_target=False), tmp_path / "b", log=quiet)
    first.run()
    resumed = NPITrainer(NPITrainConfig(**QUICK, steps=30, stop_at_target=False), tmp_path / "b", resume=True,
                         log=quiet)
    assert resumed.step == 20
    resumed.run()
    for name, array in straight.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[name], array, err_msg=name)
    assert timeless(resumed.history) == timeless(straight.history)
    assert resumed.seen == straight.seen == {"traces": 240, "core_steps": resumed.seen["core_steps"]}
    lines = (tmp_path / "b" / METRICS).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [10, 20, 30]


def test_ctrl_c_finishes_the_step_saves_and_stops(tmp_path):
    trainer = NPITrainer(NPITrainConfig(**QUICK, stop_at_target=False), tmp_path, log=quiet)
    step = trainer.train_step

    def interrupted_at_the_third():
        figures = step()
        if trainer.step == 2:
            trainer._interrupt(2, None)                  # what SIGINT calls
        return figures

    trainer.train_step = interrupted_at_the_third
    summary = trainer.run()
    assert summary["stopped"] == "interrupted (checkpoint saved)" and summary["steps"] == 3
    assert NPITrainer(NPITrainConfig(**QUICK), tmp_path, resume=True, log=quiet).step == 3
    with pytest.raises(KeyboardInterrupt):
        trainer._interrupt(2, None)                      # a second Ctrl-C stops at once


def test_a_resume_with_other_settings_is_refused_naming_them(tmp_path):
    NPITrainer(NPITrainConfig(**QUICK, steps=10), tmp_path, log=quiet).run()
    with pytest.raises(CheckpointError, match=r"other settings: lr=0.5 \(now 0.1\), max_digits=3 \(now 4\)"):
        NPITrainer(NPITrainConfig(**{**QUICK, "max_digits": 4}, lr=0.1), tmp_path, resume=True, log=quiet)
    NPITrainer(NPITrainConfig(**QUICK, steps=20, minutes=1), tmp_path, resume=True, log=quiet)   # the budget may


@pytest.mark.parametrize("field, value, message", [
    ("max_digits", 0, "max_digits must be an integer >= 1, got 0"), ("preset", "huge", "preset must be one of"),
    ("momentum", 1.0, "momentum must be in [0, 1), got 1.0"), ("lr", -1, "lr must be a finite number > 0"),
    ("dtype", "float16", "dtype must be one of float32, float64; got 'float16'")])
def test_bad_settings_are_named(field, value, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        NPITrainConfig(**{field: value})


def test_held_out_problems_come_from_their_own_stream():
    config = NPITrainConfig(max_digits=5, held_out=50)
    trainer = NPITrainer(config, "unused", log=quiet)
    assert trainer.held_out == held_out_problems(config)
    drawn = [trainer.stream.problem() for _ in range(50)]
    assert drawn != trainer.held_out and all(1 <= max(len(a), len(b)) <= 5 for a, b in drawn + trainer.held_out)


def test_the_commands_train_and_run(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["npi", "train", "--out", str(out), "--preset", "small", "--max-digits", "2", "--steps", "20",
            "--eval-every", "10", "--backend", "numpy"]
    assert ltexec(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["config"]["preset"] == "small"
    assert "ltexec npi train: addition of 1 to 2 digits, 1x64 core (small)" in capsys.readouterr().out
    assert ltexec(args) == 2
    assert "already holds a checkpoint: pass --resume" in capsys.readouterr().err
    assert ltexec(["npi", "run", "--run", str(out), "12", "34", "--quiet"]) == 0
    answer = capsys.readouterr().out
    assert len(answer.splitlines()) == 1 and (answer.strip().isdigit() or answer.strip() == "(nothing written)")
    assert ltexec(["npi", "run", "--run", str(out), "12", "34"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ADD sees [2 4 _ _] -> ") and lines[-1].startswith("12 + 34 = ")


@pytest.mark.parametrize("operands, message", [
    (["-5", "7"], "argument A: A must be a non-negative integer written in digits, got '-5'"),
    (["5", "7x"], "argument B: B must be a non-negative integer written in digits, got '7x'"),
    (["1" * 10_001, "7"], "A has 10001 digits, more than the 10000 a run takes")])
def test_bad_operands_are_one_line_and_exit_2(tmp_path, capsys, operands, message):
    try:
        status = ltexec(["npi", "run", "--run", str(tmp_path), *operands])
    except SystemExit as exit_:                          # argparse's own error exit
        status = exit_.code
    assert status == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1


def test_the_example_trains_evaluates_and_ends_with_a_json_line(tmp_path):
    out = tmp_path / "example"
    done = subprocess.run([sys.executable, "examples/npi_addition.py", "--preset", "small", "--max-digits", "2",
                           "--minutes", "0.05", "--examples", "3", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    figures = json.loads(lines[-1])
    assert set(figures["exact_by_digits"]) == {"1", "2", "4", "10", "100", "1000"}
    assert lines[-2].startswith(f"watch it add: ltexec npi run --run {out} ")
    assert (out / "checkpoint.npz").exists() and (out / "summary.json").exists()
