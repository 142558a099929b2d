"""examples/train_addition.py, the first thing a new user runs: its summary line and its errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_addition.py"
SUMMARY_KEYS = {"task", "length", "backend", "minutes", "chars_per_s", "teacher_forced_acc", "exact_match_acc"}


def run(*args, timeout=180):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def test_a_short_run_ends_with_one_json_summary_line(tmp_path):
    result = run("--minutes", "0.3", "--length", "2", "--hidden", "16", "--eval-every", "50",
                 "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert SUMMARY_KEYS <= set(summary)
    assert (summary["task"], summary["length"], summary["config"]["hidden"]) == ("addition", 2, 16)
    assert 0.0 <= summary["teacher_forced_acc"] <= 1.0 and 0.0 <= summary["exact_match_acc"] <= 1.0
    assert summary["test_examples"] == 2000
    assert summary["steps"] > 0 and summary["chars_per_s"] > 0
    assert any(line.startswith("  target:") for line in lines)   # sample predictions were shown
    assert (tmp_path / "run" / "metrics.jsonl").is_file() and (tmp_path / "run" / "checkpoint.npz").is_file()


@pytest.mark.parametrize("args, message", [
    (("--length", "0"), "length must be an integer >= 1, got 0"),
    (("--minutes", "-1"), "minutes must be a finite number > 0.0, got -1"),
    (("--backend", "gpu"), "backend must be one of"),
    (("--out", __file__), f"--out {__file__} is a file, not a directory"),
])
def test_bad_arguments_end_with_exit_2_and_one_line(args, message):
    result = run(*args, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr, result.stderr
