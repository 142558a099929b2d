"""Curriculum strategies: which (length, nesting) each training example is drawn at.

The paper compares four ways of scheduling example difficulty towards a target
(a, b) of length a and nesting b:

- ``baseline``: every example at the target (a, b);
- ``naive``: every example at the current level (l, n);
- ``mix``: nesting uniform in 1..b, length uniform in 1..a;
- ``combined``: with probability 1/5 a ``mix`` draw, else the current level.

How often ``mix`` and ``combined`` draw is the ``draw`` option.  ``"number"``
(the default) is the authors' code: it calls its hardness function once per
program for the nesting and again for every number, every multiplier ``k`` and
every loop count for that number's length, so one program mixes numbers of
several lengths.  ``"example"`` draws one (length, nesting) per example, which
is how the paper's text reads.  ``baseline`` and ``naive`` draw nothing, so
the option does not change them.

The current level starts at (1, 1) for every strategy, and validation is always
drawn at it (as in the authors' code, so even ``baseline`` validates at the
level).  After each evaluation :meth:`Curriculum.update` applies the authors'
trigger: validation accuracy above 95%, or training accuracy lower now than it
was five evaluations ago (counting only evaluations since the last trigger).  A
trigger raises the length by one until it reaches a, then raises the nesting by
one with the length reset to 1; once the level is the target, a trigger asks the
trainer to decay its learning rate instead.

All randomness comes from the ``random.Random`` passed to
:meth:`Curriculum.sample_level`, so a seeded trainer is reproducible, and the
whole state round-trips through a JSON-serialisable dict for checkpoints.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from ltexec.sampler import Example, sample_example
from ltexec.validation import check_choice, check_float, check_int

STRATEGIES = ("baseline", "naive", "mix", "combined")
DRAWS = ("number", "example")
"""How often ``mix`` and ``combined`` draw a difficulty: per number (the authors' code) or per example."""

_STATE_KEYS = ("strategy", "target_length", "target_nesting", "threshold", "patience",
               "mix_probability", "draw", "level", "history")


@dataclass(frozen=True)
class Draw:
    """What one training example is drawn at.

    ``nesting`` is the program's; ``number_length``, when not None, is called
    once for every number, multiplier and loop count and returns that one's
    length, and ``length`` is then the largest it can return; when None, every
    number has ``length`` digits.
    """

    length: int
    nesting: int
    number_length: Callable[[], int] | None = None


class Curriculum:
    """The paper's four curriculum strategies and the level-advance rule."""

    def __init__(self, strategy: str, target_length: int, target_nesting: int = 1,
                 threshold: float = 0.95, patience: int = 5, mix_probability: float = 0.2,
                 draw: str = "number", level: tuple[int, int] = (1, 1)):
        """Check the arguments and start at ``level`` ((1, 1) for training; another to inspect it).

        ``threshold`` is the validation accuracy that must be exceeded, ``patience``
        the number of evaluations over which training accuracy must not have
        dropped, ``mix_probability`` the share of mix draws under ``combined``
        (the other strategies ignore it) and ``draw`` one of :data:`DRAWS`.
        """
        self._strategy = check_choice("strategy", strategy, STRATEGIES)
        self._target = (check_int("target_length", target_length, minimum=1),
                        check_int("target_nesting", target_nesting, minimum=1))
        self.threshold = check_float("threshold", threshold, 0.0, 1.0, inclusive_min=False)
        self.patience = check_int("patience", patience, minimum=1)
        self.mix_probability = check_float("mix_probability", mix_probability, 0.0, 1.0)
        self._draw = check_choice("draw", draw, DRAWS)
        if not isinstance(level, (list, tuple)) or len(level) != 2:
            raise ValueError(f"level must be a (length, nesting) pair, got {level!r}")
        self._level = (check_int("level length", level[0], 1, self._target[0]),
                       check_int("level nesting", level[1], 1, self._target[1]))
        # Training accuracies since the last trigger; only the last `patience` can matter.
        self._history: list[float] = []

    @property
    def strategy(self) -> str:
        return self._strategy

    @property
    def draw(self) -> str:
        """How often ``mix`` and ``combined`` draw: ``"number"`` or ``"example"``."""
        return self._draw

    @property
    def target(self) -> tuple[int, int]:
        """The target (length, nesting)."""
        return self._target

    @property
    def level(self) -> tuple[int, int]:
        """The current (length, nesting)."""
        return self._level

    @property
    def history(self) -> tuple[float, ...]:
        """The training accuracies the next plateau check looks at, oldest first."""
        return tuple(self._history)

    @property
    def at_target(self) -> bool:
        return self._level == self._target

    def sample_level(self, rng: random.Random) -> tuple[int, int]:
        """One (length, nesting) draw of this strategy: the authors' hardness function."""
        if not isinstance(rng, random.Random):
            raise ValueError(f"rng must be a random.Random, got {type(rng).__name__}")
        if self._strategy == "baseline":
            return self._target
        if self._strategy == "naive":
            return self._level
        if self._strategy == "combined" and rng.random() >= self.mix_probability:
            return self._level
        return rng.randint(1, self._target[0]), rng.randint(1, self._target[1])

    def sample_draw(self, rng: random.Random) -> Draw:
        """What the next training example is drawn at (see :class:`Draw` and the ``draw`` option)."""
        length, nesting = self.sample_level(rng)
        if self._draw == "example" or self._strategy in ("baseline", "naive"):
            return Draw(length, nesting)
        return Draw(self._target[0], nesting, lambda: self.sample_level(rng)[0])

    def draw_example(self, task: str, split: str, rng: random.Random) -> Example:
        """One example of ``task`` from ``split`` as this curriculum draws it now."""
        draw = self.sample_draw(rng)
        return sample_example(task, draw.length, draw.nesting, split, rng, number_length=draw.number_length)

    def validation_level(self) -> tuple[int, int]:
        """Validation examples are drawn at the current level."""
        return self._level

    def test_level(self) -> tuple[int, int]:
        """Test examples are drawn at the target."""
        return self._target

    def update(self, val_acc: float, train_acc: float) -> str | None:
        """Record one evaluation; return ``"advance"``, ``"decay"`` or ``None``.

        ``"advance"`` means the level moved; ``"decay"`` means the trigger fired
        with the level already at the target, so the trainer should multiply its
        learning rate by 0.8.
        """
        val_acc = check_float("val_acc", val_acc, 0.0, 1.0)
        train_acc = check_float("train_acc", train_acc, 0.0, 1.0)
        plateau = len(self._history) >= self.patience and self._history[-self.patience] > train_acc
        outcome = None
        if val_acc > self.threshold or plateau:
            outcome = self._make_harder()
            self._history.clear()
        self._history.append(train_acc)
        del self._history[:-self.patience]
        return outcome

    def _make_harder(self) -> str:
        length, nesting = self._level
        if length < self._target[0]:
            self._level = (length + 1, nesting)
            return "advance"
        if nesting < self._target[1]:
            self._level = (1, nesting + 1)
            return "advance"
        return "decay"

    def state_dict(self) -> dict:
        """Everything needed to resume, as ints, floats, strs and lists."""
        return {
            "strategy": self._strategy,
            "target_length": self._target[0],
            "target_nesting": self._target[1],
            "threshold": self.threshold,
            "patience": self.patience,
            "mix_probability": self.mix_probability,
            "draw": self._draw,
            "level": list(self._level),
            "history": list(self._history),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> Curriculum:
        """Rebuild a curriculum from :meth:`state_dict`; ``ValueError`` if the dict is not one."""
        if not isinstance(state, dict):
            raise ValueError(f"curriculum state must be a dict, got {type(state).__name__}")
        state = {"draw": "example", **state}    # written before the option existed: drawn per example
        missing = [key for key in _STATE_KEYS if key not in state]
        unknown = sorted(str(key) for key in state if key not in _STATE_KEYS)
        if missing or unknown:
            raise ValueError(f"curriculum state has missing keys {missing} and unknown keys {unknown}")
        curriculum = cls(state["strategy"], state["target_length"], state["target_nesting"],
                         state["threshold"], state["patience"], state["mix_probability"], state["draw"],
                         state["level"])
        history = state["history"]
        if not isinstance(history, (list, tuple)) or len(history) > curriculum.patience:
            raise ValueError(f"history must be a list of at most patience={curriculum.patience} "
                             f"accuracies, got {history!r}")
        curriculum._history = [check_float("history accuracy", acc, 0.0, 1.0) for acc in history]
        return curriculum

    def describe(self) -> str:
        """Short human text, e.g. ``"combined, level (2, 1) of (3, 1)"``."""
        per = ", drawn per example" if self._draw == "example" and self._strategy in ("mix", "combined") else ""
        return f"{self._strategy}{per}, level {self._level} of {self._target}"
