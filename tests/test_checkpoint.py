"""Checkpoints: what a run's checkpoint holds, its round trip, and clear errors for bad ones."""

import json

import numpy as np
import pytest
from tiny_run import TINY, metrics, quiet

from ltexec.checkpoint import (CHECKPOINT_NAME, METRICS_NAME, CheckpointError, load_checkpoint, read_checkpoint,
                               restore_run, save_checkpoint, save_run)
from ltexec.config import TrainConfig
from ltexec.trainer import Trainer, open_run, train


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


def test_corrupt_checkpoint_gets_a_clear_error(tmp_path):
    train(TrainConfig(**TINY, max_steps=5), out_dir=tmp_path, log=quiet)
    path = tmp_path / CHECKPOINT_NAME
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        open_run({}, tmp_path, resume=True, log=quiet)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not an .npz"):
        open_run({}, tmp_path, resume=True, log=quiet)


def test_checkpoint_that_does_not_fit_its_configuration_gets_a_clear_error(tmp_path):
    train(TrainConfig(**TINY, max_steps=5), out_dir=tmp_path, log=quiet)
    arrays, meta = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    arrays["param/Wh0"] = np.zeros((3, 3), dtype=np.float32)
    save_checkpoint(tmp_path / CHECKPOINT_NAME, arrays, {k: v for k, v in meta.items()
                                                         if k not in ("format", "version")})
    with pytest.raises(CheckpointError, match="Wh0"):
        open_run({}, tmp_path, resume=True, log=quiet)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        open_run({}, tmp_path, resume=True, log=quiet)


def test_the_run_layout_round_trips(tmp_path):
    """What save_run writes, restore_run puts back: saving the restored run writes the same checkpoint."""
    config = TrainConfig(**TINY, momentum=0.9, strategy="combined", max_steps=7)
    train(config, out_dir=tmp_path / "a", log=quiet)
    arrays, meta, read = read_checkpoint(tmp_path / "a")
    assert read == config
    restored = Trainer(read, tmp_path / "b", log=quiet)
    restore_run(restored, arrays, meta)
    assert (restored.step, restored.history, restored.optimizer.lr) == (7, meta["history"], meta["lr"])
    save_run(restored, {"step": 7})
    again, again_meta = load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)
    assert again.keys() == arrays.keys()
    for name in arrays:
        np.testing.assert_array_equal(again[name], arrays[name], err_msg=name)
    assert again_meta == meta
    assert metrics(tmp_path / "b") == [{"step": 7}]


def test_metrics_written_after_the_checkpoint_are_dropped_on_resume(tmp_path):
    train(TrainConfig(**TINY, max_steps=5), out_dir=tmp_path, log=quiet)
    with open(tmp_path / METRICS_NAME, "a") as handle:          # a crash between the metrics and checkpoint writes
        handle.write(json.dumps({"step": 10}) + "\n")
    open_run({}, tmp_path, resume=True, log=quiet)
    assert [record["step"] for record in metrics(tmp_path)] == [5]


def test_a_checkpoint_without_spike_figures_resumes_with_none_caught(tmp_path):
    train(TrainConfig(**TINY, max_steps=5), out_dir=tmp_path, log=quiet)
    arrays, meta = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    older = {k: v for k, v in meta.items() if k not in ("format", "version", "spikes", "lowest_loss")}
    older["config"] = {k: v for k, v in older["config"].items() if not k.startswith("spike_")}
    save_checkpoint(tmp_path / CHECKPOINT_NAME, arrays, older)
    trainer = open_run({}, tmp_path, resume=True, log=quiet)
    assert (trainer.step, trainer.spikes, trainer.lowest_loss, trainer.config.spike_factor) == (5, 0, None, None)


def test_a_checkpoint_without_the_draw_option_resumes_drawing_per_example(tmp_path):
    train(TrainConfig(**{**TINY, "strategy": "mix"}, max_steps=5), out_dir=tmp_path, log=quiet)
    arrays, meta = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    older = {k: v for k, v in meta.items() if k not in ("format", "version")}
    older["config"] = {k: v for k, v in older["config"].items() if k != "draw"}
    older["curriculum"] = {k: v for k, v in older["curriculum"].items() if k != "draw"}
    save_checkpoint(tmp_path / CHECKPOINT_NAME, arrays, older)
    trainer = open_run({}, tmp_path, resume=True, log=quiet)
    assert (trainer.config.draw, trainer.curriculum.draw) == ("example", "example")
