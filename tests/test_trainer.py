"""The trainer: exact resume, checkpoints, divergence, interrupts, and that it learns."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ltexec.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ltexec.trainer import CHECKPOINT_NAME, METRICS_NAME, Trainer, TrainConfig, TrainingDiverged, train

TINY = dict(task="addition", length=2, hidden=16, layers=1, batch=4, window=12, backend="numpy",
            eval_every=5, eval_examples=8, seed=3)


def quiet(_line):
    pass


def metrics(out_dir):
    return [json.loads(line) for line in (out_dir / METRICS_NAME).read_text().splitlines()]


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


def test_checkpoint_holds_everything_and_no_pickle(tmp_path):
    train(TrainConfig(**TINY, momentum=0.9, max_steps=5), out_dir=tmp_path, log=quiet)
    arrays, meta = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert {"param/embed", "param/Wx0", "param/Wh0", "param/b0", "param/Wy", "param/by"} <= arrays.keys()
    assert any(k.startswith("velocity/") for k in arrays)
    assert any(k.startswith("batcher/") for k in arrays)
    assert {"state/h0", "state/c0"} <= arrays.keys()
    assert meta["step"] == 5 and meta["config"]["hidden"] == 16
    assert all(a.dtype != object for a in arrays.values())
    with np.load(tmp_path / CHECKPOINT_NAME, allow_pickle=False) as data:   # loads without pickle
        assert len(data.files) == len(arrays) + 1


def test_existing_checkpoint_is_not_overwritten_without_resume(tmp_path):
    train(TrainConfig(**TINY, max_steps=5), out_dir=tmp_path, log=quiet)
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        train(TrainConfig(**TINY, max_steps=5), out_dir=tmp_path, log=quiet)


def test_corrupt_checkpoint_gets_a_clear_error(tmp_path):
    train(TrainConfig(**TINY, max_steps=5), out_dir=tmp_path, log=quiet)
    path = tmp_path / CHECKPOINT_NAME
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        Trainer.resume(tmp_path, log=quiet)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not an .npz"):
        Trainer.resume(tmp_path, log=quiet)


def test_mismatched_checkpoint_gets_a_clear_error(tmp_path):
    train(TrainConfig(**TINY, max_steps=5), out_dir=tmp_path, log=quiet)
    with pytest.raises(ValueError, match="hidden=32 does not match .* hidden=16"):
        Trainer.resume(tmp_path, overrides={"hidden": 32}, log=quiet)
    arrays, meta = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    arrays["param/Wh0"] = np.zeros((3, 3), dtype=np.float32)
    save_checkpoint(tmp_path / CHECKPOINT_NAME, arrays, {k: v for k, v in meta.items()
                                                         if k not in ("format", "version")})
    with pytest.raises(CheckpointError, match="Wh0"):
        Trainer.resume(tmp_path, log=quiet)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Trainer.resume(tmp_path, log=quiet)


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
    with pytest.raises(TrainingDiverged, match=r"step 8 .*last good checkpoint") as info:
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


@pytest.mark.parametrize("field, value, message", [
    ("task", "multiply", "task must be one of"),
    ("length", 0, "length must be"),
    ("hidden", -1, "hidden must be"),
    ("lr", 0.0, "lr must be"),
    ("mode", "batch", "mode must be one of"),
    ("backend", "tpu", "backend must be one of"),
    ("minutes", float("nan"), "minutes must be"),
])
def test_bad_config_is_rejected(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{**TINY, field: value}).validate()


def test_nesting_only_for_programs():
    assert TrainConfig(task="addition").nesting == 1
    assert TrainConfig(task="programs").nesting == 3
    with pytest.raises(ValueError, match="nesting applies only to task programs"):
        TrainConfig(task="copy", nesting=2).validate()


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
