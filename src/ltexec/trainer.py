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
backpropagation always reaches from an answer to the start of its program. Every ``eval_every`` steps the trainer
measures validation (at the curriculum's current level) and test (at the
target level) accuracy, lets the curriculum advance, decays the learning rate
by 0.8 on each trigger at the target level, appends a line to
``metrics.jsonl``, prints progress and sample predictions, and writes a
checkpoint atomically. Training stops when the learning rate falls below
``min_lr``, or at the step or time budget.

A checkpoint holds everything a run depends on (parameters, optimizer
velocity, carried LSTM state, the batch streams, curriculum and random number
generator states, metrics so far), so a resumed run continues exactly where an
uninterrupted one would be. Ctrl-C finishes the current step, saves, and exits.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ltexec import vocab
from ltexec.backends import BACKENDS
from ltexec.batching import StreamBatcher, pack_examples
from ltexec.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ltexec.curriculum import STRATEGIES, Curriculum
from ltexec.evaluation import EvalResult, evaluate
from ltexec.model import LSTMModel
from ltexec.optim import SGD
from ltexec.sampler import TASKS, sample, sample_example
from ltexec.seeds import derive_seed
from ltexec.validation import check_choice, check_float, check_int

CHECKPOINT_NAME = "checkpoint.npz"
METRICS_NAME = "metrics.jsonl"
DTYPES = ("float32", "float64")
MODES = ("stream", "examples")
LOSS_SCALES = ("batch", "chars")


@dataclass
class TrainConfig:
    """Everything that defines a training run. The defaults are the paper's values."""

    task: str = "programs"
    length: int = 4
    nesting: int | None = None          # None: 3 for programs (the paper's), 1 for the other tasks
    strategy: str = "combined"
    transform: str = "none"
    hidden: int = 400
    layers: int = 2
    batch: int = 100
    window: int = 50
    mode: str = "stream"
    loss_scale: str = "batch"
    lr: float = 0.5
    momentum: float = 0.0
    clip: float = 5.0
    lr_decay: float = 0.8
    min_lr: float = 1e-3
    init_scale: float = 0.08
    backend: str = "auto"
    dtype: str = "float32"
    seed: int = 0
    eval_every: int = 500
    eval_examples: int = 500
    minutes: float | None = None
    max_steps: int | None = None

    def __post_init__(self):
        if self.nesting is None:
            self.nesting = 3 if self.task == "programs" else 1

    def validate(self) -> "TrainConfig":
        """Check every field; raise ValueError naming the first bad one."""
        check_choice("task", self.task, TASKS)
        check_int("length", self.length, 1)
        check_int("nesting", self.nesting, 1)
        if self.task != "programs" and self.nesting != 1:
            raise ValueError(f"nesting applies only to task programs; got nesting={self.nesting} "
                             f"for task {self.task}")
        check_choice("strategy", self.strategy, STRATEGIES)
        check_choice("transform", self.transform, vocab.TRANSFORMS)
        check_int("hidden", self.hidden, 1)
        check_int("layers", self.layers, 1)
        check_int("batch", self.batch, 1)
        check_int("window", self.window, 1)
        check_choice("mode", self.mode, MODES)
        check_choice("loss_scale", self.loss_scale, LOSS_SCALES)
        check_float("lr", self.lr, 0.0, inclusive_min=False)
        check_float("momentum", self.momentum, 0.0, 0.999)
        check_float("clip", self.clip, 0.0, inclusive_min=False)
        check_float("lr_decay", self.lr_decay, 0.0, 1.0, inclusive_min=False)
        check_float("min_lr", self.min_lr, 0.0)
        check_float("init_scale", self.init_scale, 0.0, inclusive_min=False)
        check_choice("backend", self.backend, ("auto",) + tuple(BACKENDS))
        check_choice("dtype", self.dtype, DTYPES)
        check_int("seed", self.seed, 0)
        check_int("eval_every", self.eval_every, 1)
        check_int("eval_examples", self.eval_examples, 1)
        if self.minutes is not None:
            check_float("minutes", self.minutes, 0.0, inclusive_min=False)
        if self.max_steps is not None:
            check_int("max_steps", self.max_steps, 0)
        return self

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**values).validate()


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite."""


class Trainer:
    """Runs (or resumes) one training run; see the module docstring."""

    def __init__(self, config: TrainConfig, out_dir=None, log: Callable[[str], None] | None = None):
        self.config = config.validate()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.log = log or (lambda line: print(line, flush=True))
        cfg = self.config
        self.model = LSTMModel(vocab.VOCAB_SIZE, hidden=cfg.hidden, layers=cfg.layers,
                               backend=cfg.backend, dtype=np.dtype(cfg.dtype),
                               init_scale=cfg.init_scale, seed=derive_seed(cfg.seed, "init"))
        self.optimizer = SGD(lr=cfg.lr, momentum=cfg.momentum, clip=cfg.clip)
        self.curriculum = Curriculum(cfg.strategy, cfg.length, cfg.nesting)
        self.rng = random.Random(derive_seed(cfg.seed, "train"))
        self.batcher = StreamBatcher(self._next_training_example, cfg.batch, cfg.window, cfg.transform)
        self.state = self.model.zero_state(cfg.batch)
        self.step = 0
        self.elapsed = 0.0          # seconds of training and evaluation, across resumes
        self.history: list[dict] = []
        self._since_eval = _fresh_counters()
        self._eval_sets: dict[tuple[str, int, int], list] = {}
        self._stop_requested = False
        self._tty = sys.stderr.isatty()
        self._last_live = 0.0

    @property
    def warmup(self) -> bool:
        """Whether evaluation precedes each example by another, as the training stream does."""
        return self.config.mode == "stream"

    # ----------------------------------------------------------------- data
    def _next_training_example(self):
        length, nesting = self.curriculum.sample_level(self.rng)
        return sample_example(self.config.task, length, nesting, "train", self.rng)

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
        """One window: forward, BPTT, clip, SGD update; in stream mode the LSTM state is carried."""
        if self.config.mode == "stream":
            window = self.batcher.next_window()
        else:
            window = pack_examples([self._next_training_example() for _ in range(self.config.batch)],
                                   self.config.transform)
            self.state = None        # every example starts from a zero state
        result = self.model.loss_and_grads(window.x, window.y, window.mask, self.state)
        if self.config.loss_scale == "chars" and result.count:
            # The mean over answer characters instead of the sum over a batch column.
            self.model.backend.scale_(result.grads, self.config.batch / result.count)
        problem = None if math.isfinite(result.loss) else f"the loss became {result.loss}"
        if problem is None:
            try:
                self.optimizer.step(self.model.backend, self.model.params, result.grads)
            except FloatingPointError as error:
                problem = str(error)
        if problem is not None:
            raise TrainingDiverged(f"{problem} at step {self.step + 1} (learning rate {self.optimizer.lr:g}); "
                                   f"the parameters were not updated")
        self.state = result.state
        self.step += 1
        acc = self._since_eval
        acc["loss"] += result.loss
        acc["correct"] += result.correct
        acc["count"] += result.count
        acc["steps"] += 1
        acc["chars"] += window.x.size

    def run(self) -> dict:
        """Train until the learning rate, step or time budget runs out; return the final summary."""
        cfg = self.config
        self.log(f"ltexec train: {cfg.task} length {cfg.length} nesting {cfg.nesting}, "
                 f"{cfg.strategy} curriculum, {cfg.layers}x{cfg.hidden} LSTM, batch {cfg.batch}, "
                 f"window {cfg.window}, lr {self.optimizer.lr:g}, backend {self.model.backend.name} "
                 f"({self.model.backend.device_name()})")
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
                self._since_eval["seconds"] += spent
                self.elapsed += spent
                self._live_progress()
                if self.step % cfg.eval_every == 0:
                    self._evaluate_and_checkpoint()
                    if self.optimizer.lr < cfg.min_lr:
                        reason = f"learning rate fell below {cfg.min_lr:g}"
                        break
        except TrainingDiverged as error:
            kept = self._checkpoint_path()
            where = f"; the last good checkpoint is {kept}" if kept and kept.exists() else ""
            raise TrainingDiverged(f"{error}{where}") from None
        finally:
            if previous_handler is signal.default_int_handler:
                signal.signal(signal.SIGINT, previous_handler)
        if self._since_eval["steps"]:
            self._evaluate_and_checkpoint()
        self.log(f"stopped after step {self.step}: {reason}")
        return self.summary(reason)

    def _live_progress(self) -> None:
        """A one-line status on a terminal between evaluations, rewritten in place every second."""
        now = time.perf_counter()
        if not self._tty or now - self._last_live < 1.0:
            return
        self._last_live = now
        acc = self._since_eval
        sys.stderr.write(f"\rstep {self.step:>7} | {acc['chars'] / max(acc['seconds'], 1e-9):>9,.0f} chars/s"
                         f" | loss {acc['loss'] / max(acc['steps'], 1):.4f}"
                         f" | train {100 * acc['correct'] / max(acc['count'], 1):5.1f}%"
                         f" | next evaluation at step {self.step - self.step % self.config.eval_every + self.config.eval_every} ")
        sys.stderr.flush()

    def _request_stop(self, signum, frame):
        if self._stop_requested:          # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self._stop_requested = True
        self.log("interrupt: finishing this step, saving a checkpoint, then stopping "
                 "(press Ctrl-C again to stop at once)")

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
    def _evaluate_and_checkpoint(self) -> None:
        cfg = self.config
        started = time.perf_counter()
        acc = self._since_eval
        train_acc = acc["correct"] / max(acc["count"], 1)
        level = self.curriculum.level
        val = evaluate(self.model, self._eval_set("val", self.curriculum.validation_level()), cfg.transform,
                       warmup=self.warmup)
        test_examples = self._eval_set("test", self.curriculum.test_level())
        test = evaluate(self.model, test_examples, cfg.transform, warmup=self.warmup)
        record = {
            "step": self.step,
            "elapsed_s": round(self.elapsed, 3),
            "chars_per_s": round(acc["chars"] / max(acc["seconds"], 1e-9), 1),
            "loss": acc["loss"] / max(acc["steps"], 1),
            "lr": self.optimizer.lr,
            "level": list(level),
            "train_char_acc": train_acc,
            "val_char_acc": val.char_acc,
            "val_exact_acc": val.exact_acc,
            "test_char_acc": test.char_acc,
            "test_exact_acc": test.exact_acc,
        }
        event = self.curriculum.update(val.char_acc, train_acc)
        if event == "decay":
            self.optimizer.lr *= cfg.lr_decay
        record["event"] = event
        self.history.append(record)
        self._since_eval = _fresh_counters()
        if self._tty:
            sys.stderr.write("\r\033[K")
        self.log(self._progress_line(record))
        self._show_predictions(test_examples, test)
        self.elapsed += time.perf_counter() - started
        record["elapsed_s"] = round(self.elapsed, 3)
        self._save(record)

    def _progress_line(self, r: dict) -> str:
        target = (self.config.length, self.config.nesting)
        event = {"advance": f" -> level {self.curriculum.level}",
                 "decay": f" -> lr {self.optimizer.lr:g}"}.get(r["event"], "")
        return (f"step {r['step']:>7} | {r['elapsed_s'] / 60:6.1f} min | {r['chars_per_s']:>9,.0f} chars/s"
                f" | level {tuple(r['level'])} of {target} | lr {r['lr']:.3g} | loss {r['loss']:.4f}"
                f" | train {100 * r['train_char_acc']:5.1f}%"
                f" | val {100 * r['val_char_acc']:5.1f}% char {100 * r['val_exact_acc']:5.1f}% exact"
                f" | test {100 * r['test_char_acc']:5.1f}% char {100 * r['test_exact_acc']:5.1f}% exact"
                f"{event}")

    def _show_predictions(self, examples, result: EvalResult, count: int = 2) -> None:
        """A few test examples with the model's free-running answer, different ones each time."""
        first = (len(self.history) * count) % len(examples)
        for k in range(first, first + min(count, len(examples))):
            example, prediction = examples[k % len(examples)], result.predictions[k % len(examples)]
            program = example.input.replace("\n", "\n        ")
            mark = "ok" if prediction == example.target + vocab.TERMINATOR else "wrong"
            self.log(f"  input:  {program}\n  target: {example.target}.\n  model:  {prediction} ({mark})")

    def summary(self, reason: str = "finished") -> dict:
        """The last evaluation's figures plus the run's identity."""
        last = self.history[-1] if self.history else {}
        return {
            "task": self.config.task, "length": self.config.length, "nesting": self.config.nesting,
            "strategy": self.config.strategy, "backend": self.model.backend.name,
            "steps": self.step, "minutes": round(self.elapsed / 60.0, 3),
            "chars_per_s": last.get("chars_per_s"),
            "teacher_forced_acc": last.get("test_char_acc"),
            "exact_match_acc": last.get("test_exact_acc"),
            "stopped": reason,
        }

    # ---------------------------------------------------------- checkpoints
    def _checkpoint_path(self) -> Path | None:
        return self.out_dir / CHECKPOINT_NAME if self.out_dir is not None else None

    def _save(self, record: dict) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / METRICS_NAME, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        backend = self.model.backend
        arrays = {f"param/{k}": backend.to_numpy(v) for k, v in self.model.params.items()}
        velocity = self.optimizer.state_dict()["velocity"] or {}
        arrays.update({f"velocity/{k}": v for k, v in velocity.items()})
        for layer, (h, c) in enumerate(self.state):
            arrays[f"state/h{layer}"] = backend.to_numpy(h)
            arrays[f"state/c{layer}"] = backend.to_numpy(c)
        arrays.update({f"batcher/{k}": np.asarray(v) for k, v in self.batcher.state_dict().items()})
        meta = {
            "config": dataclasses.asdict(self.config),
            "step": self.step,
            "elapsed": self.elapsed,
            "lr": self.optimizer.lr,
            "curriculum": self.curriculum.state_dict(),
            "rng": _rng_state_to_json(self.rng.getstate()),
            "history": self.history,
        }
        save_checkpoint(self.out_dir / CHECKPOINT_NAME, arrays, meta)

    @classmethod
    def resume(cls, out_dir, overrides: dict | None = None, log=None) -> "Trainer":
        """Rebuild a trainer from ``out_dir``'s checkpoint. Only the budget (minutes, max_steps) may change."""
        out_dir = Path(out_dir)
        arrays, meta, config = read_checkpoint(out_dir)
        for name, value in (overrides or {}).items():
            if name in ("minutes", "max_steps"):
                setattr(config, name, value)
            elif getattr(config, name) != value:
                raise ValueError(f"{name}={value!r} does not match the checkpoint in {out_dir}, which was "
                                 f"trained with {name}={getattr(config, name)!r}; leave it out to resume")
        trainer = cls(config, out_dir, log)
        try:
            trainer._restore(arrays, meta)
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"checkpoint in {out_dir} does not match its configuration ({error})") from None
        trainer._truncate_metrics()
        trainer.log(f"resumed from {out_dir / CHECKPOINT_NAME} at step {trainer.step}")
        return trainer

    def _restore(self, arrays: dict, meta: dict) -> None:
        backend = self.model.backend
        self.model.load_params(arrays_under(arrays, "param"))
        velocity = arrays_under(arrays, "velocity")
        self.optimizer.load_state_dict({"lr": meta["lr"], "momentum": self.config.momentum,
                                        "clip": self.config.clip, "velocity": velocity or None})
        expected = self.model.zero_state(self.config.batch)
        state = []
        for layer, (h0, c0) in enumerate(expected):
            h, c = arrays[f"state/h{layer}"], arrays[f"state/c{layer}"]
            if h.shape != tuple(h0.shape) or c.shape != tuple(c0.shape):
                raise ValueError(f"carried state of layer {layer} has shape {h.shape}, expected {tuple(h0.shape)}")
            state.append((backend.asarray(h), backend.asarray(c)))
        self.state = state
        self.batcher.load_state_dict(arrays_under(arrays, "batcher"))
        self.curriculum = Curriculum.from_state_dict(meta["curriculum"])
        self.rng.setstate(_rng_state_from_json(meta["rng"]))
        self.step = int(meta["step"])
        self.elapsed = float(meta["elapsed"])
        self.history = list(meta["history"])

    def _truncate_metrics(self) -> None:
        """Drop metric lines written after the checkpoint (a crash between the two writes)."""
        path = self.out_dir / METRICS_NAME
        if not path.exists():
            return
        kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line)["step"] <= self.step]
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def read_checkpoint(out_dir) -> tuple[dict, dict, TrainConfig]:
    """The arrays, metadata and validated configuration of the checkpoint in ``out_dir``."""
    arrays, meta = load_checkpoint(Path(out_dir) / CHECKPOINT_NAME)
    try:
        config = TrainConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint in {out_dir} has an unusable configuration ({error})") from None
    return arrays, meta, config


def arrays_under(arrays: dict, group: str) -> dict:
    """The checkpoint arrays saved as ``group/NAME``, keyed by NAME."""
    prefix = f"{group}/"
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def _fresh_counters() -> dict:
    """Training figures accumulated between two evaluations."""
    return {"loss": 0.0, "correct": 0, "count": 0, "steps": 0, "chars": 0, "seconds": 0.0}


def _rng_state_to_json(state) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_state_from_json(state) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def train(config: TrainConfig, out_dir=None, resume: bool = False, log=None) -> dict:
    """Train (or resume, with ``resume=True``) and return the final summary."""
    if resume:
        if out_dir is None:
            raise ValueError("resume needs the run's output directory (out_dir)")
        trainer = Trainer.resume(out_dir, overrides={"minutes": config.minutes, "max_steps": config.max_steps},
                                 log=log)
    else:
        if out_dir is not None and (Path(out_dir) / CHECKPOINT_NAME).exists():
            raise ValueError(f"{out_dir} already holds a checkpoint: pass resume to continue it, "
                             f"or choose another output directory")
        trainer = Trainer(config, out_dir, log)
    return trainer.run()


def default_log(line: str) -> None:
    print(line, file=sys.stdout, flush=True)
