"""Curriculum strategies: which (length, nesting) each training example is drawn at.

The paper compares four ways of scheduling example difficulty towards a target
(a, b) of length a and nesting b:

- ``baseline``: every example at the target (a, b);
- ``naive``: every example at the current level (l, n);
- ``mix``: length uniform in 1..a and nesting uniform in 1..b, independently;
- ``combined``: per example, a ``mix`` example with probability 1/5, else a
  ``naive`` one.

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

from ltexec.validation import check_choice, check_float, check_int

STRATEGIES = ("baseline", "naive", "mix", "combined")

_STATE_KEYS = ("strategy", "target_length", "target_nesting", "threshold", "patience",
               "mix_probability", "level", "history")


class Curriculum:
    """The paper's four curriculum strategies and the level-advance rule."""

    def __init__(self, strategy: str, target_length: int, target_nesting: int = 1,
                 threshold: float = 0.95, patience: int = 5, mix_probability: float = 0.2):
        """Check the arguments and start at level (1, 1).

        ``threshold`` is the validation accuracy that must be exceeded, ``patience``
        the number of evaluations over which training accuracy must not have
        dropped, and ``mix_probability`` the share of mix examples under
        ``combined`` (the other strategies ignore it).
        """
        self._strategy = check_choice("strategy", strategy, STRATEGIES)
        self._target = (check_int("target_length", target_length, minimum=1),
                        check_int("target_nesting", target_nesting, minimum=1))
        self.threshold = check_float("threshold", threshold, 0.0, 1.0, inclusive_min=False)
        self.patience = check_int("patience", patience, minimum=1)
        self.mix_probability = check_float("mix_probability", mix_probability, 0.0, 1.0)
        self._level = (1, 1)
        # Training accuracies since the last trigger; only the last `patience` can matter.
        self._history: list[float] = []

    @property
    def strategy(self) -> str:
        return self._strategy

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
        """The (length, nesting) of one training example under this strategy."""
        if not isinstance(rng, random.Random):
            raise ValueError(f"rng must be a random.Random, got {type(rng).__name__}")
        if self._strategy == "baseline":
            return self._target
        if self._strategy == "naive":
            return self._level
        if self._strategy == "combined" and rng.random() >= self.mix_probability:
            return self._level
        return rng.randint(1, self._target[0]), rng.randint(1, self._target[1])

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
            "level": list(self._level),
            "history": list(self._history),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> Curriculum:
        """Rebuild a curriculum from :meth:`state_dict`; ``ValueError`` if the dict is not one."""
        if not isinstance(state, dict):
            raise ValueError(f"curriculum state must be a dict, got {type(state).__name__}")
        missing = [key for key in _STATE_KEYS if key not in state]
        unknown = sorted(str(key) for key in state if key not in _STATE_KEYS)
        if missing or unknown:
            raise ValueError(f"curriculum state has missing keys {missing} and unknown keys {unknown}")
        curriculum = cls(state["strategy"], state["target_length"], state["target_nesting"],
                         state["threshold"], state["patience"], state["mix_probability"])
        level, history = state["level"], state["history"]
        if not isinstance(level, (list, tuple)) or len(level) != 2:
            raise ValueError(f"level must be a [length, nesting] pair, got {level!r}")
        curriculum._level = (check_int("level length", level[0], 1, curriculum._target[0]),
                             check_int("level nesting", level[1], 1, curriculum._target[1]))
        if not isinstance(history, (list, tuple)) or len(history) > curriculum.patience:
            raise ValueError(f"history must be a list of at most patience={curriculum.patience} "
                             f"accuracies, got {history!r}")
        curriculum._history = [check_float("history accuracy", acc, 0.0, 1.0) for acc in history]
        return curriculum

    def describe(self) -> str:
        """Short human text, e.g. ``"combined, level (2, 1) of (3, 1)"``."""
        return f"{self._strategy}, level {self._level} of {self._target}"
