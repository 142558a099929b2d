"""examples/train_addition.py, the first thing a new user runs: its summary line and its errors."""

import importlib.util
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_run import TINY, quiet

from ltexec.config import TrainConfig
from ltexec.sampler import sample
from ltexec.trainer import Trainer

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_addition.py"
SUMMARY_KEYS = {"task", "length", "backend", "minutes", "chars_per_s", "teacher_forced_acc", "exact_match_acc"}
ORDER = ["task", "length", "backend", "minutes", "steps", "chars_per_s", "teacher_forced_acc", "exact_match_acc",
         "test_examples", "seed", "config", "stopped", "spikes", "first_target_step", "first_target_minutes",
         "target_step", "target_minutes", "backend_choices"]
"""Every key of the summary line, in order: tools read it, so keys are only ever added at the end."""
QUICK = ("--length", "1", "--hidden", "8", "--eval-every", "20", "--backend", "numpy")


def run(*args, timeout=180, cwd=None):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


def try_it(line: str) -> tuple[str, str]:
    """The run directory and the program of the line that shows how to try the trained model."""
    words = shlex.split(line)
    assert words[:4] == ["try", "it:", "ltexec", "predict"] and words[4] == "--run" and len(words) == 7, line
    return words[5], words[6]


def test_a_short_run_ends_with_one_json_summary_line(tmp_path):
    result = run("--minutes", "0.3", "--length", "2", "--hidden", "16", "--eval-every", "50",
                 "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert SUMMARY_KEYS <= set(summary) and list(summary) == ORDER
    assert (summary["task"], summary["length"], summary["config"]["hidden"]) == ("addition", 2, 16)
    assert 0.0 <= summary["teacher_forced_acc"] <= 1.0 and 0.0 <= summary["exact_match_acc"] <= 1.0
    assert summary["test_examples"] == 2000
    assert summary["steps"] > 0 and summary["chars_per_s"] > 0
    assert any(line.startswith("  target:") for line in lines)   # sample predictions were shown
    assert (tmp_path / "run" / "metrics.jsonl").is_file() and (tmp_path / "run" / "checkpoint.npz").is_file()
    assert try_it(lines[-2])[0] == str(tmp_path / "run")
    assert re.fullmatch(r"print\(\d{1,2}\+\d{1,2}\)", try_it(lines[-2])[1])
    assert summary["stopped"].startswith("reached the") and summary["spikes"] == 0
    assert summary["target_step"] is None and summary["target_minutes"] is None     # without --stop-at-target


def test_stop_at_target_confirms_on_the_final_test_set_and_keeps_the_run_under_runs(tmp_path):
    # A budget far beyond the first evaluation (step 20), where the zero targets stop the run, so a slow
    # or busy machine still gets there.
    result = run(*QUICK, "--minutes", "3", "--stop-at-target", "--target-tf", "0", "--target-exact", "0",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert list(summary) == ORDER and summary["stopped"] == "target met"
    assert summary["target_step"] == summary["first_target_step"] == summary["steps"] == 20
    assert 0 <= summary["target_minutes"] <= summary["minutes"]      # minutes to 0.01: a fast machine reports 0.0
    assert summary["test_examples"] == 2000
    run_dir, program = try_it(lines[-2])
    assert re.fullmatch(r"runs/addition-L1-seed0-\d{8}-\d{6}", run_dir)
    assert (tmp_path / run_dir / "checkpoint.npz").is_file()
    assert re.fullmatch(r"print\(\d{1,2}\+\d{1,2}\)", program)


def test_a_target_the_final_test_set_does_not_confirm_does_not_stop_the_run():
    spec = importlib.util.spec_from_file_location("train_addition", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    trainer = Trainer(TrainConfig(**TINY), log=quiet)            # untrained: far below the target
    examples = sample("addition", 2, count=20, seed=1, split="test")
    hit = {"step": 5, "test_char_acc": 1.0, "test_exact_acc": 1.0}
    watching = script.Target(trainer, examples, 0.99, 0.95, confirm=False, started=time.perf_counter())
    assert watching(hit) is None and watching.first[0] == 5 and watching.confirmed is None
    confirming = script.Target(trainer, examples, 0.99, 0.95, confirm=True, started=time.perf_counter())
    assert confirming({**hit, "test_exact_acc": 0.9}) is None and confirming.first is None
    assert confirming(hit) is None and confirming.confirmed is None
    assert confirming.summary() == {"first_target_step": 5, "first_target_minutes": confirming.first[1],
                                    "target_step": None, "target_minutes": None}


@pytest.mark.parametrize("args, message", [
    (("--length", "0"), "length must be an integer >= 1, got 0"),
    (("--minutes", "-1"), "minutes must be a finite number > 0.0, got -1"),
    (("--backend", "gpu"), "backend must be one of"),
    (("--out", __file__), f"--out {__file__} is a file, not a directory"),
    (("--target-tf", "2"), "target-tf must be a finite number >= 0.0 and <= 1.0, got 2"),
    (("--spike-factor", "0.5"), "spike_factor must be a finite number > 1.0"),
])
def test_bad_arguments_end_with_exit_2_and_one_line(args, message):
    result = run(*args, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr, result.stderr
