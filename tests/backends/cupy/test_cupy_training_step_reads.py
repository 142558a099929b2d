"""A training step reads nothing back from the device; the trainer reads only when it evaluates.

The CuPy backend runs on the kernel emulation with arrays that stand in for
device arrays (``cuda_emulation.DeviceArray``): every way CuPy lets the host
read an array raises while ``no_reads()`` is in force. Forward, BPTT, the
loss, the clipped SGD update and the trainer's bookkeeping all run inside it,
step after step; the evaluations between intervals read the figures.
"""

import numpy as np
import pytest
from tiny_run import TINY, quiet

import cuda_emulation as emulation
from ltexec.backends.cupy.backend import CupyBackend
from ltexec.config import TrainConfig, build_model
from ltexec.trainer import Trainer, TrainingDiverged

pytestmark = pytest.mark.skipif(emulation.gxx_missing_reason() is not None,
                                reason=str(emulation.gxx_missing_reason()))

CONFIG = dict(TINY, hidden=8, momentum=0.9, strategy="combined", eval_every=4, max_steps=8)


def guarded_trainer(persistent: bool, **changes) -> Trainer:
    """A trainer whose model runs on the CuPy backend over read-guarded emulated device arrays."""
    trainer = Trainer(TrainConfig(**{**CONFIG, **changes}), log=quiet)
    backend = CupyBackend(np.float32, persistent=persistent, device=emulation.ReadGuardedDevice())
    trainer.model = build_model(trainer.config, backend=backend)
    trainer.state = trainer.model.zero_state(trainer.config.batch)
    return trainer


def steps_without_reads(trainer: Trainer) -> list[int]:
    """Make every training step run inside ``no_reads()``; the list collects the steps that ran so."""
    ran, step = [], trainer.train_step

    def guarded():
        with emulation.ReadGuardedDevice.no_reads():
            step()
        ran.append(trainer.step)

    trainer.train_step = guarded
    return ran


@pytest.mark.parametrize("persistent", [True, False])
def test_training_steps_read_nothing_back_and_evaluations_read_their_figures(persistent):
    trainer = guarded_trainer(persistent)
    ran = steps_without_reads(trainer)
    summary = trainer.run()
    assert ran == list(range(1, 9)) and summary["steps"] == 8
    assert [record["step"] for record in trainer.history] == [4, 8]
    for record in trainer.history:
        assert np.isfinite(record["loss"]) and record["loss"] > 0 and record["grad_norm"] > 0
        assert 0 <= record["train_char_acc"] <= 1


def test_the_figures_match_those_of_the_numpy_backend():
    """Same seed and data: the interval figures read at evaluation agree with a run on the reference backend."""
    guarded = guarded_trainer(persistent=True)
    steps_without_reads(guarded)
    guarded.run()
    reference = Trainer(TrainConfig(**CONFIG), log=quiet)
    reference.run()
    for got, want in zip(guarded.history, reference.history, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)
        assert got["train_char_acc"] == want["train_char_acc"]


def test_the_guard_catches_a_read():
    """What the step avoids would fail here: reading a backend scalar, or checking ids already on the device."""
    backend = CupyBackend(np.float32, persistent=True, device=emulation.ReadGuardedDevice())
    grads = {"w": backend.asarray(np.ones((2, 3)))}
    E, ids = backend.asarray(np.ones((4, 3))), backend.asarray(np.zeros((2, 2), np.int64))
    with emulation.ReadGuardedDevice.no_reads():
        norm = backend.global_norm(grads)
        with pytest.raises(emulation.DeviceRead, match="float"):
            float(norm)
        with pytest.raises(emulation.DeviceRead):
            backend.embedding_forward(E, ids)              # device ids are checked by reading two reductions
        backend.embedding_forward(E, np.zeros((2, 2), np.int64))   # host ids are checked on the host
    assert float(norm) == pytest.approx(np.sqrt(6.0))


def test_a_non_finite_step_is_skipped_on_the_device_and_reported_at_the_evaluation():
    trainer = guarded_trainer(persistent=True)
    steps_without_reads(trainer)
    real = trainer.model.loss_and_grads

    def poisoned(x, y, mask, state):
        result = real(x, y, mask, state)
        if trainer.step == 5:                              # the 6th step
            result.grads["Wy"][0, 0] = np.inf
        return result

    trainer.model.loss_and_grads = poisoned
    with pytest.raises(TrainingDiverged, match=r"^the gradient norm was not finite in 1 of steps 5-8, "):
        trainer.run()
    assert all(np.isfinite(p.get()).all() for p in trainer.model.params.values())
