"""Training the NPI on addition traces: SGD with clipping, checkpoints, exact resume, a progress line.

Every step draws ``traces`` fresh additions, each operand 1 to ``max_digits``
digits long (one of them that long, the other at most as long, in either
order), takes every invocation of their traces as a sequence, and makes two
batches: the ``ADD`` invocations (long: two steps a column) and all the
others (two to five steps each), so that padding stays small. Their losses,
summed over every step of both and divided by the number of steps, give one
SGD update (momentum, clipping at ``clip``).

Every ``eval_every`` steps the run executes held-out additions (lengths 1 to
``max_digits``, fixed by the seed) by itself, writes one line to
``metrics.jsonl`` and a checkpoint (``checkpoint.npz``: parameters, velocity,
the training stream's state, the history), and prints a progress line. It
stops when every held-out addition is right at two evaluations in a row
(``stop_at_target``), after
``minutes`` of training, or after ``steps``. A resumed run continues exactly
where an uninterrupted one would be; Ctrl-C finishes the step, saves, and stops.
"""

from __future__ import annotations

import dataclasses
import json
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ltexec.atomic import atomic_write
from ltexec.checkpoint import (CheckpointError, arrays_under, load_checkpoint, rng_state_from_json,
                               rng_state_to_json, save_checkpoint)
from ltexec.npi.addition import ADD, PROGRAMS, addition_trace
from ltexec.npi.data import batch_invocations
from ltexec.npi.execute import execute
from ltexec.npi.model import PRESETS, NPIModel
from ltexec.npi.programs import ARG_SLOTS
from ltexec.optim import SGD
from ltexec.seeds import derive_seed
from ltexec.validation import check_choice, check_float, check_int

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"


@dataclass(frozen=True)
class NPITrainConfig:
    """A training run's settings (all of them go into its checkpoint)."""

    max_digits: int = 10
    """Training lengths are 1 to this many digits. The paper is cited as training on up to about 20; 10 keeps twice
    the training length (20) within what Learning to Execute's sampler writes, so both systems are measured
    beyond their training lengths in the same way (benchmarks/npi_vs_lte.py)."""
    preset: str = "paper"
    traces: int = 8
    lr: float = 0.5
    momentum: float = 0.9
    clip: float = 5.0
    seed: int = 0
    backend: str = "auto"
    dtype: str = "float32"
    eval_every: int = 200
    held_out: int = 100
    minutes: float = 15.0
    steps: int = 0
    """Stop after this many steps (0: no step limit)."""
    stop_at_target: bool = True

    def __post_init__(self):
        check_int("max_digits", self.max_digits, minimum=1)
        check_choice("preset", self.preset, PRESETS)
        for name in ("traces", "eval_every", "held_out"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("seed", self.seed, minimum=0)
        check_int("steps", self.steps, minimum=0)
        check_float("lr", self.lr, minimum=0, inclusive_min=False)
        check_float("clip", self.clip, minimum=0, inclusive_min=False)
        check_float("minutes", self.minutes, minimum=0, inclusive_min=False)
        if not 0 <= check_float("momentum", self.momentum) < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        check_choice("dtype", self.dtype, ("float32", "float64"))


class OperandStream:
    """Random addition problems of 1 to ``max_digits`` digits from a ``random.Random`` (its state is JSON)."""

    def __init__(self, max_digits: int, seed: int):
        self.max_digits, self.random = max_digits, random.Random(seed)

    def problem(self, digits: int | None = None) -> tuple[str, str]:
        """One ``(a, b)``: one operand ``digits`` long (default: 1..max_digits at random), the other at most as long."""
        r = self.random
        n = r.randint(1, self.max_digits) if digits is None else digits
        long, short = self.digits(n), self.digits(r.randint(1, n))
        return (long, short) if r.random() < 0.5 else (short, long)

    def digits(self, n: int) -> str:
        return "".join(self.random.choice("0123456789") for _ in range(n))


def held_out_problems(config: NPITrainConfig) -> list:
    """``config.held_out`` problems of 1..max_digits digits no training step draws (their own seeded stream)."""
    stream = OperandStream(config.max_digits, derive_seed(config.seed, "npi held-out", 0))   # level 0: all lengths
    return [stream.problem() for _ in range(config.held_out)]


def long_and_short(invocations: list) -> tuple[list, list]:
    """``ADD``'s invocations (two steps a column) apart from all the others (two to five steps), so that each
    batch is padded only to lengths like its own."""
    return ([inv for inv in invocations if inv.call.program == ADD],
            [inv for inv in invocations if inv.call.program != ADD])


class NPITrainer:
    """Trains an :class:`NPIModel` on addition; see the module docstring. ``log`` takes each printed line."""

    def __init__(self, config: NPITrainConfig, out_dir, resume: bool = False, log=print):
        self.config, self.out_dir, self.log = config, Path(out_dir), log
        self.model = NPIModel(PRESETS[config.preset], backend=config.backend, dtype=np.dtype(config.dtype),
                              seed=derive_seed(config.seed, "npi init"))
        self.optimizer = SGD(lr=config.lr, momentum=config.momentum, clip=config.clip)
        self.stream = OperandStream(config.max_digits, derive_seed(config.seed, "npi train"))
        self.held_out = held_out_problems(config)
        self.step, self.elapsed, self.history = 0, 0.0, []
        self.seen = {"traces": 0, "core_steps": 0}
        self._stop_requested = False
        if resume:
            self._restore()

    # ------------------------------------------------------------ one step

    def train_step(self) -> dict:
        """One SGD update on ``traces`` fresh traces; the step's summed counts and loss."""
        traces = [addition_trace(*self.stream.problem()) for _ in range(self.config.traces)]
        invocations = [inv for trace in traces for inv in trace.walk()]
        groups = long_and_short(invocations)
        total = sum(len(inv.steps) for inv in invocations)
        results = [self.model.loss_and_grads(batch_invocations(group, len(PROGRAMS) - 1), total) for group in groups]
        grads = results[0].grads
        self.model.backend.add_(grads, results[1].grads)
        self.optimizer.step(self.model.backend, self.model.params, grads)
        counts = {key: sum(r.counts[key] for r in results) for key in results[0].counts}
        self.seen["traces"] += self.config.traces
        self.seen["core_steps"] += total
        return {"loss": sum(r.loss for r in results), **counts}

    # ------------------------------------------------------------ the run

    def run(self) -> dict:
        """Train until a stop condition; the run's summary (also the last metrics line's figures)."""
        c = self.config
        self.log(f"ltexec npi train: addition of 1 to {c.max_digits} digits, {self._core()} core ({c.preset}), "
                 f"{c.traces} traces a step, lr {c.lr:g}, momentum {c.momentum:g}, clip {c.clip:g}, seed {c.seed}, "
                 f"backend {self.model.backend.name} ({self.model.backend.device_name()})")
        previous = signal.signal(signal.SIGINT, self._interrupt) if _main_thread() else None
        try:
            reason = self._loop()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        self.log(f"stopped after step {self.step}: {reason}")
        return self.summary(reason)

    def _loop(self) -> str:
        c = self.config
        since = _Since()
        while True:
            started = time.perf_counter()
            since.add(self.train_step())
            self.elapsed += time.perf_counter() - started
            self.step += 1
            stop = self._budget_spent()
            if self.step % c.eval_every == 0 or stop:
                self._evaluate_and_save(since)
                since = _Since()
                if stop:
                    return stop
                if c.stop_at_target and [r["held_out_exact"] for r in self.history[-2:]] == [1.0, 1.0]:
                    return (f"every held-out addition right at two evaluations in a row ({len(self.held_out)} of "
                            f"1 to {c.max_digits} digits)")

    def _budget_spent(self) -> str | None:
        """Why the run stops after this step (Ctrl-C, the step or time budget), or None."""
        c = self.config
        if self._stop_requested:
            return "interrupted (checkpoint saved)"
        if c.steps and self.step >= c.steps:
            return f"reached {c.steps} steps"
        if self.elapsed >= c.minutes * 60:
            return f"reached {c.minutes:g} minutes of training"
        return None

    def _evaluate_and_save(self, since: _Since) -> dict:
        rates = since.rates()                            # training figures, before the evaluation's time
        runs = execute(self.model, self.held_out)
        record = {"step": self.step, "elapsed_s": round(self.elapsed, 2), **rates,
                  "held_out_exact": sum(r.correct for r in runs) / len(runs),
                  "traces_seen": self.seen["traces"], "core_steps_seen": self.seen["core_steps"]}
        self.history.append(record)
        self._save()
        with open(self.out_dir / METRICS, "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")
        self.log(f"step {self.step:>6} | {self.elapsed / 60:5.1f} min"
                 f" | {record['core_steps_per_s']:>7,.0f} core steps/s"
                 f" | loss {record['loss']:.4f} | train end {100 * record['end_acc']:5.1f}%"
                 f" program {100 * record['program_acc']:5.1f}% args {100 * record['args_acc']:5.1f}%"
                 f" | held-out exact {100 * record['held_out_exact']:5.1f}%")
        return record

    def summary(self, reason: str) -> dict:
        last = self.history[-1] if self.history else {}
        return {"steps": self.step, "minutes": round(self.elapsed / 60, 3), "stopped": reason,
                "held_out_exact": last.get("held_out_exact"), "reached_target": last.get("held_out_exact") == 1.0,
                "traces_seen": self.seen["traces"], "core_steps_seen": self.seen["core_steps"],
                "config": dataclasses.asdict(self.config)}

    def _interrupt(self, signum, frame) -> None:
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True
        self.log("interrupt: finishing this step, saving a checkpoint, then stopping "
                 "(press Ctrl-C again to stop at once)")

    def _core(self) -> str:
        preset = PRESETS[self.config.preset]
        return f"{preset.layers}x{preset.hidden}"

    # ------------------------------------------------------------ checkpoints

    def _save(self) -> None:
        arrays = {f"param/{name}": array for name, array in self.model.state_dict().items()}
        velocity = self.optimizer.state_dict()["velocity"] or {}
        arrays.update({f"velocity/{name}": array for name, array in velocity.items()})
        meta = {"kind": "npi", "config": dataclasses.asdict(self.config), "step": self.step, "elapsed": self.elapsed,
                "rng": rng_state_to_json(self.stream.random.getstate()), "history": self.history, "seen": self.seen}
        save_checkpoint(self.out_dir / CHECKPOINT, arrays, meta)

    def _restore(self) -> None:
        arrays, meta = read_npi_checkpoint(self.out_dir)
        recorded = NPITrainConfig(**meta["config"])
        changed = {k for k, v in dataclasses.asdict(self.config).items()
                   if v != getattr(recorded, k) and k not in RESUMABLE_CHANGES}
        if changed:
            raise CheckpointError(f"the run in {self.out_dir} was trained with other settings: "
                                  + ", ".join(f"{k}={getattr(recorded, k)!r} (now {getattr(self.config, k)!r})"
                                              for k in sorted(changed)))
        self.model.load_params(arrays_under(arrays, "param"))
        velocity = arrays_under(arrays, "velocity") or None
        self.optimizer.load_state_dict({**self.optimizer.state_dict(), "velocity": velocity})
        self.stream.random.setstate(rng_state_from_json(meta["rng"]))
        self.step, self.elapsed, self.history, self.seen = meta["step"], meta["elapsed"], meta["history"], meta["seen"]
        self.log(f"resumed from {self.out_dir / CHECKPOINT} at step {self.step}")


RESUMABLE_CHANGES = {"minutes", "steps", "stop_at_target", "backend"}
"""Settings a resumed run may change: how long it goes on, and where it runs."""


def read_npi_checkpoint(run_dir) -> tuple[dict, dict]:
    """The arrays and metadata of an NPI run's checkpoint; CheckpointError if there is none or it is another kind."""
    arrays, meta = load_checkpoint(Path(run_dir) / CHECKPOINT)
    if meta.get("kind") != "npi":
        raise CheckpointError(f"the checkpoint in {run_dir} is not an NPI run's")
    return arrays, meta


def load_trained_npi(run_dir, backend=None) -> tuple[NPIModel, NPITrainConfig]:
    """The trained model of the NPI run in ``run_dir`` (on ``backend``, default the run's) and its settings."""
    arrays, meta = read_npi_checkpoint(run_dir)
    config = NPITrainConfig(**meta["config"])
    model = NPIModel(PRESETS[config.preset], backend=backend or config.backend, dtype=np.dtype(config.dtype))
    model.load_params(arrays_under(arrays, "param"))
    return model, config


def write_summary(path, summary: dict) -> None:
    """``summary`` as JSON at ``path``, written atomically."""
    text = json.dumps(summary, indent=1) + "\n"
    atomic_write(Path(path), lambda out: out.write(text.encode("utf-8")))


class _Since:
    """Training figures since the last evaluation."""

    def __init__(self):
        self.totals, self.steps, self.started = {}, 0, time.perf_counter()

    def add(self, figures: dict) -> None:
        for key, value in figures.items():
            self.totals[key] = self.totals.get(key, 0) + value
        self.steps += 1

    def rates(self) -> dict:
        t, seconds = self.totals, max(time.perf_counter() - self.started, 1e-9)
        calls = max(t.get("calls", 0), 1)
        return {"loss": t.get("loss", 0.0) / max(self.steps, 1),
                "end_acc": t.get("end_correct", 0) / max(t.get("steps", 0), 1),
                "program_acc": t.get("program_correct", 0) / calls,
                "args_acc": t.get("args_correct", 0) / (ARG_SLOTS * calls),
                "core_steps_per_s": t.get("steps", 0) / seconds}


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()
