"""The paper's trainer: SGD with a clipped global gradient norm, driven by a curriculum.

The loss is the summed cross-entropy of the answer characters divided by the
batch size, as in the original code (``loss_scale="batch"``); ``"chars"``
divides by the number of answer characters instead, which keeps the gradient's
scale, and so the meaning of ``lr`` and ``clip``, independent of the answers'
lengths and of the window.

By default training runs in the paper-faithful stream mode: every batch
column is an endless stream of examples packed back to back, cut into windows
of ``window`` steps, with the LSTM state carried from one window to the next
(no gradient flows across windows). The ``examples`` mode instead trains on
batches of independent examples, one per column from a zero state, so that
backpropagation always reaches from an answer to the start of its program.

Every ``eval_every`` steps the trainer measures validation (at the
curriculum's current level) and test (at the target level) accuracy, lets the
curriculum advance, decays the learning rate by 0.8 on each trigger at the
target level, appends a line to ``metrics.jsonl``, prints progress and sample
predictions, and writes a checkpoint atomically (:mod:`ltexec.checkpoint` says
what it holds, so that a resumed run continues exactly where an uninterrupted
one would be). Training stops when the learning rate falls below ``min_lr``,
or at the step or time budget; Ctrl-C finishes the current step, saves, and
stops. A caller can also stop the run after any evaluation (``stop_when``
of :meth:`Trainer.run`). :func:`open_run` starts a run or resumes one;
:mod:`ltexec.progress` prints what it does.

Blow-up recovery (off unless ``spike_factor`` is set; the paper has none):
after every good evaluation the trainer keeps in memory a copy of the state a
checkpoint holds (:func:`~ltexec.checkpoint.run_state`). An evaluation
interval whose mean training loss exceeds ``spike_factor`` times the lowest
interval mean so far (reset when the curriculum advances, since a harder level
has a higher loss), or in which the loss or the gradient norm was not finite,
is a spike: its evaluation is recorded with the event ``"spike"``,
then the parameters, velocity, carried state, batch streams, curriculum and
training generator go back to that copy and the learning rate is multiplied
by ``spike_lr_factor``. The step counter and the elapsed time keep counting
(the steps since the copy are redone on the same data at the lower rate), so
budgets and metrics stay monotonic. Repeated spikes end the run once the
learning rate falls below ``min_lr``. Without recovery, a non-finite loss or
gradient raises :class:`TrainingDiverged` at the end of its interval, before
anything is saved.

No step waits for the device. The loss, the correct count and the gradient
norm of every step stay backend scalars (on a GPU, on the device), summed
in :class:`~ltexec.progress.TrainingFigures`; the optimizer clips on the
device and skips a step whose norm is not finite (the parameters stay as
they were). The trainer reads the sums only when it evaluates (and, on a
terminal, for the live line once a second), which is where a non-finite
step is noticed.
"""

from __future__ import annotations

import dataclasses
import math
import random
import signal
import time
from pathlib import Path
from typing import Callable

from ltexec.batching import StreamBatcher, pack_examples
from ltexec.checkpoint import (checkpoint_path, load_training_state, read_checkpoint, recorded_backend_options,
                               restore_run, run_state, save_run)
from ltexec.config import BUDGET, TrainConfig, build_model
from ltexec.curriculum import Curriculum
from ltexec.evaluation import evaluate
from ltexec.optim import SGD
from ltexec.progress import Reporter, TrainingFigures
from ltexec.sampler import sample
from ltexec.seeds import derive_seed
from ltexec.validation import check_output_dir


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite."""


class Trainer:
    """Runs one training run, from its start or (through :func:`open_run`) from a checkpoint.

    ``log`` takes the lines the run prints (see :class:`~ltexec.progress.Reporter`);
    ``backend_options`` (e.g. ``threads``) go to the backend.
    """

    def __init__(self, config: TrainConfig, out_dir=None, log: Callable[[str], None] | None = None,
                 **backend_options):
        self.config = config.validate()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.report = Reporter(log)
        cfg = self.config
        self.model = build_model(cfg, **backend_options)
        # Fix the backend's speed-only options (timed or remembered) at the training step's shapes.
        self.tuning = self.model.backend.tune(cfg.window, cfg.batch, cfg.hidden)
        self.optimizer = SGD(lr=cfg.lr, momentum=cfg.momentum, clip=cfg.clip)
        self.curriculum = Curriculum(cfg.strategy, cfg.length, cfg.nesting, draw=cfg.draw)
        self.rng = random.Random(derive_seed(cfg.seed, "train"))
        self.batcher = StreamBatcher(self._next_training_example, cfg.batch, cfg.window, cfg.transform)
        self.state = self.model.zero_state(cfg.batch)
        self.step = 0
        self.elapsed = 0.0          # seconds of training and evaluation, across resumes
        self.history: list[dict] = []
        self.spikes = 0                 # blow-ups caught
        self.lowest_loss: float | None = None   # the spike rule's reference: the lowest interval mean loss
        self._last_good: tuple[dict, dict] | None = None   # run_state() at the last good evaluation
        self._stop_when: Callable[[dict], str | None] | None = None
        self._since_eval = TrainingFigures()
        self._eval_sets: dict[tuple[str, int, int], list] = {}
        self._stop_requested = False

    # ----------------------------------------------------------------- data
    def _next_training_example(self):
        return self.curriculum.draw_example(self.config.task, "train", self.rng)

    def _eval_set(self, split: str, level: tuple[int, int]):
        """A fixed set of examples per (split, level), drawn from a seed derived from the run's."""
        key = (split,) + tuple(level)
        if key not in self._eval_sets:
            seed = derive_seed(self.config.seed, split, *level)
            self._eval_sets[key] = sample(self.config.task, level[0], level[1],
                                          count=self.config.eval_examples, seed=seed, split=split)
        return self._eval_sets[key]

    # ------------------------------------------------------------- training
    def train_step(self) -> None:
        """One window: forward, BPTT, clip, SGD update; in stream mode the LSTM state is carried.

        Reads nothing from the backend: the step's figures are added to the
        interval's (a step with a non-finite gradient norm leaves the
        parameters unchanged, and the next evaluation reports it).
        """
        if self.config.mode == "stream":
            window = self.batcher.next_window()
        else:
            window = pack_examples([self._next_training_example() for _ in range(self.config.batch)],
                                   self.config.transform)
            self.state = None        # every example starts from a zero state
        backend = self.model.backend
        result = self.model.loss_and_grads(window.x, window.y, window.mask, self.state)
        if self.config.loss_scale == "chars" and result.count:
            # The mean over answer characters instead of the sum over a batch column.
            backend.scale_(result.grads, self.config.batch / result.count)
        norm = self.optimizer.step(backend, self.model.params, result.grads)
        self.state = result.state
        self.step += 1
        self._since_eval.add(result.loss, result.correct, norm, result.count, window.x.size, backend.xp)

    def run(self, stop_when: Callable[[dict], str | None] | None = None) -> dict:
        """Train until the learning rate, step or time budget runs out; return the final summary.

        ``stop_when`` is called with the metrics record of every evaluation that
        was not a spike, after the record is shown and before the checkpoint is
        written; a string it returns stops the run with that reason. Its time
        counts as evaluation time.
        """
        cfg = self.config
        self._stop_when = stop_when
        self.report.started(cfg, self.optimizer.lr, self.model.backend, self.tuning)
        if cfg.spike_factor is not None:
            self._last_good = run_state(self)
        previous_handler = signal.getsignal(signal.SIGINT)
        if previous_handler is signal.default_int_handler:
            signal.signal(signal.SIGINT, self._request_stop)
        reason = "finished"
        try:
            while True:
                reason = self._budget_exhausted()
                if reason:
                    break
                started = time.perf_counter()
                self.train_step()
                spent = time.perf_counter() - started
                self._since_eval.seconds += spent
                self.elapsed += spent
                self.report.live(self.step, self._since_eval, cfg.eval_every)
                if self.step % cfg.eval_every == 0:
                    reason = self._evaluate_and_checkpoint()
                    if reason:
                        break
            if self._since_eval.steps:
                self._evaluate_and_checkpoint()
        except TrainingDiverged as error:
            kept = checkpoint_path(self.out_dir) if self.out_dir is not None else None
            where = f"; the last good checkpoint is {kept}" if kept and kept.exists() else ""
            raise TrainingDiverged(f"{error}{where}") from None
        finally:
            if previous_handler is signal.default_int_handler:
                signal.signal(signal.SIGINT, previous_handler)
        self.report.stopped(self.step, reason)
        return self.summary(reason)

    def _request_stop(self, signum, frame):
        if self._stop_requested:          # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self._stop_requested = True
        self.report.interrupting()

    def _budget_exhausted(self) -> str | None:
        cfg = self.config
        if self._stop_requested:
            return "interrupted"
        if cfg.max_steps is not None and self.step >= cfg.max_steps:
            return f"reached {cfg.max_steps} steps"
        if cfg.minutes is not None and self.elapsed >= 60.0 * cfg.minutes:
            return f"reached the {cfg.minutes:g}-minute budget"
        return None

    # ----------------------------------------------------------- evaluation
    def _evaluate_and_checkpoint(self) -> str | None:
        """Read the interval's figures, evaluate, record, report and checkpoint; recover from a spike.

        Returns a reason to stop, if any. Raises :class:`TrainingDiverged`
        (without recovery) if a step of the interval was not finite.
        """
        cfg = self.config
        self._wait_for_steps()
        started = time.perf_counter()
        figures = self._since_eval
        diverged = self._non_finite(figures)
        if diverged and cfg.spike_factor is None:
            raise TrainingDiverged(f"{diverged} (learning rate {self.optimizer.lr:g})")
        train_acc = figures.char_acc
        level = self.curriculum.level
        val = evaluate(self.model, self._eval_set("val", self.curriculum.validation_level()), cfg.transform,
                       warmup=cfg.warmup)
        test_examples = self._eval_set("test", self.curriculum.test_level())
        test = evaluate(self.model, test_examples, cfg.transform, warmup=cfg.warmup)
        record = {
            "step": self.step,
            "elapsed_s": round(self.elapsed, 3),
            "chars_per_s": round(figures.chars_per_s, 1),
            "loss": figures.mean_loss,
            "grad_norm": figures.mean_norm,
            "lr": self.optimizer.lr,
            "level": list(level),
            "train_char_acc": train_acc,
            "val_char_acc": val.char_acc,
            "val_exact_acc": val.exact_acc,
            "test_char_acc": test.char_acc,
            "test_exact_acc": test.exact_acc,
            "backend_choices": self.model.backend.choices,
        }
        spike = self._spike(figures.mean_loss, diverged)
        if spike:
            record["event"] = "spike"
            record["spike"] = self._recover(spike)
        else:
            record["event"] = self._follow_curriculum(val.char_acc, train_acc, figures.mean_loss)
            if record["event"] == "advance":
                record["advanced_to"] = list(self.curriculum.level)
        self.history.append(record)
        self._since_eval = TrainingFigures()
        self.report.evaluation(record, self.curriculum.target, self.curriculum.level, self.optimizer.lr)
        self.report.predictions(test_examples, test, len(self.history))
        stop = None
        if self.optimizer.lr < cfg.min_lr:
            stop = f"learning rate fell below {cfg.min_lr:g}"
        elif self._stop_when is not None and not spike:
            stop = self._stop_when(record)
        self.elapsed += time.perf_counter() - started
        record["elapsed_s"] = round(self.elapsed, 3)
        state = run_state(self) if cfg.spike_factor is not None or self.out_dir is not None else None
        if cfg.spike_factor is not None:
            self._last_good = state                # NumPy copies: later steps leave them alone
        if self.out_dir is not None:
            save_run(self, record, state)
        return stop

    def _wait_for_steps(self) -> None:
        """Wait for the interval's queued steps (a GPU runs them behind the host), counted as training time."""
        started = time.perf_counter()
        self.model.backend.synchronize()
        waited = time.perf_counter() - started
        self._since_eval.seconds += waited
        self.elapsed += waited

    def _non_finite(self, figures: TrainingFigures) -> str | None:
        """What was not finite in the interval the figures sum up (and which steps those were), or None."""
        skipped, loss = figures.non_finite_steps, figures.mean_loss
        if not skipped and math.isfinite(loss):
            return None
        steps = f"steps {self.step - figures.steps + 1}-{self.step}"
        if skipped:
            return (f"the gradient norm was not finite in {skipped} of {steps}, "
                    f"which left the parameters unchanged")
        return f"the loss was not finite in {steps}"

    def _follow_curriculum(self, val_acc: float, train_acc: float, loss: float) -> str | None:
        """Let the curriculum advance or decay the learning rate; keep the spike rule's reference."""
        event = self.curriculum.update(val_acc, train_acc)
        if event == "decay":
            self.optimizer.lr *= self.config.lr_decay
        if event == "advance":
            self.lowest_loss = None
        elif self.config.spike_factor is not None:
            self.lowest_loss = loss if self.lowest_loss is None else min(self.lowest_loss, loss)
        return event

    def _spike(self, loss: float, diverged: str | None) -> str | None:
        """What makes this interval a spike (see the module docstring), or None; always None without recovery."""
        factor = self.config.spike_factor
        if factor is None:
            return None
        if diverged:
            return diverged
        if self.lowest_loss is not None and loss > factor * self.lowest_loss:
            return f"loss {loss:.4g} > {factor:g} x {self.lowest_loss:.4g}"
        return None

    def _recover(self, cause: str) -> dict:
        """Go back to the last good evaluation's state at a lower learning rate; describe it for the record."""
        lr = self.optimizer.lr * self.config.spike_lr_factor
        arrays, meta = self._last_good
        load_training_state(self, arrays, meta)
        self.optimizer.lr = lr
        self.spikes += 1
        return {"cause": cause, "restored_step": meta["step"], "lr": lr}

    def summary(self, reason: str = "finished") -> dict:
        """The last good evaluation's figures (those of the model the run ends with) plus the run's identity.

        ``level`` is the curriculum's level at the end, ``advances`` the step of each advance and the level it
        moved to.
        """
        last = next((record for record in reversed(self.history) if record["event"] != "spike"), {})
        return {
            "task": self.config.task, "length": self.config.length, "nesting": self.config.nesting,
            "strategy": self.config.strategy, "backend": self.model.backend.name,
            "backend_choices": self.model.backend.choices,
            "steps": self.step, "minutes": round(self.elapsed / 60.0, 3),
            "chars_per_s": last.get("chars_per_s"),
            "teacher_forced_acc": last.get("test_char_acc"),
            "exact_match_acc": last.get("test_exact_acc"),
            "stopped": reason, "spikes": self.spikes,
            "level": list(self.curriculum.level),
            "advances": [{"step": r["step"], "to": r["advanced_to"]} for r in self.history if "advanced_to" in r],
        }


def open_run(config: TrainConfig | dict, out_dir=None, resume: bool = False,
             log: Callable[[str], None] | None = None, **backend_options) -> Trainer:
    """A trainer for a new run in ``out_dir``, or with ``resume`` for the run whose checkpoint is there.

    ``config`` is a :class:`TrainConfig` or a dict of some of its fields. A new
    run takes the defaults for the fields not given, and refuses an
    ``out_dir`` that already holds a checkpoint (it would overwrite it). A
    resumed run takes its configuration from the checkpoint: the budget
    (minutes, max_steps) given replaces the checkpoint's, and every other
    field given must equal it; it keeps the backend choices the checkpoint
    recorded (:func:`~ltexec.checkpoint.recorded_backend_options`) unless
    ``backend_options`` name others. ``log`` and ``backend_options`` go to :class:`Trainer`.
    """
    given = dataclasses.asdict(config) if isinstance(config, TrainConfig) else dict(config)
    if out_dir is not None:
        out_dir = check_output_dir("out_dir", out_dir)
    if not resume:
        if out_dir is not None and checkpoint_path(out_dir).exists():
            raise ValueError(f"{out_dir} already holds a checkpoint: pass resume to continue it, "
                             f"or choose another output directory")
        return Trainer(TrainConfig.from_dict(given), out_dir, log, **backend_options)
    if out_dir is None:
        raise ValueError("resume needs the run's output directory (out_dir)")
    arrays, meta, saved = read_checkpoint(out_dir)
    wanted = TrainConfig.from_dict({**dataclasses.asdict(saved), **given})
    for name in given:
        if name not in BUDGET and getattr(wanted, name) != getattr(saved, name):
            raise ValueError(f"{name}={given[name]!r} does not match the checkpoint in {out_dir}, which was "
                             f"trained with {name}={getattr(saved, name)!r}; leave it out to resume")
    recorded = recorded_backend_options(meta, wanted.backend)
    try:
        trainer = Trainer(wanted, out_dir, log, **{**recorded, **backend_options})
    except ValueError as error:
        if not recorded:
            raise
        raise ValueError(f"{error} (the checkpoint in {out_dir} recorded the backend choices {recorded}, which "
                         f"a resumed run keeps so that it computes as before; give options that agree with "
                         f"them)") from None
    restore_run(trainer, arrays, meta)
    trainer.report.resumed(checkpoint_path(out_dir), trainer.step)
    return trainer


def train(config: TrainConfig | dict, out_dir=None, resume: bool = False, log=None, **backend_options) -> dict:
    """Train (or resume, with ``resume=True``; see :func:`open_run`) and return the final summary."""
    return open_run(config, out_dir, resume, log, **backend_options).run()
