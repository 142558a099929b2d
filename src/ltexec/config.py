"""What defines a training run (:class:`TrainConfig`) and the model it trains (:func:`build_model`).

Every field has the paper's value as its default. The trainer, a run's
checkpoint and the evaluation of a trained run all build their model from a
configuration through :func:`build_model`, so a model is always drawn from
the same seed and shaped the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ltexec import vocab
from ltexec.backends import BACKENDS
from ltexec.curriculum import DRAWS, STRATEGIES
from ltexec.model import LSTMModel
from ltexec.sampler import TASKS
from ltexec.seeds import derive_seed
from ltexec.validation import check_choice, check_float, check_int

DTYPES = ("float32", "float64")
MODES = ("stream", "examples")
LOSS_SCALES = ("batch", "chars")
BUDGET = ("minutes", "max_steps")
"""The fields that bound a run rather than define it: the only ones a resumed run may change."""


@dataclass
class TrainConfig:
    """Everything that defines a training run. The defaults are the paper's values.

    ``spike_factor`` turns on blow-up recovery, which the paper does not have
    (None, the default, leaves it off): an evaluation interval whose mean
    training loss exceeds ``spike_factor`` times the lowest interval mean since
    the start or the last curriculum advance, or any non-finite loss or
    gradient, is a spike; the trainer then goes back to the state of its last
    good evaluation and multiplies the learning rate by ``spike_lr_factor``
    (:mod:`ltexec.trainer` says what is restored).

    ``draw`` says whether ``mix`` and ``combined`` draw a difficulty for every
    number (``"number"``, the authors' code) or once per example
    (``"example"``); see :mod:`ltexec.curriculum`.  ``eval_every`` is the
    authors' 100 steps: half their 200-step epoch.

    ``forget_bias`` is added to every forget-gate bias after the uniform draw
    (0, the paper's init, by default; see :class:`~ltexec.model.LSTMModel`).
    """

    task: str = "programs"
    length: int = 4
    nesting: int | None = None          # None: 3 for programs (the paper's), 1 for the other tasks
    strategy: str = "combined"
    draw: str = "number"
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
    forget_bias: float = 0.0
    backend: str = "auto"
    dtype: str = "float32"
    seed: int = 0
    eval_every: int = 100
    eval_examples: int = 500
    minutes: float | None = None
    max_steps: int | None = None
    spike_factor: float | None = None
    spike_lr_factor: float = 0.5

    def __post_init__(self):
        if self.nesting is None:
            self.nesting = 3 if self.task == "programs" else 1

    @property
    def warmup(self) -> bool:
        """Whether evaluation precedes each example by another, as the training stream does."""
        return self.mode == "stream"

    def validate(self) -> TrainConfig:
        """Check every field; raise ValueError naming the first bad one."""
        check_choice("task", self.task, TASKS)
        check_int("length", self.length, 1)
        check_int("nesting", self.nesting, 1)
        if self.task != "programs" and self.nesting != 1:
            raise ValueError(f"nesting applies only to task programs; got nesting={self.nesting} "
                             f"for task {self.task}")
        check_choice("strategy", self.strategy, STRATEGIES)
        check_choice("draw", self.draw, DRAWS)
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
        check_float("forget_bias", self.forget_bias)
        check_choice("backend", self.backend, ("auto",) + tuple(BACKENDS))
        check_choice("dtype", self.dtype, DTYPES)
        check_int("seed", self.seed, 0)
        check_int("eval_every", self.eval_every, 1)
        check_int("eval_examples", self.eval_examples, 1)
        if self.minutes is not None:
            check_float("minutes", self.minutes, 0.0, inclusive_min=False)
        if self.max_steps is not None:
            check_int("max_steps", self.max_steps, 0)
        if self.spike_factor is not None:
            check_float("spike_factor", self.spike_factor, 1.0, inclusive_min=False)
        check_float("spike_lr_factor", self.spike_lr_factor, 0.0, 1.0, inclusive_min=False)
        return self

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**values).validate()


def build_model(config: TrainConfig, backend=None, **backend_options) -> LSTMModel:
    """The LSTM that ``config`` describes, its parameters drawn from the run's ``"init"`` seed.

    ``backend``: a name or Backend instance to use instead of ``config.backend``
    (e.g. the trained model's, to evaluate it on the same device).
    ``backend_options`` (e.g. ``threads``) go to :func:`~ltexec.backends.get_backend`.
    """
    return LSTMModel(vocab.VOCAB_SIZE, hidden=config.hidden, layers=config.layers,
                     backend=config.backend if backend is None else backend, dtype=np.dtype(config.dtype),
                     init_scale=config.init_scale, seed=derive_seed(config.seed, "init"),
                     backend_options=backend_options, forget_bias=config.forget_bias)
