"""Blow-up recovery: a loss spike or a non-finite step rewinds to the last good evaluation at a lower rate."""

import numpy as np
from tiny_run import TINY, metrics, quiet

from ltexec.checkpoint import CHECKPOINT_NAME, load_checkpoint, run_state
from ltexec.config import TrainConfig
from ltexec.trainer import Trainer, open_run

RECOVERING = dict(TINY, momentum=0.9, strategy="combined", spike_factor=3.0)


def inject(trainer, calls: range, loss=None, grad=None):
    """Make the training windows numbered in ``calls`` (from 1) report ``loss`` times theirs, or a ``grad`` entry."""
    real = trainer.model.loss_and_grads
    count = 0

    def injected(x, y, mask, state):
        nonlocal count
        count += 1
        result = real(x, y, mask, state)
        if count in calls:
            if loss is not None:
                result.loss *= loss
            if grad is not None:
                result.grads["Wy"][0, 0] = grad
        return result

    trainer.model.loss_and_grads = injected
    return trainer


def test_a_loss_spike_restores_the_last_good_state_at_a_lower_rate(tmp_path):
    lines = []
    trainer = inject(Trainer(TrainConfig(**RECOVERING, max_steps=15), tmp_path / "run", log=lines.append),
                     range(11, 16), loss=100.0)
    summary = trainer.run()
    good = Trainer(TrainConfig(**RECOVERING, max_steps=10), log=quiet)
    good.run()

    after, after_meta = run_state(trainer)
    before, before_meta = run_state(good)
    assert after.keys() == before.keys()
    assert any(k.startswith("velocity/") for k in after) and any(k.startswith("state/") for k in after)
    for name in before:                        # parameters, velocity, carried state, batch streams
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert (after_meta["curriculum"], after_meta["rng"]) == (before_meta["curriculum"], before_meta["rng"])
    assert (trainer.step, trainer.optimizer.lr, trainer.spikes, summary["spikes"]) == (15, 0.25, 1, 1)

    spike = metrics(tmp_path / "run")[-1]
    assert (spike["step"], spike["event"], spike["lr"]) == (15, "spike", 0.5)
    assert spike["spike"]["restored_step"] == 10 and spike["spike"]["lr"] == 0.25
    lowest = trainer.lowest_loss
    assert spike["spike"]["cause"] == f"loss {spike['loss']:.4g} > 3 x {lowest:.4g}"
    shown = [line for line in lines if " -> spike: " in line]
    assert len(shown) == 1 and shown[0].startswith("step      15 |")
    assert shown[0].endswith(f" -> spike: loss {spike['loss']:.4g} > 3 x {lowest:.4g}, restored step 10, lr 0.25")
    assert summary["teacher_forced_acc"] == metrics(tmp_path / "run")[-2]["test_char_acc"]   # the restored model's


def test_a_run_with_a_spike_resumes_exactly(tmp_path):
    config = TrainConfig(**RECOVERING, max_steps=25)
    inject(Trainer(config, tmp_path / "straight", log=quiet), range(11, 16), loss=100.0).run()
    inject(Trainer(TrainConfig(**RECOVERING, max_steps=15), tmp_path / "split", log=quiet),
           range(11, 16), loss=100.0).run()
    resumed = open_run(config, tmp_path / "split", resume=True, log=quiet)
    assert (resumed.spikes, resumed.optimizer.lr) == (1, 0.25) and resumed.lowest_loss > 0
    resumed.run()

    def comparable(records):
        return [{k: v for k, v in r.items() if k not in ("elapsed_s", "chars_per_s")} for r in records]

    assert [r["event"] for r in metrics(tmp_path / "straight")].count("spike") == 1
    assert comparable(metrics(tmp_path / "split")) == comparable(metrics(tmp_path / "straight"))
    a, meta = load_checkpoint(tmp_path / "straight" / CHECKPOINT_NAME)
    b, _ = load_checkpoint(tmp_path / "split" / CHECKPOINT_NAME)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert meta["spikes"] == 1


def test_a_non_finite_gradient_restores_at_the_end_of_its_interval_instead_of_stopping(tmp_path):
    """The optimizer skips the step on the backend; the evaluation that reads the interval's figures restores."""
    trainer = inject(Trainer(TrainConfig(**RECOVERING, max_steps=20), tmp_path, log=quiet), range(8, 9), grad=np.nan)
    summary = trainer.run()
    records = metrics(tmp_path)
    spike = next(r for r in records if r["event"] == "spike")
    assert spike["step"] == 10 and spike["spike"]["restored_step"] == 5
    assert spike["spike"]["cause"] == ("the gradient norm was not finite in 1 of steps 6-10, "
                                       "which left the parameters unchanged")
    assert [r["step"] for r in records] == [5, 10, 15, 20]          # the schedule goes on
    assert (summary["steps"], summary["spikes"], trainer.optimizer.lr) == (20, 1, 0.25)
    assert all(np.isfinite(trainer.model.backend.to_numpy(p)).all() for p in trainer.model.params.values())


def test_repeated_blow_ups_stop_the_run_once_the_rate_falls_below_min_lr():
    config = TrainConfig(**dict(RECOVERING, min_lr=0.1), max_steps=100)
    trainer = inject(Trainer(config, log=quiet), range(3, 101), grad=np.inf)
    summary = trainer.run()
    assert [r["event"] for r in trainer.history] == ["spike"] * 3          # 0.25, 0.125, then 0.0625 < 0.1
    assert [r["step"] for r in trainer.history] == [5, 10, 15]             # skipped steps count as steps
    assert summary["stopped"] == "learning rate fell below 0.1" and trainer.step == 15


def test_the_reference_loss_starts_again_when_the_curriculum_advances():
    trainer = inject(Trainer(TrainConfig(**RECOVERING, max_steps=15), log=quiet), range(11, 16), loss=100.0)
    trainer.curriculum.update = lambda val_acc, train_acc: "advance"
    trainer.run()
    assert trainer.spikes == 0 and trainer.lowest_loss is None


def test_recovery_is_off_by_default_and_keeps_no_reference():
    trainer = inject(Trainer(TrainConfig(**TINY, max_steps=15), log=quiet), range(11, 16), loss=100.0)
    summary = trainer.run()
    assert TrainConfig().spike_factor is None
    assert (summary["spikes"], trainer.lowest_loss) == (0, None)
    assert "spike" not in [r["event"] for r in trainer.history]
