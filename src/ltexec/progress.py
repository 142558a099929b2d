"""What a training run shows while it runs: the :class:`Reporter`, and the figures it reports.

The trainer tells its reporter about each event: the start, a resume, every
training step (a live status line between evaluations), every evaluation (a
progress line and a few sample predictions), an interrupt, the stop. Every
line goes to the reporter's ``log`` (standard output by default; a sweep
sends it to the cell's ``train.log``, a test can collect it). The live line
is rewritten in place once a second, and only on a terminal.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, TextIO

from ltexec import vocab


@dataclass
class TrainingFigures:
    """Training figures accumulated since the last evaluation.

    ``loss``, ``correct``, ``norm`` and ``non_finite`` are sums of backend
    scalars (see :mod:`ltexec.backends.base`): :meth:`add` keeps them where
    the backend computed them, so on a GPU a step reads nothing back; the
    properties read them, which waits for the queued steps.
    """

    loss: Any = 0.0
    correct: Any = 0
    norm: Any = 0.0          # gradient norms before clipping
    non_finite: Any = 0      # steps whose gradient norm was not finite (the optimizer skipped them)
    count: int = 0
    steps: int = 0
    chars: int = 0
    seconds: float = 0.0

    def add(self, loss, correct, norm, count: int, chars: int, xp) -> None:
        """One training step's figures; ``xp`` is the array module of the backend scalars."""
        self.loss = self.loss + loss
        self.correct = self.correct + correct
        self.norm = self.norm + norm
        self.non_finite = self.non_finite + ~xp.isfinite(norm)
        self.count += count
        self.steps += 1
        self.chars += chars

    @property
    def mean_loss(self) -> float:
        """Mean loss per step."""
        return float(self.loss) / max(self.steps, 1)

    @property
    def mean_norm(self) -> float:
        """Mean gradient norm (before clipping) per step."""
        return float(self.norm) / max(self.steps, 1)

    @property
    def non_finite_steps(self) -> int:
        """Steps whose gradient norm was not finite."""
        return int(self.non_finite)

    @property
    def char_acc(self) -> float:
        """Teacher-forced accuracy on the training answers' characters."""
        return int(self.correct) / max(self.count, 1)

    @property
    def chars_per_s(self) -> float:
        """Input characters trained on per second of training."""
        return self.chars / max(self.seconds, 1e-9)


class Reporter:
    """Turns a run's events into lines; see the module docstring.

    ``log`` takes each line (default: print it and flush). ``live`` is where
    the live status line is drawn (default: standard error if it is a
    terminal, else nowhere).
    """

    def __init__(self, log: Callable[[str], None] | None = None, live: TextIO | None = None):
        self.log = log or (lambda line: print(line, flush=True))
        self.live_stream = live if live is not None else (sys.stderr if sys.stderr.isatty() else None)
        self._last_live = 0.0

    def started(self, config, lr: float, backend, tuning=None) -> None:
        """The run's configuration, its current learning rate and the backend it runs on (with its launch mode),
        then, where the backend had options to fix (``tuning``), what it chose and how fast each candidate was."""
        mode = getattr(backend, "launch_mode", None)   # GPU backends: how the LSTM recurrence is launched
        where = backend.device_name() + (f"; {mode}" if mode else "")
        self.log(f"ltexec train: {config.task} length {config.length} nesting {config.nesting}, "
                 f"{config.strategy} curriculum, {config.layers}x{config.hidden} LSTM, batch {config.batch}, "
                 f"window {config.window}, lr {lr:g}, backend {backend.name} ({where})")
        if tuning is not None:
            self.log(f"backend choices: {tuning.describe()}")

    def resumed(self, path, step: int) -> None:
        self.log(f"resumed from {path} at step {step}")

    def live(self, step: int, figures: TrainingFigures, eval_every: int) -> None:
        """The status since the last evaluation, redrawn at most once a second."""
        now = time.perf_counter()
        if self.live_stream is None or now - self._last_live < 1.0:
            return
        self._last_live = now
        self.live_stream.write(f"\rstep {step:>7} | {figures.chars_per_s:>9,.0f} chars/s"
                               f" | loss {figures.mean_loss:.4f}"
                               f" | train {100 * figures.char_acc:5.1f}%"
                               f" | next evaluation at step {step - step % eval_every + eval_every} ")
        self.live_stream.flush()

    def evaluation(self, record: dict, target: tuple, level: tuple, lr: float) -> None:
        """One metrics ``record``; ``level`` and ``lr`` are the ones its event (advance, decay, spike) led to."""
        if self.live_stream is not None:
            self.live_stream.write("\r\033[K")
        event = {"advance": f" -> level {level}", "decay": f" -> lr {lr:g}"}.get(record["event"], "")
        if record["event"] == "spike":
            spike = record["spike"]
            event = f" -> spike: {spike['cause']}, restored step {spike['restored_step']}, lr {spike['lr']:g}"
        self.log(f"step {record['step']:>7} | {record['elapsed_s'] / 60:6.1f} min"
                 f" | {record['chars_per_s']:>9,.0f} chars/s"
                 f" | level {tuple(record['level'])} of {target} | lr {record['lr']:.3g}"
                 f" | loss {record['loss']:.4f} | train {100 * record['train_char_acc']:5.1f}%"
                 f" | val {100 * record['val_char_acc']:5.1f}% char {100 * record['val_exact_acc']:5.1f}% exact"
                 f" | test {100 * record['test_char_acc']:5.1f}% char {100 * record['test_exact_acc']:5.1f}% exact"
                 f"{event}")

    def predictions(self, examples, result, evaluation: int, count: int = 2) -> None:
        """``count`` test examples with the model's free-running answer, different ones at each ``evaluation``."""
        first = (evaluation * count) % len(examples)
        for k in range(first, first + min(count, len(examples))):
            example, prediction = examples[k % len(examples)], result.predictions[k % len(examples)]
            program = example.input.replace("\n", "\n        ")
            mark = "ok" if prediction == example.target + vocab.TERMINATOR else "wrong"
            self.log(f"  input:  {program}\n  target: {example.target}.\n  model:  {prediction} ({mark})")

    def interrupting(self) -> None:
        self.log("interrupt: finishing this step, saving a checkpoint, then stopping "
                 "(press Ctrl-C again to stop at once)")

    def stopped(self, step: int, reason: str) -> None:
        self.log(f"stopped after step {step}: {reason}")
