"""The trainer: exact resume, checkpoints, divergence, interrupts, and that it learns."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from tiny_run import TINY, metrics, quiet

from ltexec.checkpoint import CHECKPOINT_NAME, load_checkpoint
from ltexec.config import TrainConfig
from ltexec.trainer import Trainer, TrainingDiverged, open_run, train


@pytest.mark.parametrize("mode, momentum", [("stream", 0.0), ("stream", 0.9), ("examples", 0.5)])
def test_resume_continues_exactly(tmp_path, mode, momentum):
    config = dict(TINY, mode=mode, momentum=momentum, strategy="combined")
    straight = tmp_path / "straight"
    train(TrainConfig(**config, max_steps=20), out_dir=straight, log=quiet)
    split = tmp_path / "split"
    train(TrainConfig(**config, max_steps=10), out_dir=split, log=quiet)
    train(TrainConfig(**config, max_steps=20), out_dir=split, resume=True, log=quiet)

    def comparable(records):
        return [{k: v for k, v in r.items() if k not in ("elapsed_s", "chars_per_s")} for r in records]

    assert len(metrics(straight)) == 4
    assert comparable(metrics(split)) == comparable(metrics(straight))
    a, _ = load_checkpoint(straight / CHECKPOINT_NAME)
    b, _ = load_checkpoint(split / CHECKPOINT_NAME)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_open_run_starts_a_new_run_from_the_options_given(tmp_path):
    trainer = open_run({"task": "copy", "length": 3, "hidden": 8, "backend": "numpy"}, tmp_path / "run", log=quiet)
    assert (trainer.step, trainer.history, trainer.out_dir) == (0, [], tmp_path / "run")
    assert (trainer.config.task, trainer.config.hidden, trainer.config.layers) == ("copy", 8, TrainConfig().layers)
    assert not (tmp_path / "run").exists()                      # nothing is written before the first evaluation
    with pytest.raises(ValueError, match="unknown training option\\(s\\): hiddn"):
        open_run({"hiddn": 8})


def test_existing_checkpoint_is_not_overwritten_without_resume(tmp_path):
    train(TrainConfig(**TINY, max_steps=5), out_dir=tmp_path, log=quiet)
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        train(TrainConfig(**TINY, max_steps=5), out_dir=tmp_path, log=quiet)


def test_open_run_resumes_with_the_same_configuration_and_a_new_budget(tmp_path):
    train(TrainConfig(**TINY, max_steps=5), out_dir=tmp_path, log=quiet)
    lines = []
    trainer = open_run(TrainConfig(**TINY, max_steps=9), tmp_path, resume=True, log=lines.append)
    assert (trainer.step, trainer.config.max_steps, len(trainer.history)) == (5, 9, 1)
    assert lines == [f"resumed from {tmp_path / CHECKPOINT_NAME} at step 5"]
    from_options = open_run({"minutes": 2.0}, tmp_path, resume=True, log=quiet)    # the rest from the checkpoint
    assert (from_options.config.hidden, from_options.config.minutes, from_options.config.max_steps) == (16, 2.0, 5)


def test_resume_refuses_a_changed_option(tmp_path):
    train(TrainConfig(**TINY, max_steps=5), out_dir=tmp_path, log=quiet)
    with pytest.raises(ValueError, match="hidden=32 does not match .* hidden=16"):
        open_run({"hidden": 32}, tmp_path, resume=True, log=quiet)
    with pytest.raises(ValueError, match="lr=0.25 does not match .* lr=0.5; leave it out to resume"):
        open_run(TrainConfig(**TINY, lr=0.25), tmp_path, resume=True, log=quiet)
    with pytest.raises(ValueError, match="resume needs the run's output directory"):
        open_run(TrainConfig(**TINY), resume=True)


def test_divergence_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    trainer = Trainer(TrainConfig(**TINY, max_steps=50), out_dir=tmp_path, log=quiet)
    real = trainer.model.loss_and_grads

    def poisoned(x, y, mask, state):
        result = real(x, y, mask, state)
        if trainer.step >= 7:
            result.grads["Wy"][0, 0] = np.nan
        return result

    monkeypatch.setattr(trainer.model, "loss_and_grads", poisoned)
    before = None
    with pytest.raises(TrainingDiverged, match=r"^the gradient norm was not finite in 3 of steps 6-10, which left "
                                               r"the parameters unchanged \(learning rate 0.5\); "
                                               r"the last good checkpoint is ") as info:
        trainer.run()
    assert CHECKPOINT_NAME in str(info.value)
    _, meta = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert meta["step"] == 5
    arrays, _ = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert all(np.isfinite(v).all() for k, v in arrays.items() if k.startswith("param/"))
    assert before is None


def test_lr_decays_at_target_and_training_stops_below_min_lr(tmp_path):
    config = TrainConfig(**dict(TINY, length=1), strategy="baseline", lr=0.5, min_lr=0.3, max_steps=10_000)
    trainer = Trainer(config, log=quiet)
    trainer.curriculum.update = lambda val_acc, train_acc: "decay"
    summary = trainer.run()
    assert trainer.optimizer.lr == pytest.approx(0.5 * 0.8 ** 3)      # 0.4, 0.32 go on; 0.256 < 0.3 stops
    assert "learning rate fell below" in summary["stopped"]
    assert trainer.step == 15


def test_the_summary_names_each_advance_and_the_level_reached(tmp_path):
    config = TrainConfig(**dict(TINY, length=3), strategy="combined", max_steps=20)
    trainer = Trainer(config, tmp_path, log=quiet)
    real_update = trainer.curriculum.update
    trainer.curriculum.update = lambda val_acc, train_acc: real_update(1.0, train_acc)   # always above 95%
    summary = trainer.run()
    assert summary["advances"] == [{"step": 5, "to": [2, 1]}, {"step": 10, "to": [3, 1]}]
    assert summary["level"] == [3, 1]
    assert [r.get("advanced_to") for r in metrics(tmp_path)] == [[2, 1], [3, 1], None, None]
    assert Trainer(TrainConfig(**dict(TINY, length=3), strategy="combined", max_steps=5),
                   log=quiet).run()["advances"] == []


def test_stop_when_sees_every_evaluation_and_can_stop_the_run(tmp_path):
    seen = []

    def stop_when(record):
        seen.append(record["step"])
        return "enough" if record["step"] >= 10 else None

    summary = Trainer(TrainConfig(**TINY, max_steps=50), tmp_path, log=quiet).run(stop_when)
    assert seen == [5, 10] and (summary["stopped"], summary["steps"]) == ("enough", 10)
    assert [record["step"] for record in metrics(tmp_path)] == [5, 10]
    _, meta = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert meta["step"] == 10


def test_training_learns_the_copy_task():
    """End to end: a small model learns to copy three digits (fails if the gradients are wrong).

    Three digits, not one or two: with 10 or 100 strings the held-out split can
    only be memorised, never generalised to.
    """
    config = TrainConfig(task="copy", length=3, hidden=32, layers=1, batch=16, mode="examples",
                         strategy="baseline", lr=0.5, backend="numpy", eval_every=250,
                         eval_examples=100, max_steps=1000, seed=1)
    trainer = Trainer(config, log=quiet)
    summary = trainer.run()
    assert trainer.history[0]["test_char_acc"] < 0.8
    assert summary["teacher_forced_acc"] > 0.9
    assert summary["exact_match_acc"] > 0.7


def test_cli_train_validates_and_runs(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "ltexec", "train", "--hidden", "0"],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "hidden must be an integer >= 1, got 0" in bad.stderr
    out = tmp_path / "run"
    args = [sys.executable, "-m", "ltexec", "train", "--task", "addition", "--length", "1", "--hidden", "8",
            "--layers", "1", "--batch", "4", "--window", "10", "--eval-every", "3", "--eval-examples", "4",
            "--backend", "numpy", "--max-steps", "6", "--out", str(out)]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 6 and summary["task"] == "addition"
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode == 2 and "already holds a checkpoint" in again.stderr
    mismatch = subprocess.run([sys.executable, "-m", "ltexec", "train", "--out", str(out), "--resume",
                               "--hidden", "9"], capture_output=True, text=True)
    assert mismatch.returncode == 2 and "does not match the checkpoint" in mismatch.stderr


@pytest.mark.skipif(os.name != "posix", reason="sends SIGINT")
def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "ltexec", "train", "--task", "addition", "--length", "2", "--hidden", "8",
            "--layers", "1", "--batch", "4", "--window", "10", "--eval-every", "1000000",
            "--backend", "numpy", "--out", str(out)]
    # A process started in the background by a non-interactive shell (as CI jobs may be) ignores SIGINT,
    # and so would its children; the user's terminal gives the trainer the default disposition.
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        while proc.poll() is None and "ltexec train:" not in (proc.stdout.readline() or ""):
            pass
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["stopped"] == "interrupted"
    _, meta = load_checkpoint(out / CHECKPOINT_NAME)
    assert meta["step"] == summary["steps"] > 0


def test_cli_train_takes_the_spike_options(tmp_path, capsys):
    from ltexec import cli
    from ltexec.checkpoint import read_checkpoint

    with pytest.raises(SystemExit) as bad:
        cli.main(["train", "--spike-factor", "1"])
    assert bad.value.code == 2 and "spike-factor must be a finite number > 1" in capsys.readouterr().err
    out = tmp_path / "run"
    cli.main(["train", "--task", "addition", "--length", "1", "--hidden", "8", "--layers", "1", "--batch", "4",
              "--window", "10", "--eval-every", "3", "--eval-examples", "4", "--backend", "numpy",
              "--max-steps", "3", "--spike-factor", "3", "--spike-lr-factor", "0.25", "--out", str(out)])
    config = read_checkpoint(out)[2]
    assert (config.spike_factor, config.spike_lr_factor) == (3.0, 0.25)
